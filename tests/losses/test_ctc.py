"""ctc_loss vs optax and NumPy brute force, infeasible masking; ctc_forced_alignment vs brute-force best path."""

import itertools

import jax
import numpy as np
import optax
import pytest

from maestro_jax.losses.ctc import ctc_forced_alignment, ctc_loss, ctc_min_frames

loss_jit = jax.jit(ctc_loss)
alignment_jit = jax.jit(ctc_forced_alignment)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(5, 5, 4)).astype(np.float32)
    labels = np.asarray([[1, 2, 3], [2, 2, 0], [3, 0, 0], [1, 1, 1], [3, 1, 2]], np.int32)
    logit_lengths = np.asarray([5, 4, 2, 4, 5], np.int32)
    label_lengths = np.asarray([3, 2, 1, 3, 0], np.int32)  # example 3 needs 5 frames: infeasible
    return logits, labels, logit_lengths, label_lengths


def _collapse(path, blank_id=0):
    out = [k for i, k in enumerate(path) if k != blank_id and (i == 0 or path[i - 1] != k)]
    return tuple(out)


def _paths_to(log_probs, target):
    """All frame paths (with log-prob) that collapse to `target`, by enumerating V^T sequences."""
    frames, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=frames):
        if _collapse(path) == tuple(target):
            yield path, sum(log_probs[t, k] for t, k in enumerate(path))


def _log_softmax(x):
    x = x.astype(np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def test_loss_matches_brute_force_and_masks_infeasible(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    loss, valid = loss_jit(logits, logit_lengths, labels, label_lengths)
    np.testing.assert_array_equal(valid, [True, True, True, False, True])
    assert loss[3] == 0.0
    for b in np.flatnonzero(valid):
        log_probs = _log_softmax(logits[b, : logit_lengths[b]])
        scores = [s for _, s in _paths_to(log_probs, labels[b, : label_lengths[b]])]
        np.testing.assert_allclose(loss[b], -np.logaddexp.reduce(scores), rtol=1e-5)


def test_loss_equals_optax_with_paddings(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    loss, valid = loss_jit(logits, logit_lengths, labels, label_lengths)
    logit_paddings = (np.arange(5)[None] >= logit_lengths[:, None]).astype(np.float32)
    label_paddings = (np.arange(3)[None] >= label_lengths[:, None]).astype(np.float32)
    want = optax.ctc_loss(logits, logit_paddings, labels, label_paddings)
    np.testing.assert_allclose(loss[valid], np.asarray(want)[valid], rtol=1e-6)
    assert np.asarray(want)[3] > 1e4  # the placeholder ctc_loss keeps out of averages


def test_padding_does_not_change_loss_and_invalid_gets_zero_gradient(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    padded = np.arange(5)[None, :, None] >= logit_lengths[:, None, None]
    noisy = np.where(padded, 30.0, logits).astype(np.float32)
    np.testing.assert_allclose(
        loss_jit(noisy, logit_lengths, labels, label_lengths)[0],
        loss_jit(logits, logit_lengths, labels, label_lengths)[0],
    )
    grad = jax.grad(lambda x: loss_jit(x, logit_lengths, labels, label_lengths)[0].sum())(logits)
    assert np.all(np.isfinite(grad)) and np.all(grad[3] == 0.0) and np.abs(grad[0]).sum() > 0


def test_min_frames_counts_repeated_neighbours():
    labels = np.asarray([[1, 1, 2, 2], [1, 2, 1, 2], [3, 3, 3, 0]], np.int32)
    np.testing.assert_array_equal(ctc_min_frames(labels, np.asarray([4, 4, 3], np.int32)), [6, 4, 5])
    np.testing.assert_array_equal(ctc_min_frames(labels, np.asarray([1, 0, 2], np.int32)), [1, 0, 3])


def test_forced_alignment_is_the_best_path(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    alignment = alignment_jit(logits, logit_lengths, labels, label_lengths)
    for b in [0, 1, 2, 4]:
        frames, num_labels = logit_lengths[b], label_lengths[b]
        log_probs = _log_softmax(logits[b, :frames])
        best_path, best_score = max(_paths_to(log_probs, labels[b, :num_labels]), key=lambda p: p[1])
        np.testing.assert_allclose(alignment.score[b], best_score, rtol=1e-5)
        np.testing.assert_array_equal(alignment.frame_labels[b, :frames], best_path)
        assert np.all(alignment.frame_labels[b, frames:] == 0)
        # Convention: a frame belongs to the last token started at or before it; leading blanks to token 0.
        starts = [t for t in range(frames) if best_path[t] != 0 and (t == 0 or best_path[t - 1] != best_path[t])]
        np.testing.assert_array_equal(alignment.emit_frames[b, :num_labels], starts)
        owner = np.maximum(np.searchsorted(starts, np.arange(frames), side="right") - 1, 0)
        want = np.bincount(owner, minlength=3) if num_labels else np.zeros(3)
        np.testing.assert_array_equal(alignment.durations[b], want)
    assert alignment.score[3] < -1e29  # infeasible example


def test_forced_alignment_durations_sum_to_frames_on_larger_batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 40, 9)).astype(np.float32)
    labels = rng.integers(1, 9, size=(3, 12)).astype(np.int32)
    logit_lengths, label_lengths = np.asarray([40, 25, 18], np.int32), np.asarray([12, 7, 12], np.int32)
    alignment = alignment_jit(logits, logit_lengths, labels, label_lengths)
    np.testing.assert_array_equal(alignment.durations.sum(1), logit_lengths)
    for b in range(3):
        frame_labels = np.asarray(alignment.frame_labels[b, : logit_lengths[b]])
        assert _collapse(frame_labels) == tuple(labels[b, : label_lengths[b]])
        log_probs = _log_softmax(logits[b, : logit_lengths[b]])
        np.testing.assert_allclose(
            alignment.score[b], log_probs[np.arange(logit_lengths[b]), frame_labels].sum(), rtol=1e-5
        )
