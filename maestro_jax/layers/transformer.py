"""Feed-forward module and pre-norm Transformer block (the Conformer's and the text tower's simpler sibling)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.attention import MultiHeadAttention
from maestro_jax.layers.common import Dense, Dtype, LayerNorm, constrain, masked_fill


def self_attention_branch(block: nn.Module, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    """Pre-norm self-attention residual branch of a Transformer or Conformer block, created inside `block`'s compact
    call (so its params stay `attention_norm` and `attention` of that block). Reads the block's num_heads,
    relative_position, dropout_rate and dtype. x f32[B, T, D] -> f32[B, T, D] to add to x."""
    y = LayerNorm(dtype=block.dtype, name="attention_norm")(x)
    y = MultiHeadAttention(
        block.num_heads,
        x.shape[-1] // block.num_heads,
        block.relative_position,
        block.dropout_rate,
        block.dtype,
        name="attention",
    )(y, y, mask, train=train)
    return nn.Dropout(block.dropout_rate)(y, deterministic=not train)


class FeedForward(nn.Module):
    """LayerNorm -> Dense(D -> hidden_dim) -> swish -> dropout -> Dense(-> D) -> dropout; [B, T, D] -> [B, T, D]."""

    hidden_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = LayerNorm(dtype=self.dtype)(x)
        y = Dense(self.hidden_dim, ("embed", "mlp"), dtype=self.dtype, name="hidden")(y)
        y = constrain(nn.swish(y), ("batch", "length", "mlp"))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        y = Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="output")(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        return constrain(y, ("batch", "length", "embed"))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block on x [B, T, D] with bool mask [B, T]; padded frames -> 0."""

    num_heads: int
    ff_dim: int
    relative_position: bool = True
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        x = x + self_attention_branch(self, x, mask, train=train)
        x = x + FeedForward(self.ff_dim, self.dropout_rate, self.dtype, name="feed_forward")(x, train=train)
        return masked_fill(x, mask)
