"""Pooling over time: masked mean and a cross-attention block for learned-query pooling."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.attention import MultiHeadAttention
from maestro_jax.layers.common import Dtype, LayerNorm, frame_mask
from maestro_jax.layers.transformer import FeedForward


def masked_mean(x: jax.Array, length: jax.Array) -> jax.Array:
    """Mean of x [B, T, D] over its first length[b] frames -> [B, D] (0 for an empty example)."""
    mask = frame_mask(length, x.shape[1])[..., None]
    total = jnp.sum(jnp.where(mask, x, 0), axis=1)
    return total / jnp.maximum(length, 1)[:, None].astype(total.dtype)


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: queries [B, Q, D] attend memory [B, T, D] (keys masked by bool[B, T]), then a feed-forward."""

    num_heads: int
    ff_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: jax.Array, memory: jax.Array, memory_mask: jax.Array, *, train: bool) -> jax.Array:
        dim = queries.shape[-1]
        y = LayerNorm(dtype=self.dtype, name="attention_norm")(queries)
        y = MultiHeadAttention(
            self.num_heads, dim // self.num_heads, False, self.dropout_rate, self.dtype, name="cross_attention"
        )(y, memory, memory_mask, train=train)
        queries = queries + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        feed_forward = FeedForward(self.ff_dim, self.dropout_rate, self.dtype, name="feed_forward")
        return queries + feed_forward(queries, train=train)
