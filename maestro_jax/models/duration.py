"""MAESTRO's text-to-frame path: duration model, `resample_by_duration` and the refiner."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import Dense, LayerNorm, frame_mask, masked_fill, sinusoid
from maestro_jax.layers.lightconv import LightConvBlock
from maestro_jax.layers.transformer import TransformerBlock
from maestro_jax.models.config import ModelConfig

DURATION_ACTIVATIONS = {"softplus": nn.softplus, "relu": nn.relu}


def resample_by_duration(
    x: jax.Array,
    durations: jax.Array,
    lengths: jax.Array,
    *,
    max_frames: int,
    add_position: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Repeat token u's vector durations[b, u] times (plus a sinusoid of the frame's index within the token).

    Args:
      x: f32[B, U, D] token-rate vectors.
      durations: i32[B, U] frames per token; negative values count as 0, tokens at u >= lengths[b] are ignored.
      lengths: i32[B] valid tokens.
      max_frames: static output length T; frames beyond the total duration are 0, and an example whose durations
        sum past T is truncated (out_length says so).
      add_position: add sinusoid(index within the token, D) to every valid frame.
    Returns:
      (y f32[B, T, D], out_length i32[B] = min(sum of valid durations, T)). y is a gather of x, so d y / d x counts
      how many frames each token fills.
    """
    batch, num_tokens, dim = x.shape
    durations = masked_fill(jnp.maximum(durations.astype(jnp.int32), 0), frame_mask(lengths, num_tokens))
    ends = jnp.cumsum(durations, axis=1)  # [B, U] first frame after each token
    frames = jnp.arange(max_frames)
    token = jax.vmap(lambda e: jnp.searchsorted(e, frames, side="right"))(ends)  # [B, T] tokens ending at or before t
    token = jnp.minimum(token, num_tokens - 1)
    out_length = jnp.minimum(ends[:, -1], max_frames).astype(jnp.int32)
    valid = frame_mask(out_length, max_frames)
    y = jnp.take_along_axis(x, token[..., None], axis=1)
    if add_position:
        starts = jnp.take_along_axis(ends - durations, token, axis=1)
        y = y + sinusoid(frames[None, :] - starts, dim).astype(y.dtype)
    return masked_fill(y, valid), out_length


class DurationModel(nn.Module):
    """Lightweight-conv blocks -> Dense(1) -> softplus/relu: e_t f32[B, U, D] -> f32[B, U] frames, 0 at padding.

    Gradients reach e_t; an objective that wants the duration loss to leave the text tower alone stops them itself.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, e_t: jax.Array, token_length: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        if cfg.duration_activation not in DURATION_ACTIVATIONS:
            raise ValueError(
                f"unknown duration_activation {cfg.duration_activation!r}; "
                f"choose one of {sorted(DURATION_ACTIVATIONS)} (gin: ModelConfig.duration_activation)."
            )
        mask = frame_mask(token_length, e_t.shape[1])
        x = e_t.astype(cfg.compute_dtype)
        for i in range(cfg.num_duration_layers):
            x = LightConvBlock(
                cfg.duration_kernel_size,
                cfg.num_heads,
                cfg.ff_dim,
                cfg.dropout_rate,
                cfg.compute_dtype,
                name=f"lconv_{i}",
            )(x, mask, train=train)
        x = LayerNorm(dtype=cfg.compute_dtype, name="output_norm")(x)
        x = Dense(1, ("embed", None), dtype=jnp.float32, name="output")(x)[..., 0]
        return masked_fill(DURATION_ACTIVATIONS[cfg.duration_activation](x), mask).astype(jnp.float32)


class Refiner(nn.Module):
    """Self-attention + lightweight-conv layers on upsampled text (x f32[B, T, D], length) -> f32[B, T, D]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, length: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        mask = frame_mask(length, x.shape[1])
        x = x.astype(cfg.compute_dtype)
        for i in range(cfg.num_refiner_layers):
            x = TransformerBlock(
                cfg.num_heads,
                cfg.ff_dim,
                cfg.relative_position,
                cfg.dropout_rate,
                cfg.compute_dtype,
                name=f"attention_{i}",
            )(x, mask, train)
            x = LightConvBlock(
                cfg.refiner_kernel_size,
                cfg.num_heads,
                cfg.ff_dim,
                cfg.dropout_rate,
                cfg.compute_dtype,
                name=f"lconv_{i}",
            )(x, mask, train=train)
        return masked_fill(x, mask).astype(jnp.float32)
