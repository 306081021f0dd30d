"""RNN-T Viterbi alignment, arc posteriors and token-rate reduction vs brute-force path enumeration."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rnnt_reference import log_softmax, path_log_probs

from maestro_jax.losses.alignment import reduce_to_token_rate, rnnt_arc_posteriors, rnnt_viterbi_alignment
from maestro_jax.losses.rnnt import rnnt_log_probs_fused, rnnt_loss

viterbi_jit = jax.jit(rnnt_viterbi_alignment)
posteriors_jit = jax.jit(rnnt_arc_posteriors)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(5, 4, 4, 4)).astype(np.float32)
    labels = rng.integers(1, 4, size=(5, 3)).astype(np.int32)
    return logits, labels, np.asarray([4, 2, 3, 1, 4], np.int32), np.asarray([3, 1, 0, 2, 2], np.int32)


def _durations_of_path(arcs, num_labels):
    """Convention: a frame consumed (blank arc) in state u belongs to token max(u - 1, 0)."""
    durations = np.zeros(num_labels, np.int32)
    emit_frames = np.zeros(num_labels, np.int32)
    for t, u, is_label in arcs:
        if is_label:
            emit_frames[u] = t
        elif num_labels:
            durations[max(u - 1, 0)] += 1
    return durations, emit_frames


def test_viterbi_matches_best_enumerated_path(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    alignment = viterbi_jit(logits, labels, logit_lengths, label_lengths)
    log_probs = log_softmax(logits)
    for b in range(len(logits)):
        paths = path_log_probs(log_probs[b], labels[b], logit_lengths[b], label_lengths[b])
        best_arcs, best_score = max(paths, key=lambda p: p[1])
        np.testing.assert_allclose(alignment.score[b], best_score, rtol=1e-5)
        durations, emit_frames = _durations_of_path(best_arcs, label_lengths[b])
        np.testing.assert_array_equal(alignment.durations[b, : label_lengths[b]], durations)
        np.testing.assert_array_equal(alignment.emit_frames[b, : label_lengths[b]], emit_frames)
        assert np.all(alignment.durations[b, label_lengths[b] :] == 0)


def test_viterbi_durations_sum_to_valid_frames_on_larger_batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 30, 9, 7)).astype(np.float32)
    labels = rng.integers(1, 7, size=(3, 8)).astype(np.int32)
    logit_lengths, label_lengths = np.asarray([30, 12, 5], np.int32), np.asarray([8, 8, 3], np.int32)
    alignment = viterbi_jit(logits, labels, logit_lengths, label_lengths)
    np.testing.assert_array_equal(alignment.durations.sum(1), logit_lengths)
    for b in range(3):
        frames = alignment.emit_frames[b, : label_lengths[b]]
        assert np.all(np.diff(frames) >= 0) and frames.max() < logit_lengths[b]
    total = -jax.jit(rnnt_loss)(logits, labels, logit_lengths, label_lengths)
    assert np.all(alignment.score <= total + 1e-5)


def test_arc_posteriors_match_enumeration_and_sum_to_one(tiny):
    logits, labels, logit_lengths, label_lengths = tiny
    posteriors = np.asarray(posteriors_jit(logits, labels, logit_lengths, label_lengths))
    log_probs = log_softmax(logits)
    for b in range(len(logits)):
        paths = path_log_probs(log_probs[b], labels[b], logit_lengths[b], label_lengths[b])
        log_z = np.logaddexp.reduce([s for _, s in paths])
        want = np.zeros(posteriors.shape[1:])
        for arcs, score in paths:
            for t, u, is_label in arcs:
                if is_label:
                    want[t, u] += np.exp(score - log_z)
        np.testing.assert_allclose(posteriors[b], want, atol=1e-6)
        np.testing.assert_allclose(posteriors[b].sum(0)[: label_lengths[b]], 1.0, rtol=1e-5)


def joint_output_fn(params, z):
    return jnp.tanh(z) @ params


def test_alignments_from_fused_log_probs_equal_those_from_logits():
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    params = jax.random.normal(keys[0], (6, 5))
    enc_proj, pred_proj = jax.random.normal(keys[1], (2, 9, 6)), jax.random.normal(keys[2], (2, 4, 6))
    labels = jnp.asarray([[1, 2, 3], [4, 4, 0]], jnp.int32)
    logit_lengths, label_lengths = jnp.asarray([9, 6], jnp.int32), jnp.asarray([3, 2], jnp.int32)
    fused = jax.jit(functools.partial(rnnt_log_probs_fused, joint_output_fn, chunk_size=4))
    log_probs = fused(params, enc_proj, pred_proj, labels)
    logits = joint_output_fn(params, enc_proj[:, :, None] + pred_proj[:, None])
    from_pair = viterbi_jit(log_probs, labels, logit_lengths, label_lengths)
    from_logits = viterbi_jit(logits, labels, logit_lengths, label_lengths)
    np.testing.assert_array_equal(from_pair.durations, from_logits.durations)
    np.testing.assert_allclose(from_pair.score, from_logits.score, rtol=1e-5)
    np.testing.assert_allclose(
        posteriors_jit(log_probs, labels, logit_lengths, label_lengths),
        posteriors_jit(logits, labels, logit_lengths, label_lengths),
        atol=1e-5,
    )


def test_reduce_to_token_rate_picks_emitting_frames_and_zeroes_padding():
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    emit_frames = np.asarray([[0, 2, 4], [1, 3, 0]], np.int32)
    label_lengths = np.asarray([3, 2], np.int32)
    got = np.asarray(reduce_to_token_rate(x, emit_frames, label_lengths))
    np.testing.assert_array_equal(got[0], x[0, [0, 2, 4]])
    np.testing.assert_array_equal(got[1, :2], x[1, [1, 3]])
    np.testing.assert_array_equal(got[1, 2], 0.0)
