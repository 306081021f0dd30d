"""rnnt_loss on materialised logits vs NumPy brute force, a naive alpha recursion and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rnnt_reference import brute_force_nll, naive_alpha_nll

from maestro_jax.losses.rnnt import rnnt_log_probs, rnnt_loss

loss_jit = jax.jit(rnnt_loss, static_argnames="blank_id")
grad_jit = jax.jit(jax.grad(lambda x, *a: rnnt_loss(x, *a).sum()))


def _example(seed, batch, frames, num_labels, vocab, logit_lengths, label_lengths):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(batch, frames, num_labels + 1, vocab)).astype(np.float32)
    labels = rng.integers(1, vocab, size=(batch, num_labels)).astype(np.int32)
    return logits, labels, np.asarray(logit_lengths, np.int32), np.asarray(label_lengths, np.int32)


@pytest.fixture(scope="module")
def tiny():
    return _example(0, 5, 4, 3, 4, [4, 2, 3, 1, 4], [3, 1, 0, 2, 3])


def test_matches_brute_force_over_all_paths(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    got = np.asarray(loss_jit(logits, labels, logit_lengths, label_lengths))
    want = [brute_force_nll(logits[b], labels[b], logit_lengths[b], label_lengths[b]) for b in range(len(logits))]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_blank_id_other_than_zero(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    labels = np.where(labels == 2, 1, labels)  # blank 2 must not occur among labels
    got = np.asarray(loss_jit(logits, labels, logit_lengths, label_lengths, blank_id=2))
    want = [brute_force_nll(logits[b], labels[b], logit_lengths[b], label_lengths[b], 2) for b in range(len(logits))]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_matches_naive_alpha_recursion_on_larger_batch():
    logits, labels, logit_lengths, label_lengths = _example(1, 3, 23, 9, 11, [23, 17, 5], [9, 4, 6])
    got = np.asarray(loss_jit(logits, labels, logit_lengths, label_lengths))
    want = [naive_alpha_nll(logits[b], labels[b], logit_lengths[b], label_lengths[b]) for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradient_matches_finite_differences_in_float64(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    with jax.enable_x64(True):
        x = jnp.asarray(logits, jnp.float64)
        weights = jnp.arange(1.0, len(logits) + 1)  # distinct cotangents per example exercise the scaling

        @jax.jit
        def total(z):
            return jnp.sum(weights * rnnt_loss(z, labels, logit_lengths, label_lengths))

        grad = np.asarray(jax.jit(jax.grad(total))(x))
        direction = np.random.default_rng(2).normal(size=logits.shape)
        eps = 1e-6
        numeric = (total(x + eps * direction) - total(x - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-7)
        for index in [(0, 1, 2, 3), (1, 0, 0, 0), (3, 0, 1, 2), (4, 3, 3, 0)]:
            bump = np.zeros(logits.shape)
            bump[index] = eps
            numeric = (total(x + bump) - total(x - bump)) / (2 * eps)
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-6, atol=1e-7)


def test_padding_changes_nothing_and_gets_zero_gradient(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    rng = np.random.default_rng(3)
    frame_pad = np.arange(logits.shape[1])[None, :, None, None] >= logit_lengths[:, None, None, None]
    label_pad = np.arange(logits.shape[2])[None, None, :, None] > label_lengths[:, None, None, None]
    padding = frame_pad | label_pad
    noisy = np.where(padding, rng.normal(scale=50.0, size=logits.shape), logits).astype(np.float32)
    noisy_labels = np.where(np.arange(labels.shape[1])[None] >= label_lengths[:, None], 3, labels)
    np.testing.assert_allclose(
        loss_jit(noisy, noisy_labels, logit_lengths, label_lengths),
        loss_jit(logits, labels, logit_lengths, label_lengths),
        rtol=1e-6,
    )
    grad = np.asarray(grad_jit(noisy, noisy_labels, logit_lengths, label_lengths))
    assert np.all(grad[np.broadcast_to(padding, grad.shape)] == 0.0)
    assert np.abs(grad).sum() > 0


def test_gradient_rows_sum_to_zero_and_loss_decreases(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    grad = np.asarray(grad_jit(logits, labels, logit_lengths, label_lengths))
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-6)  # softmax invariance to a constant shift
    before = loss_jit(logits, labels, logit_lengths, label_lengths).sum()
    after = loss_jit(logits - 0.1 * grad, labels, logit_lengths, label_lengths).sum()
    assert after < before


def test_bf16_logits_give_finite_fp32_loss_close_to_fp32(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    low = jnp.asarray(logits, jnp.bfloat16)
    loss = loss_jit(low, labels, logit_lengths, label_lengths)
    assert loss.dtype == jnp.float32 and np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, loss_jit(low.astype(jnp.float32), labels, logit_lengths, label_lengths), rtol=1e-6)
    grad = grad_jit(low, labels, logit_lengths, label_lengths)
    assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_log_probs_are_gathered_from_log_softmax(tiny):
    logits, labels, _, _ = tiny
    blank_logp, label_logp = rnnt_log_probs(logits, labels)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(blank_logp, log_probs[..., 0], rtol=1e-6)
    want = np.take_along_axis(np.asarray(log_probs[:, :, :-1]), labels[:, None, :, None], axis=-1)[..., 0]
    np.testing.assert_allclose(label_logp[:, :, :-1], want, rtol=1e-6)
