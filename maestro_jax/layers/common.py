"""Small pieces every layer shares: partitioned dense/norm factories, activation constraints, sinusoids, masks."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.frontend import frame_mask

Dtype = Any
default_kernel_init = nn.initializers.lecun_normal()

__all__ = [
    "Dense",
    "DenseGeneral",
    "LayerNorm",
    "constrain",
    "depthwise_conv_1d",
    "frame_mask",
    "masked_fill",
    "sinusoid",
]


def Dense(
    features: int,
    kernel_axes: tuple[str | None, str | None],
    *,
    dtype: Dtype = jnp.float32,
    use_bias: bool = True,
    kernel_init=default_kernel_init,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense whose kernel [in, out] carries logical axes `kernel_axes` and bias [out] carries kernel_axes[1]."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, kernel_axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), kernel_axes[1:]),
        name=name,
    )


class DenseGeneral(nn.Module):
    """Dense over several input axes to one or more output axes, kernel [*in, *out] on logical axes `kernel_axes`
    (input axes then output axes), bias [*out] on the output axes.

    Unlike nn.DenseGeneral it initialises the kernel at its full shape, so the logical sharding constraint of the boxed
    kernel always sees the rank it names (nn.DenseGeneral initialises a flattened 2-D kernel and then reshapes it).
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    axis: int | tuple[int, ...] = -1
    dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axes = tuple(sorted(a % x.ndim for a in axes))
        in_shape = tuple(x.shape[a] for a in axes)
        num_in, num_out = len(in_shape), len(features)
        init = nn.initializers.lecun_normal(
            in_axis=tuple(range(num_in)), out_axis=tuple(range(num_in, num_in + num_out))
        )
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(init, self.kernel_axes), in_shape + features, jnp.float32
        )
        x = jnp.asarray(x, self.dtype)
        batch_axes = [a for a in range(x.ndim) if a not in axes]
        x = jnp.transpose(x, batch_axes + list(axes))
        y = jnp.tensordot(
            x, jnp.asarray(kernel, self.dtype), axes=(tuple(range(len(batch_axes), x.ndim)), tuple(range(num_in)))
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.kernel_axes[-num_out:]),
                features,
                jnp.float32,
            )
            y = y + jnp.asarray(bias, self.dtype)
        return y


def LayerNorm(axis_name: str = "embed", *, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.LayerNorm:
    """nn.LayerNorm (epsilon 1e-5, statistics in float32) with scale and bias on logical axis `axis_name`."""
    return nn.LayerNorm(
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis_name,)),
        name=name,
    )


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Sharding constraint on logical axes; a no-op outside a mesh with axis rules."""
    return nn.with_logical_constraint(x, axes)


def masked_fill(x: jax.Array, mask: jax.Array, value: float = 0.0) -> jax.Array:
    """x [B, T, ...] with positions where bool mask [B, T] is False set to `value`."""
    mask = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(mask, x, jnp.asarray(value, x.dtype))


def sinusoid(positions: jax.Array, dim: int, *, max_timescale: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding f32[..., dim] = [sin(p w_i), cos(p w_i)] with w_i = max_timescale^(-2i/dim), i < dim/2.

    `positions` may be negative (relative distances) or fractional; `dim` must be even.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embeddings need an even dimension; got dim={dim}. Use an even model dim.")
    inv_freq = max_timescale ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def depthwise_conv_1d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Centred depthwise convolution over time: out[b, t, c] = sum_k kernel[k, c] * x[b, t + k - K // 2, c], zero
    beyond both ends. x [B, T, D], kernel [K, D] with K odd -> [B, T, D] in x's dtype, accumulated in float32.

    Written as K shifted multiply-adds, which XLA fuses into one loop, rather than a convolution with
    feature_group_count=D: on XLA:CPU the grouped convolution's forward + backward takes 3.8x as long at the toy
    Conformer's [8, 113, 144] with K 15 (bench/depthwise_conv.py), and the tap count is small enough to unroll.
    """
    taps = kernel.shape[0]
    if taps % 2 == 0:
        raise ValueError(f"depthwise_conv_1d needs an odd kernel for centred padding; got {taps} taps.")
    length, half = x.shape[1], taps // 2
    padded = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
    padded, kernel = padded.astype(jnp.float32), kernel.astype(jnp.float32)
    out = padded[:, :length] * kernel[0]
    for k in range(1, taps):
        out = out + padded[:, k : k + length] * kernel[k]
    return out.astype(x.dtype)
