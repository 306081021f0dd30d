"""Pieces every objective shares: calling model methods, the transducer and BEST-RQ terms, fp32 reductions.

Shapes: B batch, N samples, T0 10 ms frames, T encoder frames, U tokens, J joint dim, K BEST-RQ codebook size.
"""

import jax
import jax.numpy as jnp

from maestro_jax import frontend
from maestro_jax.layers.common import frame_mask
from maestro_jax.losses.alignment import rnnt_viterbi_alignment
from maestro_jax.losses.ctc import ctc_forced_alignment, ctc_loss
from maestro_jax.losses.rnnt import rnnt_log_probs_fused, rnnt_loss_fused
from maestro_jax.models.bestrq import span_mask
from maestro_jax.objectives.transducer import TransducerLoss, pruned_transducer_nll


def call(model, variables, method: str, *args, rng=None, **kwargs):
    """model.apply(variables, *args, method=method); `rng` feeds dropout and SpecAugment when given."""
    rngs = {"dropout": rng} if rng is not None else None
    return model.apply(variables, *args, method=method, rngs=rngs, **kwargs)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over `mask` (same shape, or broadcastable), in fp32; 0 when nothing is valid."""
    mask = jnp.broadcast_to(mask, values.shape).astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def active_from(step: jax.Array, start_step: int) -> jax.Array:
    """1.0 once `step` >= start_step (curricula), else 0.0."""
    return (step >= start_step).astype(jnp.float32)


def transducer_nll(
    model,
    variables,
    h,
    h_length,
    tokens,
    token_length,
    *,
    rng=None,
    chunk_size: int = 16,
    step=None,
    loss: TransducerLoss | None = None,
    return_parts: bool = False,
):
    """RNN-T NLL of `tokens` given encoder output h f32[B, T, D] with the fused joint (no [B, T, U+1, V] kept).

    Returns (nll f32[B], valid bool[B], enc_proj f32[B, T, J], pred_proj f32[B, U+1, J]); invalid examples (no frames
    or no tokens) have nll 0. `loss` (default: `TransducerLoss()` as bound in gin) picks the full or the pruned loss;
    for "pruned", nll is its weighted simple + pruned sum at training `step` (None = after warm-up). return_parts
    appends the per-example parts {"simple", "pruned", "pruned_feasible"} ({} for "full").
    """
    enc_proj = call(model, variables, "rnnt_encoder_proj", h)
    pred_proj = call(model, variables, "rnnt_predict", tokens, token_length, train=rng is not None, rng=rng)
    valid = (h_length > 0) & (token_length > 0)
    loss = TransducerLoss() if loss is None else loss
    joint_params = model.joint_params(variables["params"])
    logit_lengths, label_lengths = jnp.maximum(h_length, 1), jnp.where(valid, token_length, 0)
    if loss.kind == "pruned":
        nll, parts = pruned_transducer_nll(
            loss, model.joint_output_fn, joint_params, enc_proj, pred_proj, tokens, logit_lengths, label_lengths, step
        )
    else:
        parts = {}
        nll = rnnt_loss_fused(
            model.joint_output_fn,
            joint_params,
            enc_proj,
            pred_proj,
            tokens,
            logit_lengths,
            label_lengths,
            chunk_size=chunk_size,
        )
    out = (jnp.where(valid, nll, 0.0), valid, enc_proj, pred_proj)
    return (*out, parts) if return_parts else out


def per_token(nll: jax.Array, valid: jax.Array, token_length: jax.Array) -> jax.Array:
    """Sum of per-example NLL over the batch's valid tokens (fp32): the loss scale is independent of U."""
    tokens = jnp.sum(jnp.where(valid, token_length, 0).astype(jnp.float32))
    return jnp.sum(jnp.where(valid, nll, 0.0).astype(jnp.float32)) / jnp.maximum(tokens, 1.0)


def durations_from_emit_frames(emit_frames: jax.Array, frame_length: jax.Array, token_length: jax.Array) -> jax.Array:
    """Frames per token, i32[B, U], from the frame at which each token is emitted on a best path.

    Token u owns the frames after token u-1's emission up to and including its own (the audio that led to it);
    the last token also owns the frames after its emission. Durations of valid tokens sum to frame_length.
    """
    num_tokens = emit_frames.shape[1]
    valid = jnp.arange(num_tokens)[None, :] < token_length[:, None]
    ends = jnp.where(valid, emit_frames + 1, 0)
    is_last = jnp.arange(num_tokens)[None, :] == (token_length - 1)[:, None]
    ends = jnp.where(is_last, frame_length[:, None], ends)
    ends = jax.lax.cummax(ends, axis=1)
    starts = jnp.pad(ends, ((0, 0), (1, 0)))[:, :-1]
    return jnp.where(valid, ends - starts, 0).astype(jnp.int32)


def best_path_emit_frames(
    model, variables, aligner: str, h, h_length, enc_proj, pred_proj, tokens, token_length, *, chunk_size: int = 16
) -> jax.Array:
    """i32[B, U] emitting frame of each token on the current model's best path (stop-gradient).

    aligner: "rnnt" (Viterbi through the transducer lattice) or "ctc" (forced alignment with the CTC head).
    """
    h, enc_proj, pred_proj = jax.lax.stop_gradient((h, enc_proj, pred_proj))
    if aligner == "rnnt":
        log_probs = rnnt_log_probs_fused(
            model.joint_output_fn,
            jax.lax.stop_gradient(model.joint_params(variables["params"])),
            enc_proj,
            pred_proj,
            tokens,
            chunk_size=chunk_size,
        )
        return rnnt_viterbi_alignment(log_probs, tokens, jnp.maximum(h_length, 1), token_length).emit_frames
    if aligner == "ctc":
        logits = jax.lax.stop_gradient(call(model, variables, "ctc_logits", h))
        return ctc_forced_alignment(logits, jnp.maximum(h_length, 1), tokens, token_length).emit_frames
    raise ValueError(f"unknown aligner {aligner!r}; set it to 'rnnt' or 'ctc' in the objective's gin file.")


def ctc_term(model, variables, h, h_length, tokens, token_length):
    """(per-token CTC loss over feasible examples, number of infeasible examples) from the CTC head."""
    logits = call(model, variables, "ctc_logits", h)
    loss, feasible = ctc_loss(logits, h_length, tokens, token_length)
    feasible = feasible & (token_length > 0)
    return per_token(loss, feasible, token_length), jnp.sum(~feasible & (token_length > 0))


def encode_paired_speech(model, variables, stream, rng_speech, rng_shared):
    """A stream's waveforms -> speech tower -> shared tower in training mode: (e_s, h f32[B, T, D], frame_length)."""
    e_s, frame_length = call(
        model, variables, "encode_speech", stream["waveform"], stream["waveform_length"], train=True, rng=rng_speech
    )
    h, _ = call(model, variables, "shared_encode", e_s, frame_length, train=True, rng=rng_shared)
    return e_s, h, frame_length


def supervised_speech_terms(model, variables, stream, rng, *, ctc_weight: float = 0.0, chunk_size: int = 16, step=None):
    """Speech -> speech tower -> shared tower -> RNN-T (+ optional CTC) on a paired stream.

    step: training step, for the pruned transducer loss's warm-up (None = after warm-up). Returns (loss, metrics, aux)
    with aux holding the speech-tower output e_s, the shared output h, their length and the joint projections, for
    objectives that add terms on top.
    """
    rng_speech, rng_shared, rng_pred = jax.random.split(rng, 3)
    e_s, h, frame_length = encode_paired_speech(model, variables, stream, rng_speech, rng_shared)
    tokens, token_length = stream["tokens"], stream["token_length"]
    nll, valid, enc_proj, pred_proj, parts = transducer_nll(
        model,
        variables,
        h,
        frame_length,
        tokens,
        token_length,
        rng=rng_pred,
        chunk_size=chunk_size,
        step=step,
        return_parts=True,
    )
    rnnt = per_token(nll, valid, token_length)
    loss = rnnt
    metrics = {"rnnt_loss": rnnt, "paired_examples": jnp.sum(valid).astype(jnp.float32)}
    if parts:  # the pruned loss: rnnt_loss above is its weighted sum
        feasible = valid & parts["pruned_feasible"]
        metrics.update(
            rnnt_simple_loss=per_token(parts["simple"], valid, token_length),
            rnnt_pruned_loss=per_token(parts["pruned"], feasible, token_length),
            rnnt_pruned_infeasible=jnp.sum(valid & ~feasible).astype(jnp.float32),
        )
    if ctc_weight > 0:
        ctc, infeasible = ctc_term(model, variables, h, frame_length, tokens, token_length)
        loss = loss + ctc_weight * ctc
        metrics.update(ctc_loss=ctc, ctc_infeasible=infeasible.astype(jnp.float32))
    aux = dict(e_s=e_s, h=h, frame_length=frame_length, enc_proj=enc_proj, pred_proj=pred_proj)
    return loss, metrics, aux


def bestrq_terms(
    model,
    variables,
    stream,
    rng,
    *,
    mask_prob: float = 0.01,
    mask_span: int = 10,
    noise_std: float = 0.1,
):
    """BEST-RQ masked prediction on untranscribed speech (Chiu et al. 2022).

    Targets come from the frozen random-projection quantizer on the clean features. Spans of encoder frames are
    masked by replacing their 10 ms input frames with Gaussian noise (std `noise_std`, on normalised features), and the
    speech and shared towers predict the masked frames' codebook labels: cross-entropy over masked valid frames.
    mask_prob: probability that a valid encoder frame starts a span; mask_span: span length in encoder frames.
    Returns (loss, metrics).
    """
    rng_mask, rng_noise, rng_speech, rng_shared = jax.random.split(rng, 4)
    features, feature_length = frontend.log_mel_spectrogram(stream["waveform"], stream["waveform_length"])
    labels, label_length = call(model, variables, "bestrq_targets", features, feature_length)
    frames = labels.shape[1]
    masked = span_mask(rng_mask, label_length, frames, mask_prob=mask_prob, span=mask_span)
    masked_input = jnp.repeat(masked, model.config.subsampling_factor, axis=1)
    masked_input = jnp.pad(masked_input, ((0, 0), (0, features.shape[1] - masked_input.shape[1])))
    normalized = frontend.normalize_features(features, feature_length)
    noise = noise_std * jax.random.normal(rng_noise, normalized.shape, normalized.dtype)
    inputs = jnp.where(masked_input[..., None], noise, normalized)
    e_s, frame_length = call(
        model, variables, "encode_speech_features", inputs, feature_length, train=True, rng=rng_speech
    )
    h, _ = call(model, variables, "shared_encode", e_s, frame_length, train=True, rng=rng_shared)
    logits = call(model, variables, "bestrq_logits", h).astype(jnp.float32)
    usable = min(logits.shape[1], frames)
    logits, labels, masked = logits[:, :usable], labels[:, :usable], masked[:, :usable]
    targets = masked & frame_mask(jnp.minimum(frame_length, label_length), usable)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    loss = masked_mean(nll, targets)
    accuracy = masked_mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), targets)
    metrics = {
        "bestrq_loss": loss,
        "bestrq_accuracy": accuracy,
        "bestrq_masked_frames": jnp.sum(targets).astype(jnp.float32),
    }
    return loss, metrics


def combine_stream_terms(
    model,
    variables,
    batch,
    rng,
    step,
    *,
    paired_fn,
    text_fn,
    paired_start_step: int,
    text_start_step: int,
    bestrq_weight: float,
    bestrq_mask_prob: float,
    bestrq_mask_span: int,
):
    """The text-injection objectives' sum over whichever streams the batch has:

        L = [step >= paired_start_step] paired_fn(paired) + [step >= text_start_step] text_fn(text)
            + bestrq_weight * L_bestrq(speech)

    paired_fn / text_fn: fn(stream, rng) -> (weighted loss, metrics). Returns (loss, metrics with "loss").
    """
    rng_paired, rng_text, rng_speech = jax.random.split(rng, 3)
    loss = jnp.zeros((), jnp.float32)
    metrics = {}
    if "paired" in batch:
        paired_loss, paired_metrics = paired_fn(batch["paired"], rng_paired)
        loss = loss + active_from(step, paired_start_step) * paired_loss
        metrics.update(paired_metrics)
    if "text" in batch:
        text_loss, text_metrics = text_fn(batch["text"], rng_text)
        loss = loss + active_from(step, text_start_step) * text_loss
        metrics.update(text_metrics)
    if "speech" in batch and bestrq_weight > 0:
        speech_loss, speech_metrics = bestrq_terms(
            model, variables, batch["speech"], rng_speech, mask_prob=bestrq_mask_prob, mask_span=bestrq_mask_span
        )
        loss = loss + bestrq_weight * speech_loss
        metrics.update(speech_metrics)
    metrics["loss"] = loss
    return loss, metrics
