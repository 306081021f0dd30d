"""Conformer block against NumPy, padding invariance for each conv norm, remat and scan equal the plain stack."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layers_reference import as_numpy, conformer_block, randomized_params

from maestro_jax.layers.common import depthwise_conv_1d, frame_mask
from maestro_jax.layers.conformer import ConformerBlock, ConformerStack, DepthwiseConv

B, T, D, H, F, K = 2, 6, 16, 2, 32, 3
LENGTH = jnp.array([T, 4])


def _inputs(seed=1):
    return jax.random.normal(jax.random.key(seed), (B, T, D))


def test_conformer_block_matches_numpy():
    relative = True  # plain attention is checked against NumPy in test_attention.py
    block = ConformerBlock(num_heads=H, ff_dim=F, kernel_size=K, relative_position=relative)
    x, mask = _inputs(), frame_mask(LENGTH, T)
    params = randomized_params(block.init(jax.random.key(0), x, mask, False), seed=3)
    out = np.asarray(jax.jit(lambda x: block.apply({"params": params}, x, mask, False))(x))
    for b in range(B):
        expected = conformer_block(np.asarray(x[b], np.float64), np.asarray(mask[b]), as_numpy(params), H, relative)
        np.testing.assert_allclose(out[b], expected, rtol=5e-4, atol=5e-4)


@pytest.mark.parametrize("conv_norm", ["layer", "group", "batch"])
def test_conformer_block_padding_invariance(conv_norm):
    block = ConformerBlock(num_heads=H, ff_dim=F, kernel_size=K, conv_norm=conv_norm)
    x, mask = _inputs(), frame_mask(LENGTH, T)
    variables = block.init(jax.random.key(0), x, mask, False)
    variables = {**variables, "params": randomized_params(variables, seed=4)}

    @jax.jit
    def apply(x):  # train mode: batch norm uses (masked) batch statistics, the case where padding could leak
        out, _ = block.apply(variables, x, mask, True, mutable=["batch_stats"])
        return out

    garbage = x.at[1, 4:].set(50.0)
    np.testing.assert_allclose(apply(x)[1, :4], apply(garbage)[1, :4], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(apply(garbage)[1, 4:], 0.0)


STACK = dict(num_layers=2, num_heads=H, ff_dim=F, kernel_size=K)


@pytest.fixture(scope="module")
def stack_reference():
    stack = ConformerStack(**STACK)
    x, mask = _inputs(), frame_mask(LENGTH, T)
    params = randomized_params(stack.init(jax.random.key(0), x, mask, train=False), seed=5, scale=0.2)

    def loss(params, stack):
        return jnp.sum(jnp.sin(stack.apply({"params": params}, x, mask, train=False)))

    value, grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, stack)
    return params, loss, value, grads


def test_remat_stack_equals_plain_stack(stack_reference):
    params, loss, value, grads = stack_reference
    remat_value, remat_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
        params, ConformerStack(**STACK, remat_policy="full")
    )
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads)


def test_scanned_stack_equals_plain_stack(stack_reference):
    params, loss, value, _ = stack_reference
    scanned = ConformerStack(**STACK, scan_layers=True, remat_policy="dots")
    x, mask = _inputs(), frame_mask(LENGTH, T)
    abstract = jax.eval_shape(functools.partial(scanned.init, train=False), jax.random.key(0), x, mask)
    specs = nn.get_partition_spec(abstract)["params"]
    assert all(spec[0] == "layers" for spec in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, tuple)))
    stacked = {"layers": {"block": jax.tree.map(lambda *p: jnp.stack(p), params["layer_0"], params["layer_1"])}}
    np.testing.assert_allclose(jax.jit(loss, static_argnums=1)(stacked, scanned), value, rtol=1e-5)


def test_block_rejects_heads_not_dividing_dim():
    block = ConformerBlock(num_heads=3, ff_dim=F, kernel_size=K)
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        block.init(jax.random.key(0), _inputs(), frame_mask(LENGTH, T), False)


def test_bfloat16_compute_keeps_float32_params(stack_reference):
    params = stack_reference[0]
    x, mask = _inputs(), frame_mask(LENGTH, T)
    abstract = jax.eval_shape(
        functools.partial(ConformerStack(**STACK, dtype=jnp.bfloat16).init, train=False), jax.random.key(0), x, mask
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(nn.meta.unbox(abstract))} == {jnp.dtype(jnp.float32)}

    def run(dtype):
        stack = ConformerStack(**STACK, dtype=dtype)
        return jax.jit(lambda x: stack.apply({"params": params}, x, mask, train=False))(x)

    low, high = run(jnp.bfloat16), run(jnp.float32)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), high, atol=0.1)


def test_depthwise_conv_matches_brute_force_and_grouped_conv_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 9, 6))
    kernel = jax.random.normal(jax.random.key(1), (5, 6))
    xs, ks = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    expected = np.zeros_like(xs)
    for t in range(9):
        for k in range(5):
            if 0 <= t + k - 2 < 9:
                expected[:, t] += ks[k] * xs[:, t + k - 2]
    np.testing.assert_allclose(depthwise_conv_1d(x, kernel), expected, rtol=1e-5, atol=1e-5)

    def grouped(x, kernel):  # the formulation it replaces
        return jax.lax.conv_general_dilated(
            x, kernel[:, None], (1,), [(2, 2)], dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=6
        )

    weights = jax.random.normal(jax.random.key(2), (2, 9, 6))

    def grads(conv):
        return jax.grad(lambda x, k: jnp.sum(weights * conv(x, k)), argnums=(0, 1))(x, kernel)

    for ours, reference in zip(grads(depthwise_conv_1d), grads(grouped)):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="odd kernel"):
        depthwise_conv_1d(x, kernel[:4])


def test_depthwise_conv_params_and_init_are_flax_grouped_convs():
    # Checkpoints written before DepthwiseConv (an nn.Conv with feature_group_count) load unchanged.
    x = jax.random.normal(jax.random.key(0), (2, 7, 8))
    ours = DepthwiseConv(3).init(jax.random.key(3), x)
    flax_conv = nn.Conv(8, (3,), padding="SAME", feature_group_count=8).init(jax.random.key(3), x)
    ours, flax_conv = nn.unbox(ours), nn.unbox(flax_conv)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_conv)
    np.testing.assert_array_equal(ours["params"]["kernel"], flax_conv["params"]["kernel"])
    np.testing.assert_allclose(
        DepthwiseConv(3).apply(ours, x),
        nn.Conv(8, (3,), padding="SAME", feature_group_count=8).apply(flax_conv, x),
        rtol=1e-5,
        atol=1e-6,
    )
