"""Output heads on encoder frames: CTC logits and SONAR's attention pooler (one learned query, cross-attention)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import Dense, LayerNorm, frame_mask
from maestro_jax.layers.pooling import CrossAttentionBlock
from maestro_jax.models.config import ModelConfig


class CTCHead(nn.Module):
    """h f32[B, T, D] -> CTC logits f32[B, T, V] (blank = 0)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return Dense(self.config.vocab_size, ("embed", "vocab"), dtype=jnp.float32, name="output")(h)


class BestRQHead(nn.Module):
    """h f32[B, T, D] -> logits f32[B, T, K] over the BEST-RQ codebook (K = bestrq_codebook_size)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return Dense(self.config.bestrq_codebook_size, ("embed", "vocab"), dtype=jnp.float32, name="output")(h)


class AttentionPooler(nn.Module):
    """A single learned query cross-attends the encoder output through a few layers, then LN + Dense to E.

    (h f32[B, T, D], length i32[B]) -> f32[B, E], E = pooler_output_dim. Padded frames are masked out of attention.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, length: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        dtype = cfg.compute_dtype
        query = self.param(
            "query",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (1, cfg.model_dim),
            jnp.float32,
        )
        x = jnp.broadcast_to(query.astype(dtype), (h.shape[0], 1, cfg.model_dim))
        memory, mask = h.astype(dtype), frame_mask(length, h.shape[1])
        for i in range(cfg.num_pooler_layers):
            block = CrossAttentionBlock(cfg.num_heads, cfg.ff_dim, cfg.dropout_rate, dtype, name=f"layer_{i}")
            x = block(x, memory, mask, train=train)
        x = LayerNorm(dtype=dtype, name="output_norm")(x[:, 0])
        return Dense(cfg.pooler_output_dim, ("embed", "mlp"), dtype=jnp.float32, name="output")(x)
