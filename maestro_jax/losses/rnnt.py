"""RNN-T (transducer) negative log-likelihood, plain and fused with the joint network.

Lattice: node (t, u) means "u labels emitted before frame t is consumed". From (t, u) a blank arc goes to (t+1, u)
with log-prob blank[t, u] and a label arc goes to (t, u+1) with log-prob label[t, u] (emitting labels[u]). A path
starts at (0, 0) and ends with the blank out of (T_b - 1, U_b). Semantics equal torchaudio's
`rnnt_loss(..., reduction="none")`: log-softmax over V inside, loss = -log sum over paths.

The recursions run over anti-diagonals n = t + u with `lax.scan`, vectorised over the diagonal, on the gathered
[B, T, U+1] blank/label log-probs, never on [B, T, U+1, V]. Gradients are analytic (forward-backward occupancies)
through `jax.custom_vjp`. On CPU this ties with autodiff through the scan (both are bound by the exp over
[B, T, U+1, V]; see BENCHMARKS.md); it is kept because its backward is one fused elementwise pass instead of a scatter
into [B, T, U+1, V], and because the fused form needs the same occupancies anyway.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

# Finite "log 0": keeps autodiff and arithmetic NaN-free where -inf - -inf would appear.
LOG_ZERO = -1e30

JointOutputFn = Callable[[Any, jax.Array], jax.Array]


def _math_dtype(x: jax.Array):
    """f32 for f32/bf16/f16 inputs; f64 stays f64 (used by the finite-difference tests)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _gather_log_probs(logits: jax.Array, labels: jax.Array, blank_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [B, T', U+1, V] (any float dtype) -> (blank_logp, label_logp, log_normaliser), each f32 [B, T', U+1].

    label_logp[b, t, u] is the log-prob of labels[b, u]; its last column (u = U) has no label and is LOG_ZERO.
    """
    logits = logits.astype(_math_dtype(logits))
    log_normaliser = jax.nn.logsumexp(logits, axis=-1)
    blank_logp = logits[..., blank_id] - log_normaliser
    padded_labels = jnp.pad(labels, ((0, 0), (0, 1)))
    label_logits = jnp.take_along_axis(logits, padded_labels[:, None, :, None], axis=-1)[..., 0]
    label_logp = label_logits - log_normaliser
    label_logp = label_logp.at[..., -1].set(LOG_ZERO)
    return blank_logp, label_logp, log_normaliser


def rnnt_log_probs(logits: jax.Array, labels: jax.Array, blank_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Blank and label log-probs of a materialised joint output.

    Args:
      logits: [B, T, U+1, V] joint logits (unnormalised; any float dtype, math in f32).
      labels: i32[B, U] label ids (padding arbitrary).
      blank_id: vocabulary id of blank.
    Returns:
      (blank_logp, label_logp) f32[B, T, U+1]; label_logp[:, :, U] = LOG_ZERO (no label after the last one).
    """
    blank_logp, label_logp, _ = _gather_log_probs(logits, labels, blank_id)
    return blank_logp, label_logp


def _joint_logits(joint_output_fn: JointOutputFn, joint_params, enc_chunk: jax.Array, pred_proj: jax.Array):
    """enc_chunk [B, C, J], pred_proj [B, U+1, J] -> logits [B, C, U+1, V]."""
    return joint_output_fn(joint_params, enc_chunk[:, :, None, :] + pred_proj[:, None, :, :])


def _chunk_frames(enc_proj: jax.Array, chunk_size: int) -> jax.Array:
    """[B, T, J] -> [K, B, C, J] with T zero-padded to K * C frames."""
    batch, frames, dim = enc_proj.shape
    chunk_size = max(1, min(chunk_size, frames))
    num_chunks = -(-frames // chunk_size)
    padded = jnp.pad(enc_proj, ((0, 0), (0, num_chunks * chunk_size - frames), (0, 0)))
    return padded.reshape(batch, num_chunks, chunk_size, dim).transpose(1, 0, 2, 3)


def _unchunk_frames(chunked: jax.Array, frames: int) -> jax.Array:
    """[K, B, C, ...] -> [B, T, ...] (drops the padding frames)."""
    num_chunks, batch, chunk_size = chunked.shape[:3]
    merged = chunked.swapaxes(0, 1).reshape(batch, num_chunks * chunk_size, *chunked.shape[3:])
    return merged[:, :frames]


def rnnt_log_probs_fused(
    joint_output_fn: JointOutputFn,
    joint_params,
    enc_proj: jax.Array,
    pred_proj: jax.Array,
    labels: jax.Array,
    *,
    blank_id: int = 0,
    chunk_size: int = 16,
) -> tuple[jax.Array, jax.Array]:
    """Blank and label log-probs computed chunk by chunk over frames, never holding [B, T, U+1, V].

    Args:
      joint_output_fn: pure fn(joint_params, z f32[..., J]) -> logits [..., V] (tanh + output projection).
      joint_params: its parameters.
      enc_proj: [B, T, J] encoder output projected to the joint dim.
      pred_proj: [B, U+1, J] prediction-network output (start/blank prepended) projected to the joint dim.
      labels: i32[B, U].
      chunk_size: frames per chunk; peak memory grows as B * chunk_size * (U+1) * V.
    Returns:
      (blank_logp, label_logp) f32[B, T, U+1], as `rnnt_log_probs` of the materialised logits.
    """
    blank_logp, label_logp, _ = _fused_log_probs(
        joint_output_fn, joint_params, enc_proj, pred_proj, labels, blank_id, chunk_size
    )
    return blank_logp, label_logp


def _fused_log_probs(joint_output_fn, joint_params, enc_proj, pred_proj, labels, blank_id, chunk_size):
    def one_chunk(enc_chunk):
        logits = _joint_logits(joint_output_fn, joint_params, enc_chunk, pred_proj)
        return _gather_log_probs(logits, labels, blank_id)

    chunked = jax.lax.map(one_chunk, _chunk_frames(enc_proj, chunk_size))
    frames = enc_proj.shape[1]
    return tuple(_unchunk_frames(x, frames) for x in chunked)


def _diagonal_indices(frames: int, states: int) -> tuple[jax.Array, jax.Array]:
    """Frame index t[n, u] = n - u of lattice node (t, u) on diagonal n, and whether it lies inside [0, T)."""
    diagonal = jnp.arange(frames + states - 1)[:, None]
    frame = diagonal - jnp.arange(states)[None, :]
    return frame, (frame >= 0) & (frame < frames)


def skew(x: jax.Array, fill: float = LOG_ZERO) -> jax.Array:
    """[B, T, U+1] -> diagonal-major [T+U, B, U+1] with out[n, b, u] = x[b, n - u, u] (fill outside the lattice)."""
    frames, states = x.shape[1:]
    frame, inside = _diagonal_indices(frames, states)
    gathered = x[:, jnp.clip(frame, 0, frames - 1), jnp.arange(states)[None, :]]
    return jnp.where(inside[None], gathered, fill).transpose(1, 0, 2)


def unskew(y: jax.Array, frames: int) -> jax.Array:
    """Inverse of `skew`: [T+U, B, U+1] -> [B, T, U+1] with x[b, t, u] = y[t + u, b, u]."""
    states = y.shape[2]
    diagonal = jnp.arange(frames)[:, None] + jnp.arange(states)[None, :]
    return y[diagonal, :, jnp.arange(states)[None, :]].transpose(2, 0, 1)


def _shift_right(x: jax.Array, fill: float) -> jax.Array:
    return jnp.concatenate([jnp.full_like(x[..., :1], fill), x[..., :-1]], axis=-1)


def _shift_left(x: jax.Array, fill: float) -> jax.Array:
    return jnp.concatenate([x[..., 1:], jnp.full_like(x[..., :1], fill)], axis=-1)


def forward_variables(blank_logp: jax.Array, label_logp: jax.Array, *, viterbi: bool = False):
    """Forward variables alpha[b, t, u] = log-sum (or max, if viterbi) over partial paths (0, 0) -> (t, u).

    Args:
      blank_logp, label_logp: f32[B, T, U+1].
      viterbi: max-plus semiring instead of log-sum-exp.
    Returns:
      alpha f32[B, T, U+1], and when viterbi also came_by_label bool[B, T, U+1]: whether the best path into (t, u)
      arrives by the label arc from (t, u-1) (otherwise by the blank arc from (t-1, u)).
    """
    frames, states = blank_logp.shape[1:]
    _, inside = _diagonal_indices(frames, states)
    blank_diag, label_diag = skew(blank_logp), skew(label_logp)
    alpha_first = jnp.full(blank_diag.shape[1:], LOG_ZERO, blank_diag.dtype).at[:, 0].set(0.0)

    def step(alpha_prev, xs):
        blank_prev, label_prev, inside_now = xs
        by_blank = alpha_prev + blank_prev
        by_label = _shift_right(alpha_prev + label_prev, LOG_ZERO)
        if viterbi:
            came_by_label = by_label > by_blank
            alpha = jnp.where(came_by_label, by_label, by_blank)
        else:
            came_by_label = None
            alpha = jnp.logaddexp(by_blank, by_label)
        alpha = jnp.where(inside_now[None], alpha, LOG_ZERO)
        return alpha, (alpha, came_by_label)

    _, (alphas, came_by_label) = jax.lax.scan(step, alpha_first, (blank_diag[:-1], label_diag[:-1], inside[1:]))
    alphas = jnp.concatenate([alpha_first[None], alphas], axis=0)
    alpha = unskew(alphas, frames)
    if not viterbi:
        return alpha
    came_by_label = jnp.concatenate([jnp.zeros_like(came_by_label[:1]), came_by_label], axis=0)
    return alpha, unskew(came_by_label, frames)


def _terminal_mask(frames: int, states: int, logit_lengths: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """bool[B, T, U+1]: the last node (T_b - 1, U_b) of each example."""
    frame = jnp.arange(frames)[None, :, None]
    state = jnp.arange(states)[None, None, :]
    return (frame == logit_lengths[:, None, None] - 1) & (state == label_lengths[:, None, None])


def _valid_nodes(frames: int, states: int, logit_lengths: jax.Array, label_lengths: jax.Array) -> jax.Array:
    frame = jnp.arange(frames)[None, :, None]
    state = jnp.arange(states)[None, None, :]
    return (frame < logit_lengths[:, None, None]) & (state <= label_lengths[:, None, None])


def backward_variables(blank_logp, label_logp, logit_lengths, label_lengths) -> jax.Array:
    """beta[b, t, u] = log-sum over path completions from (t, u), final blank included; LOG_ZERO off the lattice.

    Args:
      blank_logp, label_logp: f32[B, T, U+1]; logit_lengths i32[B] (T_b >= 1); label_lengths i32[B] (U_b <= U).
    Returns:
      beta f32[B, T, U+1]; beta[b, 0, 0] is the example's log-likelihood.
    """
    frames, states = blank_logp.shape[1:]
    terminal = skew(_terminal_mask(frames, states, logit_lengths, label_lengths), fill=False)
    valid = skew(_valid_nodes(frames, states, logit_lengths, label_lengths), fill=False)
    blank_diag, label_diag = skew(blank_logp), skew(label_logp)

    def step(beta_next, xs):
        blank_now, label_now, valid_now, terminal_now = xs
        by_blank = blank_now + beta_next
        by_label = label_now + _shift_left(beta_next, LOG_ZERO)
        beta = jnp.logaddexp(by_blank, by_label)
        beta = jnp.where(terminal_now, blank_now, jnp.where(valid_now, beta, LOG_ZERO))
        return beta, beta

    beta_outside = jnp.full(blank_diag.shape[1:], LOG_ZERO, blank_diag.dtype)
    _, betas = jax.lax.scan(step, beta_outside, (blank_diag, label_diag, valid, terminal), reverse=True)
    return unskew(betas, frames)


def log_likelihood(alpha, blank_logp, logit_lengths, label_lengths) -> jax.Array:
    """log P(labels | x) f32[B] = alpha + final blank at the terminal node (T_b - 1, U_b)."""
    batch = jnp.arange(alpha.shape[0])
    last_frame = jnp.maximum(logit_lengths - 1, 0)
    return alpha[batch, last_frame, label_lengths] + blank_logp[batch, last_frame, label_lengths]


def arc_occupancies(alpha, beta, blank_logp, label_logp, logit_lengths, label_lengths):
    """Posterior probability that the path takes each arc, f32[B, T, U+1] for blank and label arcs.

    Blank occupancy at the terminal node is the final blank (probability 1). Zero off each example's lattice.
    """
    log_z = beta[:, 0, 0][:, None, None]
    frames, states = blank_logp.shape[1:]
    beta_after_blank = jnp.concatenate([beta[:, 1:], jnp.full_like(beta[:, :1], LOG_ZERO)], axis=1)
    beta_after_blank = jnp.where(_terminal_mask(frames, states, logit_lengths, label_lengths), 0.0, beta_after_blank)
    beta_after_label = _shift_left(beta, LOG_ZERO)
    blank_occupancy = jnp.exp(alpha + blank_logp + beta_after_blank - log_z)
    label_occupancy = jnp.exp(alpha + label_logp + beta_after_label - log_z)
    return blank_occupancy, label_occupancy


def _occupancies(blank_logp, label_logp, alpha, logit_lengths, label_lengths, loss_cotangent):
    """Arc occupancies scaled by each example's loss cotangent, f32[B, T, U+1] each."""
    beta = backward_variables(blank_logp, label_logp, logit_lengths, label_lengths)
    occupancies = arc_occupancies(alpha, beta, blank_logp, label_logp, logit_lengths, label_lengths)
    return tuple(occupancy * loss_cotangent[:, None, None] for occupancy in occupancies)


def _logits_gradient(logits, log_normaliser, blank_occupancy, label_occupancy, labels, blank_id):
    """dL/dlogits [B, T', U+1, V] = softmax * node occupancy - one-hot blank/label occupancies."""
    vocab = jnp.arange(logits.shape[-1])
    padded_labels = jnp.pad(labels, ((0, 0), (0, 1)))[:, None, :, None]
    softmax = jnp.exp(logits.astype(log_normaliser.dtype) - log_normaliser[..., None])
    node = (blank_occupancy + label_occupancy)[..., None]
    grad = (
        softmax * node
        - jnp.where(vocab == blank_id, blank_occupancy[..., None], 0.0)
        - jnp.where(vocab == padded_labels, label_occupancy[..., None], 0.0)
    )
    return grad.astype(logits.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _rnnt_loss(logits, labels, logit_lengths, label_lengths, blank_id):
    return _rnnt_loss_fwd(logits, labels, logit_lengths, label_lengths, blank_id)[0]


def _rnnt_loss_fwd(logits, labels, logit_lengths, label_lengths, blank_id):
    blank_logp, label_logp, log_normaliser = _gather_log_probs(logits, labels, blank_id)
    alpha = forward_variables(blank_logp, label_logp)
    loss = -log_likelihood(alpha, blank_logp, logit_lengths, label_lengths)
    residuals = (logits, log_normaliser, blank_logp, label_logp, alpha, labels, logit_lengths, label_lengths)
    return loss, residuals


def _rnnt_loss_bwd(blank_id, residuals, loss_cotangent):
    logits, log_normaliser, blank_logp, label_logp, alpha, labels, logit_lengths, label_lengths = residuals
    blank_occ, label_occ = _occupancies(blank_logp, label_logp, alpha, logit_lengths, label_lengths, loss_cotangent)
    grad = _logits_gradient(logits, log_normaliser, blank_occ, label_occ, labels, blank_id)
    return grad, None, None, None


_rnnt_loss.defvjp(_rnnt_loss_fwd, _rnnt_loss_bwd)


def rnnt_loss(
    logits: jax.Array, labels: jax.Array, logit_lengths: jax.Array, label_lengths: jax.Array, blank_id: int = 0
) -> jax.Array:
    """Transducer negative log-likelihood per example (torchaudio `rnnt_loss(reduction="none")` semantics).

    Args:
      logits: [B, T, U+1, V] unnormalised joint output (f32 or bf16; math in f32). Positions past an example's
        lengths are ignored and get zero gradient.
      labels: i32[B, U] label ids, padding arbitrary.
      logit_lengths: i32[B] valid frames T_b, 1 <= T_b <= T.
      label_lengths: i32[B] valid labels U_b, 0 <= U_b <= U.
      blank_id: vocabulary id of blank.
    Returns:
      f32[B] -log P(labels | logits), in nats. Gradient is exact (forward-backward), in logits' dtype.
    """
    return _rnnt_loss(logits, labels, logit_lengths, label_lengths, blank_id)


@partial(jax.custom_vjp, nondiff_argnums=(0, 7, 8))
def _rnnt_loss_fused(
    joint_output_fn, joint_params, enc_proj, pred_proj, labels, logit_lengths, label_lengths, blank_id, chunk_size
):
    return _rnnt_loss_fused_fwd(
        joint_output_fn, joint_params, enc_proj, pred_proj, labels, logit_lengths, label_lengths, blank_id, chunk_size
    )[0]


def _rnnt_loss_fused_fwd(
    joint_output_fn, joint_params, enc_proj, pred_proj, labels, logit_lengths, label_lengths, blank_id, chunk_size
):
    blank_logp, label_logp, log_normaliser = _fused_log_probs(
        joint_output_fn, joint_params, enc_proj, pred_proj, labels, blank_id, chunk_size
    )
    alpha = forward_variables(blank_logp, label_logp)
    loss = -log_likelihood(alpha, blank_logp, logit_lengths, label_lengths)
    residuals = (
        joint_params,
        enc_proj,
        pred_proj,
        log_normaliser,
        blank_logp,
        label_logp,
        alpha,
        labels,
        logit_lengths,
        label_lengths,
    )
    return loss, residuals


def _rnnt_loss_fused_bwd(joint_output_fn, blank_id, chunk_size, residuals, loss_cotangent):
    (
        joint_params,
        enc_proj,
        pred_proj,
        log_normaliser,
        blank_logp,
        label_logp,
        alpha,
        labels,
        logit_lengths,
        label_lengths,
    ) = residuals
    blank_occ, label_occ = _occupancies(blank_logp, label_logp, alpha, logit_lengths, label_lengths, loss_cotangent)
    enc_chunks = _chunk_frames(enc_proj, chunk_size)
    frames, chunk = enc_proj.shape[1], enc_chunks.shape[2]

    def to_chunks(x):  # [B, T, U+1] -> [K, B, C, U+1], zero occupancy on padding frames
        padded = jnp.pad(x, ((0, 0), (0, enc_chunks.shape[0] * chunk - frames), (0, 0)))
        return padded.reshape(x.shape[0], -1, chunk, x.shape[2]).swapaxes(0, 1)

    def one_chunk(grads, xs):
        params_grad, pred_grad = grads
        enc_chunk, log_normaliser_chunk, blank_occ_chunk, label_occ_chunk = xs
        logits, joint_vjp = jax.vjp(partial(_joint_logits, joint_output_fn), joint_params, enc_chunk, pred_proj)
        logits_grad = _logits_gradient(logits, log_normaliser_chunk, blank_occ_chunk, label_occ_chunk, labels, blank_id)
        params_chunk_grad, enc_chunk_grad, pred_chunk_grad = joint_vjp(logits_grad)
        params_grad = jax.tree.map(lambda acc, g: acc + g.astype(acc.dtype), params_grad, params_chunk_grad)
        return (params_grad, pred_grad + pred_chunk_grad.astype(pred_grad.dtype)), enc_chunk_grad

    # Accumulate across chunks in (at least) f32 even for bf16 parameters.
    accumulator = lambda x: jnp.zeros(jnp.shape(x), _math_dtype(jnp.asarray(x)))
    zero_grads = (jax.tree.map(accumulator, joint_params), accumulator(pred_proj))
    (params_grad, pred_grad), enc_grad_chunks = jax.lax.scan(
        one_chunk, zero_grads, (enc_chunks, to_chunks(log_normaliser), to_chunks(blank_occ), to_chunks(label_occ))
    )
    enc_grad = _unchunk_frames(enc_grad_chunks, frames)
    params_grad = jax.tree.map(lambda g, p: g.astype(jnp.result_type(p)), params_grad, joint_params)
    return params_grad, enc_grad, pred_grad.astype(pred_proj.dtype), None, None, None


_rnnt_loss_fused.defvjp(_rnnt_loss_fused_fwd, _rnnt_loss_fused_bwd)


def rnnt_loss_fused(
    joint_output_fn: JointOutputFn,
    joint_params,
    enc_proj: jax.Array,
    pred_proj: jax.Array,
    labels: jax.Array,
    logit_lengths: jax.Array,
    label_lengths: jax.Array,
    *,
    blank_id: int = 0,
    chunk_size: int = 16,
) -> jax.Array:
    """Transducer NLL with the joint network fused in: equals `rnnt_loss` on the materialised logits.

    logits[b, t, u] = joint_output_fn(joint_params, enc_proj[b, t] + pred_proj[b, u]) are computed `chunk_size`
    frames at a time, in the forward pass for the blank/label log-probs and again in the backward pass, where the
    analytic dL/dlogits is pushed through joint_output_fn with jax.vjp. Peak memory is O(B*T*U + B*chunk*U*V).

    Args:
      joint_output_fn: pure fn(joint_params, z [..., J]) -> logits [..., V] (tanh then output projection).
      joint_params: pytree of its parameters (gradients returned for every leaf).
      enc_proj: [B, T, J] projected encoder output.
      pred_proj: [B, U+1, J] projected prediction-network output, start/blank prepended.
      labels: i32[B, U]; logit_lengths: i32[B] (1 <= T_b <= T); label_lengths: i32[B] (U_b <= U).
      blank_id: vocabulary id of blank.
      chunk_size: frames per chunk (static).
    Returns:
      f32[B] negative log-likelihood in nats.
    """
    return _rnnt_loss_fused(
        joint_output_fn, joint_params, enc_proj, pred_proj, labels, logit_lengths, label_lengths, blank_id, chunk_size
    )
