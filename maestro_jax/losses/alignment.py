"""RNN-T alignments: best path (Viterbi), label-arc posteriors, and reduction of frames to token rate.

Every function here takes either materialised logits [B, T, U+1, V] or the pair (blank_logp, label_logp) f32[B, T, U+1]
from `rnnt_log_probs` / `rnnt_log_probs_fused` (the latter never materialises [B, T, U+1, V]).

Duration convention (shared with `ctc_forced_alignment`): a frame belongs to the last token emitted at or before it;
frames before the first emission belong to the first token. So durations[b, u] counts frame t whose path state has
u+1 labels emitted when frame t is consumed (and, for u = 0, also the frames with none emitted); durations sum to T_b
whenever U_b >= 1 (all zero when U_b = 0). emit_frames[b, u] is the frame at which label u is emitted.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from maestro_jax.losses.rnnt import (
    arc_occupancies,
    backward_variables,
    forward_variables,
    log_likelihood,
    rnnt_log_probs,
)


class RnntAlignment(NamedTuple):
    durations: jax.Array  # i32[B, U] frames owned by each token (convention in the module docstring)
    score: jax.Array  # f32[B] log-prob of the best path (final blank included)
    emit_frames: jax.Array  # i32[B, U] frame at which each label is emitted (0 at padding)


def _as_log_probs(logits_or_log_probs, labels, blank_id):
    if isinstance(logits_or_log_probs, tuple | list):
        blank_logp, label_logp = logits_or_log_probs
        return blank_logp.astype(jnp.float32), label_logp.astype(jnp.float32)
    return rnnt_log_probs(logits_or_log_probs, labels, blank_id)


def token_of_state(labels_emitted: jax.Array) -> jax.Array:
    """0-based index of the token owning a frame consumed after `labels_emitted` emissions (duration convention)."""
    return jnp.maximum(labels_emitted - 1, 0)


def rnnt_viterbi_alignment(
    logits_or_log_probs, labels: jax.Array, logit_lengths: jax.Array, label_lengths: jax.Array, *, blank_id: int = 0
) -> RnntAlignment:
    """Best RNN-T path by max-plus recursion over anti-diagonals, then backtracking.

    Args:
      logits_or_log_probs: logits [B, T, U+1, V], or the pair (blank_logp, label_logp) f32[B, T, U+1].
      labels: i32[B, U] (used to gather label log-probs from logits, and for U).
      logit_lengths: i32[B] valid frames T_b >= 1; label_lengths: i32[B] valid labels U_b.
      blank_id: blank's vocabulary id.
    Returns:
      RnntAlignment(durations i32[B, U], score f32[B], emit_frames i32[B, U]).
    """
    blank_logp, label_logp = _as_log_probs(logits_or_log_probs, labels, blank_id)
    batch, frames, states = blank_logp.shape
    num_labels = states - 1
    alpha, came_by_label = forward_variables(blank_logp, label_logp, viterbi=True)
    score = log_likelihood(alpha, blank_logp, logit_lengths, label_lengths)
    batch_index = jnp.arange(batch)
    has_labels = label_lengths > 0

    def owned(state, counts):
        return jax.nn.one_hot(token_of_state(state), num_labels, dtype=jnp.int32) * counts[:, None]

    def step(carry, _):
        frame, state, durations, emit_frames = carry
        moving = (frame > 0) | (state > 0)
        by_label = came_by_label[batch_index, frame, state] & moving
        by_blank = ~by_label & moving
        emitted = jax.nn.one_hot(state - 1, num_labels, dtype=jnp.int32) * by_label[:, None]
        emit_frames = emit_frames + emitted * frame[:, None]
        # The blank arc (frame-1, state) -> (frame, state) consumes frame-1 in `state`.
        durations = durations + owned(state, (by_blank & has_labels).astype(jnp.int32))
        return (frame - by_blank, state - by_label, durations, emit_frames), None

    last_frame = jnp.maximum(logit_lengths - 1, 0)
    durations = owned(label_lengths, has_labels.astype(jnp.int32))  # the final blank consumes the last frame
    emit_frames = jnp.zeros((batch, num_labels), jnp.int32)
    start = (last_frame, label_lengths.astype(jnp.int32), durations, emit_frames)
    (_, _, durations, emit_frames), _ = jax.lax.scan(step, start, None, length=frames + num_labels - 1)
    return RnntAlignment(durations, score, emit_frames)


def rnnt_arc_posteriors(
    logits_or_log_probs, labels: jax.Array, logit_lengths: jax.Array, label_lengths: jax.Array, *, blank_id: int = 0
) -> jax.Array:
    """Occupation probability of each label arc from forward-backward.

    Args: as `rnnt_viterbi_alignment`.
    Returns:
      f32[B, T, U]: posterior[b, t, u] = P(label u (0-based) is emitted at frame t | x, labels). For u < U_b it sums
      to 1 over t; zero for padded frames and labels.
    """
    blank_logp, label_logp = _as_log_probs(logits_or_log_probs, labels, blank_id)
    alpha = forward_variables(blank_logp, label_logp)
    beta = backward_variables(blank_logp, label_logp, logit_lengths, label_lengths)
    _, label_occupancy = arc_occupancies(alpha, beta, blank_logp, label_logp, logit_lengths, label_lengths)
    return label_occupancy[:, :, :-1]


def reduce_to_token_rate(x: jax.Array, emit_frames: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """Keep one frame vector per emitted token.

    Args:
      x: [B, T, D] frame-rate features (e.g. encoder output).
      emit_frames: i32[B, U] emitting frame per token, from `rnnt_viterbi_alignment` or `ctc_forced_alignment`.
      label_lengths: i32[B] valid tokens U_b.
    Returns:
      [B, U, D] with out[b, u] = x[b, emit_frames[b, u]] for u < U_b and zeros at padded tokens.
    """
    frames = x.shape[1]
    gathered = jnp.take_along_axis(x, jnp.clip(emit_frames, 0, frames - 1)[..., None], axis=1)
    valid = jnp.arange(emit_frames.shape[1])[None, :] < label_lengths[:, None]
    return jnp.where(valid[..., None], gathered, jnp.zeros((), x.dtype))
