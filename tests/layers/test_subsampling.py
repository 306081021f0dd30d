"""Subsampling lengths and padding invariance; lightweight conv against NumPy; masked mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layers_reference import as_numpy, randomized_params

from maestro_jax.layers.common import frame_mask
from maestro_jax.layers.lightconv import LightConvBlock, LightweightConv
from maestro_jax.layers.pooling import masked_mean
from maestro_jax.layers.subsampling import make_subsampling

B, T0, M, D = 2, 19, 12, 16
LENGTH = jnp.array([19, 11])


@pytest.mark.parametrize("kind", ["conv", "stack"])
def test_subsampling_lengths_and_padding_invariance(kind):
    module = make_subsampling(kind, D, factor=4, channels=4, dtype=jnp.float32, name=None)
    features = jax.random.normal(jax.random.key(0), (B, T0, M))
    variables = module.init(jax.random.key(1), features, LENGTH)
    apply = jax.jit(lambda f: module.apply(variables, f, LENGTH))
    out, length = apply(features)
    assert out.shape == (B, T0 // 4, D)
    np.testing.assert_array_equal(length, [19 // 4, 11 // 4])
    garbage, _ = apply(features.at[1, 11:].set(30.0))
    np.testing.assert_allclose(garbage[1, :2], out[1, :2], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[1, 2:], 0.0)
    assert np.abs(np.asarray(out[1, :2])).sum() > 0


def test_lightweight_conv_matches_numpy():
    heads, size = 2, 3
    module = LightweightConv(kernel_size=size, num_heads=heads)
    x = jax.random.normal(jax.random.key(0), (B, 7, D))
    mask = frame_mask(jnp.array([7, 5]), 7)
    params = randomized_params(module.init(jax.random.key(1), x, mask), seed=2, scale=1.0)
    out = np.asarray(jax.jit(lambda x: module.apply({"params": params}, x, mask))(x))
    kernel = as_numpy(params)["kernel"]
    weights = np.exp(kernel) / np.exp(kernel).sum(0)  # softmax over the kernel width, per head
    xs = np.where(np.asarray(mask)[..., None], np.asarray(x, np.float64), 0.0)
    expected = np.zeros_like(xs)
    for b in range(B):
        for t in range(7):
            for c in range(D):
                for k in range(size):
                    source = t + k - 1
                    if 0 <= source < 7:
                        expected[b, t, c] += weights[k, c // (D // heads)] * xs[b, source, c]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_lightconv_block_padding_invariance():
    module = LightConvBlock(kernel_size=5, num_heads=2, ff_dim=32)
    x = jax.random.normal(jax.random.key(0), (B, 7, D))
    mask = frame_mask(jnp.array([7, 4]), 7)
    variables = {"params": randomized_params(module.init(jax.random.key(1), x, mask, train=False), seed=3)}
    apply = jax.jit(lambda x: module.apply(variables, x, mask, train=False))
    np.testing.assert_allclose(apply(x)[1, :4], apply(x.at[1, 4:].set(9.0))[1, :4], rtol=1e-5, atol=1e-5)


def test_masked_mean():
    x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    np.testing.assert_allclose(masked_mean(x, jnp.array([4, 2])), [x[0].mean(0), x[1, :2].mean(0)])
    np.testing.assert_array_equal(masked_mean(x, jnp.array([0, 1]))[0], 0.0)
