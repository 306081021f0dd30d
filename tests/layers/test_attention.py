"""Attention: rel_shift indexing, relative and plain attention against NumPy loops, padding invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layers_reference import as_numpy, attention, randomized_params

from maestro_jax.layers.attention import MultiHeadAttention, rel_shift, relative_distances
from maestro_jax.layers.common import frame_mask

B, T, D, H = 2, 6, 16, 2


def test_rel_shift_picks_distance_i_minus_j():
    x = np.random.default_rng(0).standard_normal((3, T, 2 * T - 1)).astype(np.float32)
    distances = np.asarray(relative_distances(T))
    shifted = np.asarray(rel_shift(jnp.asarray(x)))
    for i in range(T):
        for j in range(T):
            column = int(np.flatnonzero(distances == i - j)[0])
            np.testing.assert_array_equal(shifted[:, i, j], x[:, i, column])


def test_rel_shift_rejects_wrong_width():
    with pytest.raises(ValueError, match="2T-1"):
        rel_shift(jnp.zeros((T, 2 * T)))


@pytest.fixture(scope="module", params=[True, False], ids=["relative", "plain"])
def attention_case(request):
    module = MultiHeadAttention(num_heads=H, head_dim=D // H, relative_position=request.param)
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    length = jnp.array([T, 4])
    variables = module.init(jax.random.key(0), x, x, frame_mask(length, T), train=False)
    params = randomized_params(variables, seed=2)
    apply = jax.jit(lambda x, length: module.apply({"params": params}, x, x, frame_mask(length, T), train=False))
    return request.param, params, apply, x, length


def test_attention_matches_numpy_loops(attention_case):
    relative, params, apply, x, length = attention_case
    out = np.asarray(apply(x, length))
    for b in range(B):
        mask = np.arange(T) < int(length[b])
        expected = attention(
            np.asarray(x[b], np.float64), np.asarray(x[b], np.float64), mask, as_numpy(params), H, relative
        )
        np.testing.assert_allclose(out[b, : length[b]], expected[: length[b]], rtol=2e-4, atol=2e-4)


def test_attention_padding_invariance(attention_case):
    _, _, apply, x, length = attention_case
    garbage = x.at[1, 4:].set(100.0)
    np.testing.assert_allclose(apply(x, length)[1, :4], apply(garbage, length)[1, :4], rtol=1e-5, atol=1e-5)
    # Same valid frames inside a longer padded array: relative positions must not depend on the padded length.
    longer = jnp.pad(x, ((0, 0), (0, 3), (0, 0)), constant_values=-7.0)
    longer_out = jax.jit(
        lambda x: MultiHeadAttention(H, D // H, attention_case[0]).apply(
            {"params": attention_case[1]}, x, x, frame_mask(length, T + 3), train=False
        )
    )(longer)
    np.testing.assert_allclose(longer_out[1, :4], apply(x, length)[1, :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(longer_out[0, :T], apply(x, length)[0], rtol=1e-5, atol=1e-5)
