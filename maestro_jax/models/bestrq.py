"""BEST-RQ (Chiu et al. 2022): frozen random-projection quantizer for masked-prediction targets, and span masking."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax import frontend
from maestro_jax.layers.common import frame_mask

FROZEN = "frozen"


def _l2_normalize(x: jax.Array, epsilon: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + epsilon)


class BestRQQuantizer(nn.Module):
    """Labels = argmax_k cos(P^T stack(normalise(features))_t, c_k) with a frozen projection P and codebook c.

    P f32[factor * M, C] (Xavier) and codebook f32[K, C] (standard normal, rows l2-normalised) live in collection
    "frozen" and are never trained. features f32[B, T0, M] raw log-mel -> (labels i32[B, T0 // factor], length);
    labels are 0 at padded frames.
    """

    codebook_size: int
    codebook_dim: int
    stack_factor: int
    num_mel_bins: int

    @nn.compact
    def __call__(self, features: jax.Array, feature_length: jax.Array) -> tuple[jax.Array, jax.Array]:
        stacked_dim = self.stack_factor * self.num_mel_bins
        projection = self.variable(
            FROZEN,
            "projection",
            lambda: nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("proj", None))(
                self.make_rng("params"), (stacked_dim, self.codebook_dim), jnp.float32
            ),
        ).value
        codebook = self.variable(
            FROZEN,
            "codebook",
            lambda: nn.with_logical_partitioning(
                lambda key, shape, dtype: _l2_normalize(jax.random.normal(key, shape, dtype)), ("codebook", None)
            )(self.make_rng("params"), (self.codebook_size, self.codebook_dim), jnp.float32),
        ).value
        feature_length = jnp.minimum(feature_length, features.shape[1]).astype(jnp.int32)
        normalized = frontend.normalize_features(features, feature_length)
        stacked, length = frontend.stack_frames(normalized, feature_length, factor=self.stack_factor)
        projected = jnp.einsum("btp,pc->btc", stacked, projection, precision=jax.lax.Precision.HIGHEST)
        similarity = jnp.einsum(
            "btc,kc->btk", _l2_normalize(projected), _l2_normalize(codebook), precision=jax.lax.Precision.HIGHEST
        )
        labels = jnp.argmax(similarity, axis=-1).astype(jnp.int32)
        return jnp.where(frame_mask(length, labels.shape[1]), labels, 0), length


def span_mask(rng: jax.Array, length: jax.Array, num_frames: int, *, mask_prob: float, span: int) -> jax.Array:
    """bool[B, T] spans to mask: each valid frame starts a span with probability `mask_prob`; a span covers `span`
    frames from its start, clipped to the valid frames (T = num_frames, length i32[B] valid frames)."""
    if span < 1 or not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"span_mask needs span >= 1 and 0 <= mask_prob <= 1; got span={span}, mask_prob={mask_prob}.")
    valid = frame_mask(length, num_frames)
    starts = jax.random.bernoulli(rng, mask_prob, valid.shape) & valid
    started = jnp.cumsum(starts.astype(jnp.int32), axis=1)
    started_before_window = jnp.pad(started, ((0, 0), (span, 0)))[:, :num_frames]
    return (started - started_before_window > 0) & valid
