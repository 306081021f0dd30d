"""Pruned RNN-T loss (k2 / icefall; Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR training").

Two transducer losses share one lattice (the node/arc convention and recursions of `maestro_jax.losses.rnnt`):

  simple  logits[b, t, u] = am[b, t] + lm[b, u] (am f32[B, T, V] from the encoder side, lm f32[B, U+1, V] from the
          predictor side). Its log-normaliser over V is one batched matmul of exp(am - max) and exp(lm - max), so
          nothing of size [B, T, U+1, V] exists. Its arc occupancies say which label positions matter at each frame.
  pruned  the real joint, evaluated only at S label positions per frame, u in [s_t, s_t + S): logits [B, T, S, V].
          Outside that band every arc has log-prob LOG_ZERO, so the loss is the transducer NLL over the paths that
          stay inside the band (>= the full NLL; equal to it when S >= U+1).

The band for S = 3, U = 5 (x: node kept; blank arcs go down, label arcs right):

        u:  0  1  2  3  4  5
    t = 0   x  x  x  .  .  .     s_0 = 0   (every path starts at (0, 0))
    t = 1   x  x  x  .  .  .     s_1 = 0
    t = 2   .  x  x  x  .  .     s_2 = 1   (s_{t+1} - s_t <= S - 1 keeps the band connected by blank arcs)
    t = 3   .  .  .  x  x  x     s_3 = 3 = U + 1 - S on the last frame, so the terminal node (T-1, U) is kept

`pruning_bounds` follows the structure of k2's `get_rnnt_prune_ranges` and `_adjust_pruning_lower_bound`
(k2/python/k2/rnnt_loss.py; S >= U+1 keeps the whole lattice) with its own window score: each frame takes the window
of S label positions holding the most node occupancy (blank + label arc posteriors), where k2 scores a window by its
blank-arc occupancy minus that of the label arc entering it. Both are heuristics; the monotonicity, connectivity and
terminal-node constraints (which make the band a valid lattice) are k2's. A band can only reach the
terminal node when U_b <= (S - 1) * T_b (at most S - 1 labels per frame); `pruned_transducer_loss` reports the
examples that fail this instead of returning their ~1e30 NLL.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from maestro_jax.losses.rnnt import (
    LOG_ZERO,
    JointOutputFn,
    _math_dtype,
    arc_occupancies,
    backward_variables,
    forward_variables,
    log_likelihood,
)


@jax.custom_vjp
def _lattice_nll(blank_logp, label_logp, logit_lengths, label_lengths):
    return _lattice_nll_fwd(blank_logp, label_logp, logit_lengths, label_lengths)[0]


def _lattice_nll_fwd(blank_logp, label_logp, logit_lengths, label_lengths):
    alpha = forward_variables(blank_logp, label_logp)
    log_like = log_likelihood(alpha, blank_logp, logit_lengths, label_lengths)  # [B]
    beta = backward_variables(blank_logp, label_logp, logit_lengths, label_lengths)
    occupancies = arc_occupancies(alpha, beta, blank_logp, label_logp, logit_lengths, label_lengths)
    # An example whose terminal node is cut off has log_like ~ LOG_ZERO and meaningless (even inf) occupancies.
    reachable = (log_like > LOG_ZERO / 2)[:, None, None]
    blank_occ, label_occ = (jnp.where(reachable, occupancy, 0.0) for occupancy in occupancies)
    return (-log_like, blank_occ, label_occ), (blank_occ, label_occ)


def _lattice_nll_bwd(residuals, cotangents):
    blank_occ, label_occ = residuals
    nll_cotangent = cotangents[0][:, None, None]  # the occupancy outputs are stop-gradient
    return -blank_occ * nll_cotangent, -label_occ * nll_cotangent, None, None


_lattice_nll.defvjp(_lattice_nll_fwd, _lattice_nll_bwd)


def lattice_nll(blank_logp, label_logp, logit_lengths, label_lengths) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Transducer NLL from the lattice's arc log-probs, with the arc occupancies computed on the way.

    Args:
      blank_logp, label_logp: f32[B, T, U+1] (label_logp[:, :, U] = LOG_ZERO); LOG_ZERO marks a missing arc.
      logit_lengths: i32[B] (1 <= T_b <= T); label_lengths: i32[B] (U_b <= U).
    Returns:
      (nll f32[B], (blank_occ, label_occ) f32[B, T, U+1] stop-gradient posteriors of each arc; zero off the lattice
      and for examples whose terminal node is unreachable). d nll / d logp = -occupancy: the backward pass reuses them.
    """
    nll, blank_occ, label_occ = _lattice_nll(blank_logp, label_logp, logit_lengths, label_lengths)
    return nll, jax.lax.stop_gradient((blank_occ, label_occ))


def _padded_labels(labels: jax.Array) -> jax.Array:
    """i32[B, U] -> i32[B, U+1]: the label emitted by the label arc out of each position (0 after the last)."""
    return jnp.pad(labels, ((0, 0), (0, 1)))


def simple_log_probs(am: jax.Array, lm: jax.Array, labels: jax.Array, blank_id: int = 0):
    """Blank and label log-probs f32[B, T, U+1] of the additive joint logits am[:, :, None] + lm[:, None].

    log sum_v exp(am[t, v] + lm[u, v]) = log(exp(am[t] - am_max[t]) . exp(lm[u] - lm_max[u])) + am_max[t] + lm_max[u]:
    one [B, T, V] x [B, V, U+1] matmul (at full f32 precision), as in k2's `get_rnnt_logprobs`. Exact while
    max_v(am[t] + lm[u]) lies within ~80 nats of am_max[t] + lm_max[u] (in f32 the products underflow beyond that and
    the normaliser is underestimated; k2 shares the limit).
    """
    dtype = jnp.promote_types(_math_dtype(am), _math_dtype(lm))
    am, lm = am.astype(dtype), lm.astype(dtype)
    # The maxima cancel exactly; stop_gradient keeps them out of the backward pass.
    am_max = jax.lax.stop_gradient(jnp.max(am, axis=-1, keepdims=True))  # [B, T, 1]
    lm_max = jax.lax.stop_gradient(jnp.max(lm, axis=-1, keepdims=True))  # [B, U+1, 1]
    sums = jnp.einsum(
        "btv,buv->btu", jnp.exp(am - am_max), jnp.exp(lm - lm_max), precision=jax.lax.Precision.HIGHEST
    )  # [B, T, U+1]
    log_normaliser = jnp.log(sums + jnp.finfo(dtype).tiny) + am_max + lm_max.swapaxes(1, 2)
    blank_logp = am[:, :, None, blank_id] + lm[:, None, :, blank_id] - log_normaliser
    padded = _padded_labels(labels)  # [B, U+1]
    label_am = jnp.take_along_axis(am, padded[:, None, :], axis=2)  # [B, T, U+1]
    label_lm = jnp.take_along_axis(lm, padded[:, :, None], axis=2)[..., 0]  # [B, U+1]
    label_logp = label_am + label_lm[:, None, :] - log_normaliser
    label_logp = label_logp.at[..., -1].set(LOG_ZERO)
    return blank_logp, label_logp


def rnnt_loss_simple(
    am: jax.Array,
    lm: jax.Array,
    labels: jax.Array,
    logit_lengths: jax.Array,
    label_lengths: jax.Array,
    blank_id: int = 0,
    *,
    return_occupancies: bool = False,
):
    """Transducer NLL of the additive joint logits[b, t, u, v] = am[b, t, v] + lm[b, u, v], never materialised.

    Args:
      am: [B, T, V] encoder-side logits; lm: [B, U+1, V] predictor-side logits (start/blank position first).
      labels: i32[B, U]; logit_lengths: i32[B] (1 <= T_b <= T); label_lengths: i32[B] (U_b <= U).
      blank_id: vocabulary id of blank.
      return_occupancies: also return the arc occupancies (the input of `pruning_bounds`).
    Returns:
      nll f32[B], or (nll, (blank_occ, label_occ) f32[B, T, U+1]) with return_occupancies. Memory is
      O(B*T*U + B*(T+U)*V); gradients (exact) flow to am and lm.
    """
    blank_logp, label_logp = simple_log_probs(am, lm, labels, blank_id)
    nll, occupancies = lattice_nll(blank_logp, label_logp, logit_lengths, label_lengths)
    return (nll, occupancies) if return_occupancies else nll


def pruning_bounds(occupancies, logit_lengths: jax.Array, label_lengths: jax.Array, prune_range: int) -> jax.Array:
    """Per-frame band of S label positions holding the most occupancy, made monotone and connected (k2's ranges).

    Args:
      occupancies: (blank_occ, label_occ) f32[B, T, U+1] from `rnnt_loss_simple(..., return_occupancies=True)`;
        their sum is each node's posterior.
      logit_lengths: i32[B] T_b; label_lengths: i32[B] U_b.
      prune_range: S, label positions kept per frame (static, >= 2); clipped to U+1.
    Returns:
      ranges i32[B, T, S'] (S' = min(S, U+1)), ranges[b, t] = s_t + arange(S'), stop-gradient, with s_0 = 0,
      s_t non-decreasing, s_{t+1} - s_t <= S' - 1, 0 <= s_t <= max(0, U_b + 1 - S'), and s_t = max(0, U_b + 1 - S')
      from frame T_b - 1 on (when U_b <= (S' - 1) * T_b; otherwise the band cannot reach U_b).
    """
    if prune_range < 2:
        raise ValueError(f"prune_range must be >= 2 (one label per band step needs 2 positions); got {prune_range}.")
    node_occupancy = jax.lax.stop_gradient(occupancies[0] + occupancies[1])  # [B, T, U+1]
    frames, states = node_occupancy.shape[1:]
    size = min(prune_range, states)
    cumulative = jnp.pad(jnp.cumsum(node_occupancy, axis=2), ((0, 0), (0, 0), (1, 0)))  # [B, T, U+2]
    window_mass = cumulative[:, :, size:] - cumulative[:, :, :-size]  # [B, T, U+2-S']: mass of [s, s + S')
    s_begin = jnp.argmax(window_mass, axis=2).astype(jnp.int32)  # [B, T]
    # From the last valid frame on, end with the window that holds the terminal node (T_b - 1, U_b).
    last_start = jnp.maximum(label_lengths - size + 1, 0).astype(jnp.int32)[:, None]
    frame = jnp.arange(frames, dtype=jnp.int32)[None, :]
    s_begin = jnp.where(frame < logit_lengths[:, None] - 1, s_begin, last_start)
    # k2's _adjust_pruning_lower_bound: monotone by a reverse running min; then s_{t+1} - s_t <= S' - 1 by making
    # (S' - 1) t - s_t non-decreasing the same way; clipping that at 0 starts the band at s_0 = 0.
    s_begin = jax.lax.cummin(s_begin, axis=1, reverse=True)
    slack = jax.lax.cummin((size - 1) * frame - s_begin, axis=1, reverse=True)
    s_begin = (size - 1) * frame - jnp.maximum(slack, 0)
    return s_begin[:, :, None] + jnp.arange(size, dtype=jnp.int32)


def _band_log_probs(logits: jax.Array, labels: jax.Array, ranges: jax.Array, blank_id: int):
    """Pruned logits [B, T, S, V] -> blank and label log-probs f32[B, T, S] at the band's positions ranges[b, t]."""
    logits = logits.astype(_math_dtype(logits))
    log_normaliser = jax.nn.logsumexp(logits, axis=-1)  # [B, T, S]
    blank_logp = logits[..., blank_id] - log_normaliser
    batch = jnp.arange(labels.shape[0])[:, None, None]
    band_labels = _padded_labels(labels)[batch, ranges]  # [B, T, S]
    label_logp = jnp.take_along_axis(logits, band_labels[..., None], axis=-1)[..., 0] - log_normaliser
    label_logp = jnp.where(ranges == labels.shape[1], LOG_ZERO, label_logp)  # no label arc out of u = U
    return blank_logp, label_logp


def _unband(band: jax.Array, s_begin: jax.Array, states: int) -> jax.Array:
    """[B, T, S] band values at u = s_t + k -> [B, T, U+1] lattice values, LOG_ZERO outside the band."""
    offset = jnp.arange(states)[None, None, :] - s_begin[:, :, None]  # [B, T, U+1]
    inside = (offset >= 0) & (offset < band.shape[2])
    gathered = jnp.take_along_axis(band, jnp.clip(offset, 0, band.shape[2] - 1), axis=2)
    return jnp.where(inside, gathered, LOG_ZERO)


def rnnt_loss_pruned(
    joint_output_fn: JointOutputFn,
    joint_params,
    enc_proj: jax.Array,
    pred_proj: jax.Array,
    labels: jax.Array,
    logit_lengths: jax.Array,
    label_lengths: jax.Array,
    ranges: jax.Array,
    blank_id: int = 0,
) -> jax.Array:
    """Transducer NLL over the paths inside the band `ranges`, with the joint evaluated only there.

    logits[b, t, k] = joint_output_fn(joint_params, enc_proj[b, t] + pred_proj[b, ranges[b, t, k]]), [B, T, S, V],
    normalised over V as in the full loss; arcs out of the band have log-prob LOG_ZERO (k2's `rnnt_loss_pruned`).

    Args:
      joint_output_fn, joint_params: the joint, as for `rnnt_loss_fused`.
      enc_proj: [B, T, J]; pred_proj: [B, U+1, J]; labels: i32[B, U]; logit_lengths, label_lengths: i32[B].
      ranges: i32[B, T, S] from `pruning_bounds` (only ranges[..., 0] = s_t and the shape are read).
      blank_id: vocabulary id of blank.
    Returns:
      f32[B] NLL, >= the full loss. ~1e30 for an example whose band misses its terminal node. Gradients are exact
      (the lattice's occupancies, then autodiff through the gather and the joint); memory O(B*T*(U + S*V)).
    """
    batch = jnp.arange(enc_proj.shape[0])[:, None, None]
    pred_band = pred_proj[batch, ranges]  # [B, T, S, J]
    logits = joint_output_fn(joint_params, enc_proj[:, :, None, :] + pred_band)  # [B, T, S, V]
    blank_band, label_band = _band_log_probs(logits, labels, ranges, blank_id)
    states = pred_proj.shape[1]
    s_begin = ranges[:, :, 0]
    blank_logp, label_logp = (_unband(x, s_begin, states) for x in (blank_band, label_band))  # [B, T, U+1]
    nll, _ = lattice_nll(blank_logp, label_logp, logit_lengths, label_lengths)
    return nll


class PrunedTransducerLosses(NamedTuple):
    simple: jax.Array  # f32[B] NLL of the additive joint am + lm
    pruned: jax.Array  # f32[B] NLL of the real joint inside the band; 0 where not feasible
    feasible: jax.Array  # bool[B] U_b <= (S' - 1) * T_b: the band reaches the terminal node
    ranges: jax.Array  # i32[B, T, S'] the band, from `pruning_bounds`


def pruned_transducer_loss(
    joint_output_fn: JointOutputFn,
    joint_params,
    enc_proj: jax.Array,
    pred_proj: jax.Array,
    am: jax.Array,
    lm: jax.Array,
    labels: jax.Array,
    logit_lengths: jax.Array,
    label_lengths: jax.Array,
    *,
    prune_range: int = 5,
    blank_id: int = 0,
) -> PrunedTransducerLosses:
    """Simple loss on (am, lm), its occupancies -> `pruning_bounds` -> pruned loss of the joint, per example.

    Args: as `rnnt_loss_simple` (am [B, T, V], lm [B, U+1, V]) and `rnnt_loss_pruned` (enc_proj [B, T, J],
      pred_proj [B, U+1, J]); prune_range: S, label positions per frame.
    Returns:
      PrunedTransducerLosses(simple, pruned, feasible, ranges); weigh simple and pruned with `pruned_loss_scales`.
    """
    simple, occupancies = rnnt_loss_simple(
        am, lm, labels, logit_lengths, label_lengths, blank_id, return_occupancies=True
    )
    ranges = pruning_bounds(occupancies, logit_lengths, label_lengths, prune_range)
    pruned = rnnt_loss_pruned(
        joint_output_fn, joint_params, enc_proj, pred_proj, labels, logit_lengths, label_lengths, ranges, blank_id
    )
    feasible = label_lengths <= (ranges.shape[2] - 1) * logit_lengths
    return PrunedTransducerLosses(simple, jnp.where(feasible, pruned, 0.0), feasible, ranges)


def pruned_loss_scales(step, warmup_steps: int, simple_loss_scale: float) -> tuple[jax.Array, jax.Array]:
    """(simple_scale, pruned_scale) f32 scalars at training `step` (an int or a traced i32; None = after warm-up).

    icefall (k2-fsa/icefall egs/librispeech/ASR/zipformer/train.py, compute_loss): before warm_step the simple scale
    falls linearly from 1.0 to simple_loss_scale and the pruned scale rises from 0.1 to 1.0, then they stay there.
    """
    if step is None or warmup_steps <= 0:
        progress = jnp.ones((), jnp.float32)
    else:
        progress = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
    simple_scale = 1.0 - progress * (1.0 - simple_loss_scale)
    pruned_scale = 0.1 + 0.9 * progress
    return simple_scale, pruned_scale
