"""Time reduction of log-mel features before the speech encoder: strided 2-D convolutions or frame stacking.

Both reduce T0 frames of 10 ms to T0 // factor frames and a valid length L to L // factor, exactly like
`frontend.stack_frames`, so BEST-RQ targets (computed from stacked features) line up with encoder frames.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax import frontend
from maestro_jax.layers.common import Dense, Dtype, constrain, frame_mask, masked_fill

SUBSAMPLINGS = ("conv", "stack")


class ConvSubsampling(nn.Module):
    """log2(factor) stride-2 3x3 convolutions + ReLU over (time, mel), then Dense to `output_dim`.

    Like torchaudio/ESPnet Conv2dSubsampling, except time is padded by one frame on the left only: output frame i of a
    stage reads input frames 2i-1..2i+1, so a valid output never reads a padded input and lengths map L -> L // 2.
    features f32[B, T0, F], length i32[B] -> (x [B, T0 // factor, D], length // factor).
    """

    output_dim: int
    channels: int = 256
    factor: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
        num_stages = round(math.log2(self.factor))
        if 2**num_stages != self.factor:
            raise ValueError(f"conv subsampling needs a power-of-two factor; got {self.factor}. Use 'stack' instead.")
        x = features.astype(self.dtype)[..., None]  # [B, T, F, 1]
        for stage in range(num_stages):
            x = masked_fill(x, frame_mask(length, x.shape[1]))
            x = nn.Conv(
                self.channels,
                (3, 3),
                strides=(2, 2),
                padding=((1, 0), (1, 1)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv", None, None, "mlp")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
                name=f"conv_{stage}",
            )(x)
            x = nn.relu(x)
            length = length // 2
        batch, frames, freq, channels = x.shape
        x = Dense(self.output_dim, ("mlp", "embed"), dtype=self.dtype, name="project")(
            x.reshape(batch, frames, freq * channels)
        )
        return masked_fill(constrain(x, ("batch", "length", "embed")), frame_mask(length, frames)), length


class FrameStackSubsampling(nn.Module):
    """`frontend.stack_frames` by `factor`, then Dense to `output_dim`: (x [B, T0 // factor, D], length // factor)."""

    output_dim: int
    factor: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
        stacked, length = frontend.stack_frames(features, length, factor=self.factor)
        x = Dense(self.output_dim, ("mlp", "embed"), dtype=self.dtype, name="project")(stacked.astype(self.dtype))
        return masked_fill(constrain(x, ("batch", "length", "embed")), frame_mask(length, x.shape[1])), length


def make_subsampling(kind: str, output_dim: int, *, factor: int, channels: int, dtype: Dtype, name: str) -> nn.Module:
    """The subsampling module named `kind` ("conv" or "stack")."""
    if kind == "conv":
        return ConvSubsampling(output_dim, channels, factor, dtype, name=name)
    if kind == "stack":
        return FrameStackSubsampling(output_dim, factor, dtype, name=name)
    raise ValueError(f"unknown subsampling {kind!r}; choose one of {SUBSAMPLINGS} (gin: ModelConfig.subsampling).")
