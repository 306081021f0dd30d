"""rnnt_loss_fused equals rnnt_loss on the materialised joint output (values and gradients), and brute force."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rnnt_reference import brute_force_nll

from maestro_jax.losses.rnnt import rnnt_log_probs, rnnt_log_probs_fused, rnnt_loss, rnnt_loss_fused

BATCH, FRAMES, NUM_LABELS, JOINT, VOCAB = 4, 7, 3, 6, 5


def joint_output_fn(params, z):
    return jnp.tanh(z) @ params["kernel"] + params["bias"]


@pytest.fixture(scope="module")
def inputs():
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "kernel": jax.random.normal(keys[0], (JOINT, VOCAB)),
        "bias": jax.random.normal(keys[1], (VOCAB,)),
    }
    enc_proj = jax.random.normal(keys[2], (BATCH, FRAMES, JOINT))
    pred_proj = jax.random.normal(keys[3], (BATCH, NUM_LABELS + 1, JOINT))
    labels = jnp.asarray([[1, 2, 3], [4, 4, 0], [2, 0, 0], [3, 1, 1]], jnp.int32)
    logit_lengths = jnp.asarray([7, 4, 3, 1], jnp.int32)
    label_lengths = jnp.asarray([3, 2, 1, 3], jnp.int32)
    return params, enc_proj, pred_proj, labels, logit_lengths, label_lengths


fused_loss = jax.jit(functools.partial(rnnt_loss_fused, joint_output_fn), static_argnames="chunk_size")


def _materialised(params, enc_proj, pred_proj):
    return joint_output_fn(params, enc_proj[:, :, None, :] + pred_proj[:, None, :, :])


def _weighted(loss):
    return jnp.sum(loss * jnp.arange(1.0, BATCH + 1))


@functools.partial(jax.jit, static_argnames="chunk_size")
def fused_value_and_grads(params, enc_proj, pred_proj, labels, logit_lengths, label_lengths, chunk_size):
    def total(p, e, q):
        return _weighted(
            rnnt_loss_fused(joint_output_fn, p, e, q, labels, logit_lengths, label_lengths, chunk_size=chunk_size)
        )

    return jax.value_and_grad(total, argnums=(0, 1, 2))(params, enc_proj, pred_proj)


@jax.jit
def plain_value_and_grads(params, enc_proj, pred_proj, labels, logit_lengths, label_lengths):
    def total(p, e, q):
        return _weighted(rnnt_loss(_materialised(p, e, q), labels, logit_lengths, label_lengths))

    return jax.value_and_grad(total, argnums=(0, 1, 2))(params, enc_proj, pred_proj)


@pytest.mark.parametrize("chunk_size", [3, 16])  # 3 leaves a ragged last chunk; 16 > T means one chunk
def test_fused_equals_plain_values_and_gradients(inputs, chunk_size):
    fused_value, fused_grads = fused_value_and_grads(*inputs, chunk_size=chunk_size)
    plain_value, plain_grads = plain_value_and_grads(*inputs)
    np.testing.assert_allclose(fused_value, plain_value, rtol=1e-6)
    for fused, plain in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(plain_grads)):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=3e-5)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(fused_grads))


def test_fused_matches_brute_force(inputs):
    params, enc_proj, pred_proj, labels, logit_lengths, label_lengths = inputs
    loss = fused_loss(params, enc_proj, pred_proj, labels, logit_lengths, label_lengths, chunk_size=3)
    logits = np.asarray(_materialised(params, enc_proj, pred_proj))
    want = [
        brute_force_nll(logits[b], np.asarray(labels[b]), int(logit_lengths[b]), int(label_lengths[b]))
        for b in range(BATCH)
    ]
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_fused_gradient_matches_finite_differences_in_float64(inputs):
    params, enc_proj, pred_proj, labels, logit_lengths, label_lengths = inputs
    with jax.enable_x64(True):
        p, e, q = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, enc_proj, pred_proj))

        @jax.jit
        def total(p, e, q):
            return _weighted(
                rnnt_loss_fused(joint_output_fn, p, e, q, labels, logit_lengths, label_lengths, chunk_size=3)
            )

        grads = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(p, e, q)
        rng = np.random.default_rng(0)
        directions = jax.tree.map(lambda x: rng.normal(size=x.shape), (p, e, q))
        eps = 1e-6
        plus = jax.tree.map(lambda x, d: x + eps * d, (p, e, q), directions)
        minus = jax.tree.map(lambda x, d: x - eps * d, (p, e, q), directions)
        numeric = (total(*plus) - total(*minus)) / (2 * eps)
        analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(directions)))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7)


def test_fused_log_probs_equal_materialised(inputs):
    params, enc_proj, pred_proj, labels, _, _ = inputs
    fused = rnnt_log_probs_fused(joint_output_fn, params, enc_proj, pred_proj, labels, chunk_size=3)
    plain = rnnt_log_probs(_materialised(params, enc_proj, pred_proj), labels)
    for got, want in zip(fused, plain):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_fused_gives_finite_fp32_loss(inputs):
    params, enc_proj, pred_proj, labels, logit_lengths, label_lengths = inputs
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), (params, enc_proj, pred_proj))
    value, grads = fused_value_and_grads(*low, labels, logit_lengths, label_lengths, chunk_size=3)
    assert value.dtype == jnp.float32 and np.isfinite(value)
    reference, _ = plain_value_and_grads(
        *jax.tree.map(lambda x: x.astype(jnp.float32), low), labels, logit_lengths, label_lengths
    )
    np.testing.assert_allclose(value, reference, rtol=2e-2)
    assert all(
        g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grads)
    )
