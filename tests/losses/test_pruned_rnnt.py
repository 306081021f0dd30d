"""Pruned RNN-T: the simple loss equals the full loss of its additive logits, the pruned loss equals the full loss
with a full band and brute force over in-band paths otherwise, bounds follow k2, padding changes nothing.

The machine compiles slowly, so the tests share a handful of jitted programs on one shape (plus one padded shape).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rnnt_reference import log_softmax, path_log_probs

from maestro_jax.losses.pruned_rnnt import (
    pruned_loss_scales,
    pruned_transducer_loss,
    pruning_bounds,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    simple_log_probs,
)
from maestro_jax.losses.rnnt import (
    arc_occupancies,
    backward_variables,
    forward_variables,
    rnnt_log_probs,
    rnnt_loss,
    rnnt_loss_fused,
)

BATCH, FRAMES, NUM_LABELS, JOINT, VOCAB = 4, 7, 3, 6, 5
LOGIT_LENGTHS = np.asarray([7, 4, 3, 1], np.int32)
LABEL_LENGTHS = np.asarray([3, 2, 1, 1], np.int32)  # U_b <= T_b: feasible for every prune_range >= 2
WEIGHTS = np.arange(1.0, BATCH + 1, dtype=np.float32)  # distinct per-example cotangents


def joint_output_fn(params, z):
    return jnp.tanh(z) @ params["kernel"] + params["bias"]


def _inputs(seed=0):
    """(params, enc_proj, pred_proj, am, lm, labels) as NumPy arrays."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    params = {"kernel": normal(JOINT, VOCAB), "bias": normal(VOCAB)}
    am, lm = 2.0 * normal(BATCH, FRAMES, VOCAB), 2.0 * normal(BATCH, NUM_LABELS + 1, VOCAB)
    labels = rng.integers(1, VOCAB, size=(BATCH, NUM_LABELS)).astype(np.int32)
    return params, normal(BATCH, FRAMES, JOINT), normal(BATCH, NUM_LABELS + 1, JOINT), am, lm, labels


def _tied_simple_logits(params, enc_proj, pred_proj):
    """am, lm from the joint's own output layer (the objectives' choice)."""
    return enc_proj @ params["kernel"] + params["bias"], pred_proj @ params["kernel"]


@functools.partial(jax.jit, static_argnames="prune_range")
def pipeline(params, enc_proj, pred_proj, am, lm, labels, logit_lengths, label_lengths, prune_range):
    """pruned_transducer_loss and its gradients: (params, enc_proj, pred_proj) get the pruned loss's, (am, lm) the
    simple loss's, each weighted by WEIGHTS."""

    def total(p, e, q, a, m):
        losses = pruned_transducer_loss(
            joint_output_fn, p, e, q, a, m, labels, logit_lengths, label_lengths, prune_range=prune_range
        )
        return jnp.sum(WEIGHTS * (losses.simple + losses.pruned)), losses

    (_, losses), grads = jax.value_and_grad(total, argnums=(0, 1, 2, 3, 4), has_aux=True)(
        params, enc_proj, pred_proj, am, lm
    )
    return losses, grads


@jax.jit
def full_value_and_grads(params, enc_proj, pred_proj, labels, logit_lengths, label_lengths):
    def total(p, e, q):
        loss = rnnt_loss_fused(joint_output_fn, p, e, q, labels, logit_lengths, label_lengths)
        return jnp.sum(WEIGHTS * loss), loss

    return jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(params, enc_proj, pred_proj)


def _assert_trees_close(got, want, rtol=1e-5, atol=3e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@jax.jit
def simple_and_materialised(am, lm, labels, logit_lengths, label_lengths):
    """Simple loss vs rnnt_loss of am[:, :, None] + lm[:, None]: values, gradients, occupancies; and their log-probs
    at 10x the scale and with blank 2."""

    def simple(a, m):
        return rnnt_loss_simple(a, m, labels, logit_lengths, label_lengths, return_occupancies=True)

    def materialised(a, m):
        logits = a[:, :, None] + m[:, None]
        blank_logp, label_logp = rnnt_log_probs(logits, labels)
        alpha = forward_variables(blank_logp, label_logp)
        beta = backward_variables(blank_logp, label_logp, logit_lengths, label_lengths)
        occupancies = arc_occupancies(alpha, beta, blank_logp, label_logp, logit_lengths, label_lengths)
        return rnnt_loss(logits, labels, logit_lengths, label_lengths), occupancies

    out = {}
    for name, fn in (("simple", simple), ("materialised", materialised)):
        total = lambda a, m, fn=fn: (jnp.sum(WEIGHTS * fn(a, m)[0]), fn(a, m))
        (_, (loss, occupancies)), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(am, lm)
        out[name] = dict(loss=loss, grads=grads, occupancies=occupancies)
    other_labels = jnp.where(labels == 2, 1, labels)  # blank 2 must not be a label
    # Logits ~ +-60: exp without the max subtraction would overflow.
    out["simple"]["log_probs"] = simple_log_probs(10 * am, 10 * lm, labels), simple_log_probs(am, lm, other_labels, 2)
    out["materialised"]["log_probs"] = (
        rnnt_log_probs(10 * am[:, :, None] + 10 * lm[:, None], labels),
        rnnt_log_probs(am[:, :, None] + lm[:, None], other_labels, 2),
    )
    return out


def test_simple_loss_equals_full_loss_of_additive_logits():
    _, _, _, am, lm, labels = _inputs()
    out = simple_and_materialised(am, lm, labels, LOGIT_LENGTHS, LABEL_LENGTHS)
    got, want = out["simple"], out["materialised"]
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    _assert_trees_close(got["grads"], want["grads"])
    assert all(float(jnp.abs(g).sum()) > 0 for g in got["grads"])
    _assert_trees_close(got["occupancies"], want["occupancies"], atol=1e-5)
    blank_occ, label_occ = got["occupancies"]  # every path takes T_b blank arcs and U_b label arcs
    np.testing.assert_allclose(jnp.sum(blank_occ, axis=(1, 2)), LOGIT_LENGTHS, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(label_occ, axis=(1, 2)), LABEL_LENGTHS, rtol=1e-5)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got["log_probs"]))
    _assert_trees_close(got["log_probs"], want["log_probs"], atol=1e-4)


def test_pruned_loss_with_full_band_equals_full_loss_and_gradients():
    params, enc_proj, pred_proj, am, lm, labels = _inputs()
    label_lengths = np.asarray([3, 2, 1, 3], np.int32)  # 3 labels in 1 frame: needs the whole band
    losses, grads = pipeline(
        params, enc_proj, pred_proj, am, lm, labels, LOGIT_LENGTHS, label_lengths, prune_range=NUM_LABELS + 1
    )
    np.testing.assert_array_equal(losses.ranges, np.broadcast_to(np.arange(NUM_LABELS + 1), losses.ranges.shape))
    assert np.all(losses.feasible)
    (_, want_loss), want_grads = full_value_and_grads(params, enc_proj, pred_proj, labels, LOGIT_LENGTHS, label_lengths)
    np.testing.assert_allclose(losses.pruned, want_loss, rtol=1e-5)
    _assert_trees_close(grads[:3], want_grads)


def _in_band_brute_force_nll(logits, labels, frames, num_labels, s_begin, prune_range):
    """-log sum over the paths whose every arc leaves a node (t, u) with s_t <= u < s_t + S."""
    scores = [
        score
        for arcs, score in path_log_probs(log_softmax(logits), labels, frames, num_labels)
        if all(s_begin[t] <= u < s_begin[t] + prune_range for t, u, _ in arcs)
    ]
    return -float(np.logaddexp.reduce(scores))


def test_pruned_loss_equals_brute_force_over_in_band_paths_and_exceeds_full_loss():
    prune_range = 3
    params, enc_proj, pred_proj, am, lm, labels = _inputs(seed=2)
    losses, _ = pipeline(
        params, enc_proj, pred_proj, am, lm, labels, LOGIT_LENGTHS, LABEL_LENGTHS, prune_range=prune_range
    )
    logits = np.tanh(enc_proj[:, :, None] + pred_proj[:, None]) @ params["kernel"] + params["bias"]
    s_begin = np.asarray(losses.ranges[..., 0])
    want = [
        _in_band_brute_force_nll(logits[b], labels[b], LOGIT_LENGTHS[b], LABEL_LENGTHS[b], s_begin[b], prune_range)
        for b in range(BATCH)
    ]
    np.testing.assert_allclose(losses.pruned, want, rtol=1e-5)
    (_, full), _ = full_value_and_grads(params, enc_proj, pred_proj, labels, LOGIT_LENGTHS, LABEL_LENGTHS)
    assert np.all(np.asarray(losses.pruned) >= np.asarray(full) - 1e-5)
    assert np.any(np.asarray(losses.pruned) > np.asarray(full) + 1e-3)  # the band really removed paths


def test_gradients_match_finite_differences_in_float64():
    params, enc_proj, pred_proj, am, lm, labels = _inputs(seed=3)
    losses, _ = pipeline(params, enc_proj, pred_proj, am, lm, labels, LOGIT_LENGTHS, LABEL_LENGTHS, prune_range=2)
    ranges = losses.ranges  # a real band, held fixed
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        args = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, enc_proj, pred_proj, am, lm))
        directions = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), args)

        def total(p, e, q, a, m):
            pruned = rnnt_loss_pruned(joint_output_fn, p, e, q, labels, LOGIT_LENGTHS, LABEL_LENGTHS, ranges)
            simple = rnnt_loss_simple(a, m, labels, LOGIT_LENGTHS, LABEL_LENGTHS)
            return jnp.sum(WEIGHTS * (pruned + simple))

        @jax.jit
        def analytic_and_numeric(args, directions):
            eps = 1e-6
            shifted = lambda sign: jax.tree.map(lambda x, d: x + sign * eps * d, args, directions)
            plus, minus = jax.vmap(lambda sign: total(*shifted(sign)))(jnp.asarray([1.0, -1.0]))  # one program
            numeric = (plus - minus) / (2 * eps)
            grads = jax.grad(total, argnums=(0, 1, 2, 3, 4))(*args)
            analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(directions)))
            return analytic, numeric

        analytic, numeric = analytic_and_numeric(args, directions)
        assert analytic.dtype == jnp.float64
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7)


def test_padding_with_garbage_never_changes_valid_outputs():
    params, enc_proj, pred_proj, am, lm, labels = _inputs(seed=4)
    base_losses, base_grads = pipeline(
        params, enc_proj, pred_proj, am, lm, labels, LOGIT_LENGTHS, LABEL_LENGTHS, prune_range=2
    )
    extra_frames, extra_labels = 3, 2
    rng = np.random.default_rng(0)

    def pad(x, extra):
        shape = (x.shape[0], extra, *x.shape[2:])
        garbage = (10.0 * rng.normal(size=shape)).astype(x.dtype) if x.dtype.kind == "f" else np.ones(shape, x.dtype)
        return np.concatenate([x, garbage], axis=1)

    losses, grads = pipeline(
        params,
        pad(enc_proj, extra_frames),
        pad(pred_proj, extra_labels),
        pad(am, extra_frames),
        pad(lm, extra_labels),
        pad(labels, extra_labels),
        LOGIT_LENGTHS,
        LABEL_LENGTHS,
        prune_range=2,
    )
    for field in ("simple", "pruned", "feasible"):
        np.testing.assert_allclose(getattr(losses, field), getattr(base_losses, field), rtol=1e-6)
    np.testing.assert_array_equal(losses.ranges[:, :FRAMES], base_losses.ranges)
    _assert_trees_close(grads[0], base_grads[0])
    for got, want in zip(grads[1:], base_grads[1:]):  # enc_proj, pred_proj, am, lm: [B, T or U+1, ...]
        valid = want.shape[1]
        np.testing.assert_allclose(got[:, :valid], want, rtol=1e-5, atol=3e-5)
        np.testing.assert_array_equal(got[:, valid:], 0.0)


def _k2_prune_ranges(node_occupancy, logit_lengths, label_lengths, prune_range):
    """NumPy transcription of k2's get_rnnt_prune_ranges + _adjust_pruning_lower_bound, S clipped to U+1."""
    batch, frames, states = node_occupancy.shape
    size = min(prune_range, states)
    out = np.zeros((batch, frames), np.int64)
    for b in range(batch):
        windows = [[node_occupancy[b, t, k : k + size].sum() for k in range(states - size + 1)] for t in range(frames)]
        s = np.argmax(windows, axis=1)
        s[logit_lengths[b] - 1 :] = max(label_lengths[b] - size + 1, 0)
        s = np.minimum.accumulate(s[::-1])[::-1]
        slack = (size - 1) * np.arange(frames) - s
        slack = np.maximum(np.minimum.accumulate(slack[::-1])[::-1], 0)
        out[b] = (size - 1) * np.arange(frames) - slack
    return out


@pytest.mark.parametrize("prune_range", [2, 3, 5, 7, 12])  # 7 = U+1: the whole lattice; 12 is clipped to it
def test_pruning_bounds_monotone_connected_within_each_example_and_as_k2(prune_range):
    frames, num_labels = 9, 6
    logit_lengths = np.asarray([9, 6, 3, 9, 2, 5], np.int32)
    label_lengths = np.asarray([6, 4, 6, 1, 0, 3], np.int32)  # incl. U_b < U, U_b + 1 < S, U_b > (S - 1) T_b
    rng = np.random.default_rng(prune_range)
    # Mass everywhere, off each example's lattice too: the bounds must still respect its lengths.
    occupancy = rng.gamma(0.3, size=(2, len(logit_lengths), frames, num_labels + 1)).astype(np.float32)
    bounds = jax.jit(pruning_bounds, static_argnames="prune_range")
    ranges = np.asarray(bounds(tuple(occupancy), logit_lengths, label_lengths, prune_range=prune_range))
    size = min(prune_range, num_labels + 1)
    assert ranges.shape == (len(logit_lengths), frames, size)
    np.testing.assert_array_equal(ranges - ranges[..., :1], np.broadcast_to(np.arange(size), ranges.shape))
    s = ranges[..., 0]
    np.testing.assert_array_equal(s, _k2_prune_ranges(occupancy.sum(0), logit_lengths, label_lengths, prune_range))
    for b, (t_b, u_b) in enumerate(zip(logit_lengths, label_lengths)):
        last_start = max(0, u_b + 1 - size)
        assert s[b, 0] == 0
        assert np.all(np.diff(s[b]) >= 0) and np.all(np.diff(s[b]) <= size - 1)
        assert np.all((s[b] >= 0) & (s[b] <= last_start))
        if u_b <= (size - 1) * t_b:  # feasible: the band holds the terminal node (T_b - 1, U_b)
            assert s[b, t_b - 1] == last_start and s[b, t_b - 1] <= u_b < s[b, t_b - 1] + size
    if size == num_labels + 1:
        np.testing.assert_array_equal(s, 0)


def _tied_gradients(params, enc_proj, pred_proj, grads):
    """Chain rule through am = enc_proj @ kernel + bias, lm = pred_proj @ kernel for `pipeline`'s gradients."""
    params_grad, enc_grad, pred_grad, am_grad, lm_grad = jax.device_get(grads)
    kernel = params["kernel"]
    params_grad = {
        "kernel": params_grad["kernel"]
        + np.einsum("btj,btv->jv", enc_proj, am_grad)
        + np.einsum("buj,buv->jv", pred_proj, lm_grad),
        "bias": params_grad["bias"] + am_grad.sum((0, 1)),
    }
    return params_grad, enc_grad + am_grad @ kernel.T, pred_grad + lm_grad @ kernel.T


def test_small_prune_range_on_a_trained_model_is_finite_and_close_above_full_loss():
    params, enc_proj, pred_proj, _, _, labels = _inputs(seed=5)
    for _ in range(100):  # gradient descent on simple + pruned (S = 3), am and lm tied to the joint's output layer
        am, lm = _tied_simple_logits(params, enc_proj, pred_proj)
        _, grads = pipeline(params, enc_proj, pred_proj, am, lm, labels, LOGIT_LENGTHS, LABEL_LENGTHS, prune_range=3)
        grads = _tied_gradients(params, enc_proj, pred_proj, grads)
        params, enc_proj, pred_proj = jax.tree.map(lambda x, g: x - 0.1 * g, (params, enc_proj, pred_proj), grads)
    am, lm = _tied_simple_logits(params, enc_proj, pred_proj)
    (_, full), _ = full_value_and_grads(params, enc_proj, pred_proj, labels, LOGIT_LENGTHS, LABEL_LENGTHS)
    full = np.asarray(full)
    assert np.all(full < 0.1), full  # peaked posteriors, as after training
    for prune_range, largest_gap in ((3, 0.05), (2, None)):
        losses, _ = pipeline(
            params, enc_proj, pred_proj, am, lm, labels, LOGIT_LENGTHS, LABEL_LENGTHS, prune_range=prune_range
        )
        pruned = np.asarray(losses.pruned)
        assert np.all(losses.feasible) and np.all(np.isfinite(pruned))
        assert np.all(pruned >= full - 1e-5), (prune_range, pruned - full)
        if largest_gap is not None:  # the band it was trained with holds almost all of the posterior
            assert np.all(pruned - full < largest_gap), (prune_range, pruned - full)


def test_infeasible_band_is_reported_not_returned():
    params, enc_proj, pred_proj, am, lm, labels = _inputs()
    label_lengths = np.asarray([3, 2, 1, 3], np.int32)  # example 3: 3 labels in 1 frame, S = 2 allows 1
    losses, grads = pipeline(params, enc_proj, pred_proj, am, lm, labels, LOGIT_LENGTHS, label_lengths, prune_range=2)
    np.testing.assert_array_equal(losses.feasible, [True, True, True, False])
    assert float(losses.pruned[3]) == 0.0 and np.all(np.isfinite(losses.pruned))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    np.testing.assert_array_equal(grads[1][3], 0.0)  # nothing flows from the dropped example's pruned loss


def test_loss_scales_follow_icefall_and_trace():
    scales = jax.jit(lambda step: pruned_loss_scales(step, 2000, 0.5))
    for step, want in [(0, (1.0, 0.1)), (1000, (0.75, 0.55)), (2000, (0.5, 1.0)), (10**6, (0.5, 1.0))]:
        np.testing.assert_allclose(scales(jnp.int32(step)), want, rtol=1e-6)
    np.testing.assert_allclose(pruned_loss_scales(None, 2000, 0.5), (0.5, 1.0))
    np.testing.assert_allclose(pruned_loss_scales(5, 0, 0.25), (0.25, 1.0))
