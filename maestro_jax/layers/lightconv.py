"""Lightweight convolution (Wu et al. 2019) and the block the duration model and refiner are built from."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import Dense, Dtype, LayerNorm, constrain, depthwise_conv_1d, masked_fill
from maestro_jax.layers.transformer import FeedForward


class LightweightConv(nn.Module):
    """Depthwise conv over time whose kernel [K, H] is softmax-normalised over K and shared by each head's D/H channels.

    Channel c uses head c // (D / H). x [B, T, D], mask [B, T] -> [B, T, D]; padded frames are zeroed first and the
    kernel is centred (K odd), so padding never changes a valid frame.
    """

    kernel_size: int
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        if self.kernel_size % 2 == 0 or dim % self.num_heads:
            raise ValueError(
                f"lightweight conv needs an odd kernel and dim divisible by heads; got kernel_size={self.kernel_size}, "
                f"dim={dim}, num_heads={self.num_heads}."
            )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("conv", "heads")),
            (self.kernel_size, self.num_heads),
            jnp.float32,
        )
        weights = jnp.repeat(jax.nn.softmax(kernel, axis=0), dim // self.num_heads, axis=1)  # [K, D]
        x = masked_fill(x, mask).astype(self.dtype)
        return depthwise_conv_1d(x, weights)


class LightConvBlock(nn.Module):
    """x + Dense(LConv(GLU(Dense(LN(x))))), then x + FFN(x); [B, T, D] with mask [B, T] -> [B, T, D], 0 at padding."""

    kernel_size: int
    num_heads: int
    ff_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        dim = x.shape[-1]
        y = LayerNorm(dtype=self.dtype)(x)
        y = nn.glu(Dense(2 * dim, ("embed", "mlp"), dtype=self.dtype, name="glu")(y), axis=-1)
        y = LightweightConv(self.kernel_size, self.num_heads, self.dtype, name="lightweight_conv")(y, mask)
        y = Dense(dim, ("mlp", "embed"), dtype=self.dtype, name="output")(y)
        x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        x = x + FeedForward(self.ff_dim, self.dropout_rate, self.dtype, name="feed_forward")(x, train=train)
        return masked_fill(constrain(x, ("batch", "length", "embed")), mask)
