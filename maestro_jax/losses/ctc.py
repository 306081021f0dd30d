"""CTC loss (optax with the lengths API and feasibility masking) and CTC forced alignment (Viterbi)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from maestro_jax.losses.alignment import token_of_state
from maestro_jax.losses.rnnt import LOG_ZERO


def _paddings(lengths: jax.Array, size: int) -> jax.Array:
    """f32[B, size], 1.0 at padded positions (optax's padding convention)."""
    return (jnp.arange(size)[None, :] >= lengths[:, None]).astype(jnp.float32)


def ctc_min_frames(labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """i32[B] fewest frames that can carry the labels: U_b plus one blank between each pair of equal neighbours."""
    valid_pair = jnp.arange(1, labels.shape[1])[None, :] < label_lengths[:, None]
    repeats = jnp.sum((labels[:, 1:] == labels[:, :-1]) & valid_pair, axis=1)
    return label_lengths + repeats


def ctc_loss(
    logits: jax.Array, logit_lengths: jax.Array, labels: jax.Array, label_lengths: jax.Array, blank_id: int = 0
) -> tuple[jax.Array, jax.Array]:
    """CTC negative log-likelihood per example, with infeasible examples masked out.

    Args:
      logits: [B, T, V] unnormalised (any float dtype; math in f32).
      logit_lengths: i32[B] valid frames T_b.
      labels: i32[B, U] label ids, padding arbitrary.
      label_lengths: i32[B] valid labels U_b.
      blank_id: blank's vocabulary id.
    Returns:
      (loss f32[B] in nats, valid bool[B]). An example whose T_b is below U_b plus its repeated neighbours cannot be
      aligned: it is marked invalid and its loss (and gradient) is 0, so averaging over `valid` never sees optax's
      1e5-sized placeholder. Count them with `(~valid).sum()`.
    """
    loss = optax.ctc_loss(
        logits.astype(jnp.float32),
        _paddings(logit_lengths, logits.shape[1]),
        labels,
        _paddings(label_lengths, labels.shape[1]),
        blank_id=blank_id,
    )
    valid = logit_lengths >= ctc_min_frames(labels, label_lengths)
    return jnp.where(valid, loss, 0.0), valid


class CtcAlignment(NamedTuple):
    frame_labels: jax.Array  # i32[B, T] vocabulary id emitted at each frame (blank_id for blank and padded frames)
    durations: jax.Array  # i32[B, U] frames owned by each token (convention in maestro_jax/losses/alignment.py)
    emit_frames: jax.Array  # i32[B, U] first frame of each token's emission (0 at padding)
    score: jax.Array  # f32[B] log-prob of the best path; about -1e30 when the example cannot be aligned


def _extended_labels(labels: jax.Array, blank_id: int) -> jax.Array:
    """[B, U] -> [B, 2U+1]: blank, l0, blank, l1, ..., blank."""
    batch, num_labels = labels.shape
    interleaved = jnp.stack([jnp.full_like(labels, blank_id), labels], axis=2).reshape(batch, 2 * num_labels)
    return jnp.concatenate([interleaved, jnp.full((batch, 1), blank_id, labels.dtype)], axis=1)


def ctc_forced_alignment(
    logits: jax.Array, logit_lengths: jax.Array, labels: jax.Array, label_lengths: jax.Array, blank_id: int = 0
) -> CtcAlignment:
    """Best CTC path through blank-interleaved labels (Viterbi over the 2U+1 states, then backtracking).

    Args: as `ctc_loss`.
    Returns:
      CtcAlignment. Token u owns frames [emit_frames[u], emit_frames[u] + durations[u]) except that token 0 also owns
      the leading blank frames, i.e. its span starts at frame 0.
    """
    batch, frames, _ = logits.shape
    num_labels = labels.shape[1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    extended = _extended_labels(labels, blank_id)
    states = extended.shape[1]
    emit = jnp.take_along_axis(log_probs, jnp.broadcast_to(extended[:, None, :], (batch, frames, states)), axis=2)
    state_index = jnp.arange(states)[None, :]
    can_skip = (state_index % 2 == 1) & (state_index >= 2)
    can_skip = can_skip & (extended != jnp.pad(extended, ((0, 0), (2, 0)), constant_values=blank_id)[:, :-2])

    def shifted(x, by):
        return jnp.pad(x, ((0, 0), (by, 0)), constant_values=LOG_ZERO)[:, :states]

    def step(delta, xs):
        emit_t, frame = xs
        candidates = jnp.stack([delta, shifted(delta, 1), jnp.where(can_skip, shifted(delta, 2), LOG_ZERO)])
        back = jnp.argmax(candidates, axis=0).astype(jnp.int32)
        updated = jnp.max(candidates, axis=0) + emit_t
        active = (frame < logit_lengths)[:, None]
        return jnp.where(active, updated, delta), back

    delta_first = jnp.where(state_index < 2, emit[:, 0], LOG_ZERO)
    frame_index = jnp.arange(1, frames)
    delta, backpointers = jax.lax.scan(step, delta_first, (emit[:, 1:].swapaxes(0, 1), frame_index))
    backpointers = jnp.concatenate([jnp.zeros_like(backpointers[:1]), backpointers], axis=0)

    batch_index = jnp.arange(batch)
    end_blank, end_label = 2 * label_lengths, jnp.maximum(2 * label_lengths - 1, 0)
    blank_score, label_score = delta[batch_index, end_blank], delta[batch_index, end_label]
    ends_on_label = (label_lengths > 0) & (label_score > blank_score)
    final_state = jnp.where(ends_on_label, end_label, end_blank)
    score = jnp.maximum(blank_score, jnp.where(label_lengths > 0, label_score, LOG_ZERO))

    def back_step(state, xs):
        back_t, frame = xs
        inside = frame < logit_lengths
        frame_state = jnp.where(inside, state, -1)
        previous = state - back_t[batch_index, state]
        return jnp.where(inside, previous, state), frame_state

    _, frame_states = jax.lax.scan(back_step, final_state, (backpointers, jnp.arange(frames)), reverse=True)
    frame_states = frame_states.T  # [B, T], -1 on padded frames
    inside = frame_states >= 0
    on_label = inside & (frame_states % 2 == 1)
    frame_labels = jnp.where(on_label, extended[batch_index[:, None], jnp.maximum(frame_states, 0)], blank_id)

    labels_emitted = (frame_states + 1) // 2
    owner = jax.nn.one_hot(token_of_state(labels_emitted), num_labels, dtype=jnp.int32)
    durations = jnp.sum(owner * (inside & (label_lengths > 0)[:, None])[..., None], axis=1)
    token_state = 2 * jnp.arange(num_labels) + 1
    first_hit = frame_states[:, :, None] == token_state[None, None, :]
    emit_frames = jnp.min(jnp.where(first_hit, jnp.arange(frames)[None, :, None], frames), axis=1)
    emit_frames = jnp.where(emit_frames == frames, 0, emit_frames)
    return CtcAlignment(frame_labels, durations, emit_frames.astype(jnp.int32), score)
