"""Pieces every objective shares: the bound model, the transducer, CTC and BEST-RQ terms, the settings MAESTRO and
ASTRA share (`TextInjection`), fp32 reductions (batch-level ones through `reductions`, which keeps gradient
accumulation exact). Every `*_terms` helper returns `Terms`.

Shapes: B batch, N samples, T0 10 ms frames, T encoder frames, U tokens, J joint dim, K BEST-RQ codebook size.
"""

import dataclasses
from typing import NamedTuple, TypeVar

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from maestro_jax import frontend
from maestro_jax.layers.common import frame_mask
from maestro_jax.losses.alignment import rnnt_viterbi_alignment
from maestro_jax.losses.ctc import ctc_forced_alignment, ctc_loss
from maestro_jax.losses.rnnt import rnnt_log_probs_fused, rnnt_loss_fused
from maestro_jax.models.bestrq import span_mask
from maestro_jax.objectives.reductions import batch_mean, batch_total
from maestro_jax.objectives.transducer import TransducerLoss, pruned_transducer_nll

Model = TypeVar("Model", bound=nn.Module)


def bound(model: Model, variables, rng: jax.Array | None = None) -> Model:
    """`model` bound to `variables`, for direct method calls: `bound(model, variables, rng).encode_speech(...)`.

    rng feeds the "dropout" stream (dropout, SpecAugment) of the calls made through this binding; None = none.
    Bind once per random call, each with its own split of the step's key: a binding derives the draws of its second
    call from a call counter, so sharing one would change every draw but the first.
    """
    return model.bind(variables, rngs={"dropout": rng} if rng is not None else None)


class PairedEncoding(NamedTuple):
    """The paired speech terms' intermediate tensors, for terms built on top (modality matching, consistency)."""

    e_s: jax.Array  # f32[B, T, D] speech-tower output
    h: jax.Array  # f32[B, T, D] shared-tower output
    frame_length: jax.Array  # i32[B]
    enc_proj: jax.Array  # f32[B, T, J]
    pred_proj: jax.Array  # f32[B, U+1, J]


class Terms(NamedTuple):
    """What every `*_terms` helper returns.

    loss: f32[] in fp32, the helper's parts already weighted by the weights it was given (the caller weights the
    whole). metrics: f32[] scalars to log. encoding: the paired speech tensors, from `supervised_speech_terms` only.
    """

    loss: jax.Array
    metrics: dict[str, jax.Array]
    encoding: PairedEncoding | None = None


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BestRQMasking:
    """How BEST-RQ masks untranscribed speech, in the bestrq objective and in MAESTRO's and ASTRA's speech stream.

    mask_prob: probability that a valid encoder frame starts a masked span. mask_span: span length in encoder frames.
    noise_std: std of the Gaussian noise written into the masked spans' 10 ms input frames (normalised features).
    """

    mask_prob: float = 0.01
    mask_span: int = 10
    noise_std: float = 0.1


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TextInjection:
    """What the text-injection objectives (MAESTRO, ASTRA) share; each keeps its own terms and their weights.

        L = [step >= paired_start_step] L_paired + [step >= text_start_step] L_text + bestrq_weight L_bestrq

    paired_start_step / text_start_step: training steps at which the paired and the text-only terms switch on
      (curriculum; BEST-RQ on the speech-only stream is on from step 0).
    bestrq_weight: weight of BEST-RQ on the speech-only stream (0: not computed).
    bestrq_masking: its masking; None = `BestRQMasking()` as bound in gin (shared with the bestrq objective).
    ctc_weight: auxiliary CTC on the paired stream's shared-tower output, relative to the paired RNN-T term
      (rnnt_weight * (L_rnnt + ctc_weight L_ctc)); > 0 also trains the CTC head that aligner="ctc" reads.
    internal_lm_weight: weight of `internal_lm_terms` on the unspoken-text stream, switched on with the text terms
      (L_text above then includes it; 0: not computed).
    The transducer loss and its chunk size are `TransducerLoss`'s, as for every objective.
    """

    paired_start_step: int = 0
    text_start_step: int = 0
    bestrq_weight: float = 1.0
    bestrq_masking: BestRQMasking | None = None
    ctc_weight: float = 0.0
    internal_lm_weight: float = 0.0


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over `mask` (same shape, or broadcastable), in fp32; 0 when nothing is valid. A batch-level
    mean (`reductions.batch_mean`): exact under gradient accumulation."""
    mask = jnp.broadcast_to(mask, values.shape).astype(jnp.float32)
    return batch_mean(jnp.sum(values.astype(jnp.float32) * mask), jnp.sum(mask))


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
    step=None,
    loss: TransducerLoss | None = None,
    return_parts: bool = False,
):
    """RNN-T NLL of `tokens` given encoder output h f32[B, T, D] with the fused joint (no [B, T, U+1, V] kept).

    Returns (nll f32[B], valid bool[B], enc_proj f32[B, T, J], pred_proj f32[B, U+1, J]); invalid examples (no frames
    or no tokens) have nll 0. `loss` (default: `TransducerLoss()` as bound in gin) picks the full or the pruned loss
    and the full loss's chunk size; for "pruned", nll is its weighted simple + pruned sum at training `step` (None =
    after warm-up). return_parts appends the per-example parts {"simple", "pruned", "pruned_feasible"} ({} for "full").
    """
    enc_proj = bound(model, variables).rnnt_encoder_proj(h)
    pred_proj = bound(model, variables, rng).rnnt_predict(tokens, token_length, train=rng is not None)
    nll, valid, parts = joint_nll(
        model, variables, enc_proj, pred_proj, h_length, tokens, token_length, step=step, loss=loss
    )
    out = (nll, valid, enc_proj, pred_proj)
    return (*out, parts) if return_parts else out


def joint_nll(
    model,
    variables,
    enc_proj,
    pred_proj,
    h_length,
    tokens,
    token_length,
    *,
    step=None,
    loss: TransducerLoss | None = None,
):
    """The joint network and transducer loss of `transducer_nll` on given projections enc_proj f32[B, T, J] and
    pred_proj f32[B, U+1, J]: (nll f32[B], valid bool[B], parts) with nll 0 at invalid examples, parts as there."""
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
            chunk_size=loss.chunk_size,
        )
    return jnp.where(valid, nll, 0.0), valid, parts


def per_token(nll: jax.Array, valid: jax.Array, token_length: jax.Array) -> jax.Array:
    """Sum of per-example NLL over the batch's valid tokens (fp32): the loss scale is independent of U. A batch-level
    mean (`reductions.batch_mean`): exact under gradient accumulation."""
    tokens = jnp.sum(jnp.where(valid, token_length, 0).astype(jnp.float32))
    return batch_mean(jnp.sum(jnp.where(valid, nll, 0.0).astype(jnp.float32)), tokens)


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


def lattice_log_probs(model, variables, encoding: PairedEncoding, tokens, *, chunk_size: int):
    """Stop-gradient (blank, label) log-probs over the full [T, U+1] lattice, for alignments and arc posteriors."""
    return rnnt_log_probs_fused(
        model.joint_output_fn,
        jax.lax.stop_gradient(model.joint_params(variables["params"])),
        jax.lax.stop_gradient(encoding.enc_proj),
        jax.lax.stop_gradient(encoding.pred_proj),
        tokens,
        chunk_size=chunk_size,
    )


def best_path_emit_frames(
    model, variables, aligner: str, encoding: PairedEncoding, tokens, token_length, *, chunk_size: int
) -> jax.Array:
    """i32[B, U] emitting frame of each token on the current model's best path (stop-gradient).

    aligner: "rnnt" (Viterbi through the transducer lattice) or "ctc" (forced alignment with the CTC head).
    """
    frame_length = jnp.maximum(encoding.frame_length, 1)
    if aligner == "rnnt":
        log_probs = lattice_log_probs(model, variables, encoding, tokens, chunk_size=chunk_size)
        return rnnt_viterbi_alignment(log_probs, tokens, frame_length, token_length).emit_frames
    if aligner == "ctc":
        logits = jax.lax.stop_gradient(bound(model, variables).ctc_logits(jax.lax.stop_gradient(encoding.h)))
        return ctc_forced_alignment(logits, frame_length, tokens, token_length).emit_frames
    raise ValueError(f"unknown aligner {aligner!r}; set it to 'rnnt' or 'ctc' in the objective's gin file.")


def internal_lm_terms(model, variables, stream, rng=None) -> Terms:
    """The transducer's internal language model trained on a text stream (ILM adaptation, Meng et al., ICASSP 2022).

    The joint fed with the prediction network alone (no encoder contribution) is the RNN-T's internal LM
    (Meng et al., SLT 2021): logits_u = joint(pred_proj_u), u = 0..U-1, and over the labels without blank
        L_ilm = -mean over valid tokens of log softmax_{v > 0}(logits_u)[y_{u+1}].
    It teaches the prediction network and joint the spelling of words that unspoken text has and paired speech lacks,
    where the beam search reads it. Gradients reach the prediction network and joint only. Metric ilm_loss (nats per
    token). rng: dropout key (training mode); None = deterministic."""
    tokens, token_length = stream["tokens"], stream["token_length"]
    pred_proj = bound(model, variables, rng).rnnt_predict(tokens, token_length, train=rng is not None)
    pred_proj = pred_proj[:, :-1]  # f32[B, U, J]: the state before each label
    logits = model.joint_output_fn(model.joint_params(variables["params"]), pred_proj)  # f32[B, U, V]
    log_probs = jax.nn.log_softmax(logits[..., 1:], axis=-1)  # labels 1..V-1 at indices 0..V-2
    labels = jnp.maximum(tokens - 1, 0)[..., None]
    nll = -jnp.take_along_axis(log_probs, labels, axis=-1)[..., 0]
    loss = masked_mean(nll, frame_mask(token_length, tokens.shape[1]))
    return Terms(loss, {"ilm_loss": loss})


def ctc_terms(model, variables, h, h_length, tokens, token_length) -> Terms:
    """Per-token CTC loss of the CTC head over feasible examples; metrics ctc_loss and ctc_infeasible (count)."""
    logits = bound(model, variables).ctc_logits(h)
    loss, feasible = ctc_loss(logits, h_length, tokens, token_length)
    feasible = feasible & (token_length > 0)
    ctc = per_token(loss, feasible, token_length)
    infeasible = batch_total(~feasible & (token_length > 0))
    return Terms(ctc, {"ctc_loss": ctc, "ctc_infeasible": infeasible})


def encode_paired_speech(model, variables, stream, rng_speech, rng_shared):
    """A stream's waveforms -> speech tower -> shared tower in training mode: (e_s, h f32[B, T, D], frame_length)."""
    e_s, frame_length = bound(model, variables, rng_speech).encode_speech(
        stream["waveform"], stream["waveform_length"], train=True
    )
    h, _ = bound(model, variables, rng_shared).shared_encode(e_s, frame_length, train=True)
    return e_s, h, frame_length


def supervised_speech_terms(
    model, variables, stream, rng, *, ctc_weight: float = 0.0, loss: TransducerLoss | None = None, step=None
) -> Terms:
    """Speech -> speech tower -> shared tower -> RNN-T (+ ctc_weight * CTC) on a paired stream.

    loss: the transducer loss (default `TransducerLoss()` as bound in gin); step: training step, for the pruned
    loss's warm-up (None = after warm-up). The returned encoding holds e_s, h, their length and the joint
    projections, for objectives that add terms on top.
    """
    rng_speech, rng_shared, rng_pred = jax.random.split(rng, 3)
    e_s, h, frame_length = encode_paired_speech(model, variables, stream, rng_speech, rng_shared)
    tokens, token_length = stream["tokens"], stream["token_length"]
    nll, valid, enc_proj, pred_proj, parts = transducer_nll(
        model, variables, h, frame_length, tokens, token_length, rng=rng_pred, step=step, loss=loss, return_parts=True
    )
    rnnt = per_token(nll, valid, token_length)
    total = rnnt
    metrics = {"rnnt_loss": rnnt, "paired_examples": batch_total(valid)}
    if parts:  # the pruned loss: rnnt_loss above is its weighted sum
        feasible = valid & parts["pruned_feasible"]
        metrics.update(
            rnnt_simple_loss=per_token(parts["simple"], valid, token_length),
            rnnt_pruned_loss=per_token(parts["pruned"], feasible, token_length),
            rnnt_pruned_infeasible=batch_total(valid & ~feasible),
        )
    if ctc_weight > 0:
        ctc = ctc_terms(model, variables, h, frame_length, tokens, token_length)
        total = total + ctc_weight * ctc.loss
        metrics.update(ctc.metrics)
    return Terms(total, metrics, PairedEncoding(e_s, h, frame_length, enc_proj, pred_proj))


def bestrq_inputs(model, variables, stream, rngs, masking: BestRQMasking):
    """BEST-RQ's inputs and targets from waveforms (no parameters): log-mel, codebook labels, span mask (rngs[0]) and
    noise (rngs[1]) in the masked spans. Returns (inputs f32[B, T0, 80], feature_length, labels i32[B, T],
    label_length, masked bool[B, T])."""
    features, feature_length = frontend.log_mel_spectrogram(stream["waveform"], stream["waveform_length"])
    labels, label_length = bound(model, variables).bestrq_targets(features, feature_length)
    frames = labels.shape[1]
    masked = span_mask(rngs[0], label_length, frames, mask_prob=masking.mask_prob, span=masking.mask_span)
    masked_input = jnp.repeat(masked, model.config.subsampling_factor, axis=1)
    masked_input = jnp.pad(masked_input, ((0, 0), (0, features.shape[1] - masked_input.shape[1])))
    normalized = frontend.normalize_features(features, feature_length)
    noise = masking.noise_std * jax.random.normal(rngs[1], normalized.shape, normalized.dtype)
    inputs = jnp.where(masked_input[..., None], noise, normalized)
    return inputs, feature_length, labels, label_length, masked


def bestrq_terms(model, variables, stream, rng, masking: BestRQMasking | None = None) -> Terms:
    """BEST-RQ masked prediction on untranscribed speech (Chiu et al. 2022).

    Targets come from the frozen random-projection quantizer on the clean features. Spans of encoder frames are
    masked (`masking`, default `BestRQMasking()` as bound in gin) by replacing their 10 ms input frames with Gaussian
    noise, and the speech and shared towers predict the masked frames' codebook labels: cross-entropy over masked
    valid frames.
    """
    masking = BestRQMasking() if masking is None else masking
    rng_mask, rng_noise, rng_speech, rng_shared = jax.random.split(rng, 4)
    inputs, feature_length, labels, label_length, masked = bestrq_inputs(
        model, variables, stream, (rng_mask, rng_noise), masking
    )
    e_s, frame_length = bound(model, variables, rng_speech).encode_speech_features(inputs, feature_length, train=True)
    h, _ = bound(model, variables, rng_shared).shared_encode(e_s, frame_length, train=True)
    return bestrq_head_terms(model, variables, h, frame_length, labels, label_length, masked)


def bestrq_head_terms(model, variables, h, frame_length, labels, label_length, masked) -> Terms:
    """`bestrq_terms` after the shared tower h f32[B, T, D]: codebook logits and cross-entropy at masked frames."""
    frames = labels.shape[1]
    logits = bound(model, variables).bestrq_logits(h).astype(jnp.float32)
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
        "bestrq_masked_frames": batch_total(targets),
    }
    return Terms(loss, metrics)


def combine_stream_terms(model, variables, batch, rng, step, shared: TextInjection, *, paired_fn, text_fn):
    """The text-injection objectives' sum over whichever streams the batch has (`TextInjection`'s formula).

    paired_fn / text_fn: fn(stream, rng) -> Terms with the objective's own weights applied. Returns (loss, metrics
    with "loss").
    """
    rng_paired, rng_text, rng_speech = jax.random.split(rng, 3)
    loss = jnp.zeros((), jnp.float32)
    metrics = {}
    if "paired" in batch:
        paired = paired_fn(batch["paired"], rng_paired)
        loss = loss + active_from(step, shared.paired_start_step) * paired.loss
        metrics.update(paired.metrics)
    if "text" in batch:
        text = text_fn(batch["text"], rng_text)
        if shared.internal_lm_weight > 0:  # its own key, derived so that the other terms' draws stay as without it
            lm = internal_lm_terms(model, variables, batch["text"], jax.random.fold_in(rng_text, 1))
            text = Terms(text.loss + shared.internal_lm_weight * lm.loss, {**text.metrics, **lm.metrics})
        loss = loss + active_from(step, shared.text_start_step) * text.loss
        metrics.update(text.metrics)
    if "speech" in batch and shared.bestrq_weight > 0:
        speech = bestrq_terms(model, variables, batch["speech"], rng_speech, shared.bestrq_masking)
        loss = loss + shared.bestrq_weight * speech.loss
        metrics.update(speech.metrics)
    metrics["loss"] = loss
    return loss, metrics
