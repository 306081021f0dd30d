"""MAESTRO (Chen et al., Interspeech 2022): matched speech-text representations through modality matching.

Notation: e_s = SpeechTower(x) f32[B, T, D]; e_t = TextTower(y) f32[B, U, D]; Shared, Refiner, RNNT as in the model.

Paired stream (x, y):
    L_rnnt = -log P_rnnt(y | Shared(e_s))                                         per token
    d      = durations of the current model's best path (RNN-T Viterbi, or CTC forced alignment), stop-gradient;
             token u owns the encoder frames after token u-1's emission up to its own
    ê_t    = Refiner(resample_by_duration(e_t, d))                                f32[B, T, D]
    L_mm   = mean over valid frames t and dims of (e_s[t] - ê_t[t])^2            (modality matching)
    L_dur  = mean over valid tokens of (DurationModel(e_t)_u - d_u)^2
Text-only stream y:
    d̂      = max(1, round(DurationModel(e_t))), stop-gradient
    z      = SpanMask(Refiner(resample_by_duration(e_t, d̂)))                      masked frames set to 0
    L_text = -log P_rnnt(y | Shared(z))                                           per token
Speech-only stream: L_bestrq (maestro_jax.objectives.bestrq).

    L = w_bestrq L_bestrq + a_p (w_rnnt L_rnnt + w_mm L_mm + w_dur L_dur) + a_t w_text L_text
with the curriculum a_p = [step >= paired_start_step], a_t = [step >= text_start_step]; w_bestrq, the curriculum,
BEST-RQ's masking and the optional CTC term are MAESTRO's and ASTRA's shared settings (common.TextInjection).
Text-only gradients reach the text tower, refiner, shared tower and RNN-T decoder, never the speech tower or the
duration model.
"""

import gin
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import frame_mask
from maestro_jax.models.bestrq import span_mask
from maestro_jax.objectives.common import (
    PairedEncoding,
    Terms,
    TextInjection,
    best_path_emit_frames,
    bound,
    combine_stream_terms,
    durations_from_emit_frames,
    masked_mean,
    per_token,
    supervised_speech_terms,
    transducer_nll,
)
from maestro_jax.objectives.reductions import batch_mean, batch_total
from maestro_jax.objectives.transducer import TransducerLoss


def paired_durations(model, variables, stream, encoding: PairedEncoding, *, aligner: str, chunk_size: int):
    """d i32[B, U]: encoder frames per token on the current model's best path (stop-gradient; see the docstring)."""
    emit_frames = best_path_emit_frames(
        model, variables, aligner, encoding, stream["tokens"], stream["token_length"], chunk_size=chunk_size
    )
    return durations_from_emit_frames(emit_frames, encoding.frame_length, stream["token_length"])


def modality_matching_terms(
    model,
    variables,
    stream,
    encoding: PairedEncoding,
    rng,
    *,
    aligner: str,
    chunk_size: int,
    matching_weight: float,
    duration_weight: float,
) -> Terms:
    """matching_weight * L_mm + duration_weight * L_dur on a paired stream given the speech terms' encoding."""
    durations = paired_durations(model, variables, stream, encoding, aligner=aligner, chunk_size=chunk_size)
    return matching_terms_given_durations(
        model,
        variables,
        stream,
        encoding.e_s,
        encoding.frame_length,
        durations,
        rng,
        matching_weight=matching_weight,
        duration_weight=duration_weight,
    )


def matching_terms_given_durations(
    model, variables, stream, e_s, frame_length, durations, rng, *, matching_weight: float, duration_weight: float
) -> Terms:
    """`modality_matching_terms` after the alignment: text tower, duration loss, resampler, refiner, L_mm."""
    rng_text, rng_duration, rng_refine = jax.random.split(rng, 3)
    tokens, token_length = stream["tokens"], stream["token_length"]
    e_t, _ = bound(model, variables, rng_text).encode_text(tokens, token_length, train=True)
    predicted = bound(model, variables, rng_duration).predict_durations(e_t, token_length, train=True)
    token_mask = frame_mask(token_length, tokens.shape[1])
    duration_loss = masked_mean(jnp.square(predicted - durations.astype(jnp.float32)), token_mask)
    upsampled, _ = bound(model, variables, rng_refine).upsample_text(
        e_t, durations, token_length, max_frames=e_s.shape[1], train=True
    )
    # A transcript's durations sum to its frame_length, so the upsampled text covers exactly the valid speech frames:
    # the frame count then follows from lengths, without the alignment (cheap for reductions.counting).
    both_valid = frame_mask(jnp.where(token_length > 0, frame_length, 0), e_s.shape[1])
    matching_loss = masked_mean(jnp.mean(jnp.square(e_s - upsampled), axis=-1), both_valid)
    metrics = {
        "modality_matching_loss": matching_loss,
        "duration_loss": duration_loss,
        "duration_abs_error": masked_mean(jnp.abs(predicted - durations), token_mask),
    }
    return Terms(matching_weight * matching_loss + duration_weight * duration_loss, metrics)


def unspoken_text_frames(model, variables, stream, rngs, *, max_frames: int, mask_prob: float, mask_span: int):
    """The text-only stream up to the shared tower: text tower -> predicted durations -> resample -> refine -> mask.

    rngs: keys for the text tower, refiner and span mask. Returns (z f32[B, max_frames, D], frame_length i32[B],
    durations i32[B, U])."""
    rng_text, rng_refine, rng_mask = rngs
    tokens, token_length = stream["tokens"], stream["token_length"]
    e_t, _ = bound(model, variables, rng_text).encode_text(tokens, token_length, train=True)
    predicted = bound(model, variables).predict_durations(e_t, token_length, train=False)
    durations = jnp.maximum(jnp.round(jax.lax.stop_gradient(predicted)), 1.0).astype(jnp.int32)
    durations = jnp.where(frame_mask(token_length, tokens.shape[1]), durations, 0)
    upsampled, frame_length = bound(model, variables, rng_refine).upsample_text(
        e_t, durations, token_length, max_frames=max_frames, train=True
    )
    masked = span_mask(rng_mask, frame_length, max_frames, mask_prob=mask_prob, span=mask_span)
    upsampled = jnp.where(masked[..., None], 0.0, upsampled)
    return upsampled, frame_length, durations


def text_injection_terms(
    model,
    variables,
    stream,
    rng,
    *,
    max_frames: int,
    mask_prob: float,
    mask_span: int,
    loss: TransducerLoss | None = None,
    step=None,
) -> Terms:
    """L_text: unspoken text -> predicted durations -> resample -> refine -> mask -> shared -> RNN-T."""
    rng_text, rng_refine, rng_mask, rng_shared, rng_pred = jax.random.split(rng, 5)
    tokens, token_length = stream["tokens"], stream["token_length"]
    upsampled, frame_length, durations = unspoken_text_frames(
        model,
        variables,
        stream,
        (rng_text, rng_refine, rng_mask),
        max_frames=max_frames,
        mask_prob=mask_prob,
        mask_span=mask_span,
    )
    h, _ = bound(model, variables, rng_shared).shared_encode(upsampled, frame_length, train=True)
    nll, valid, _, _ = transducer_nll(
        model, variables, h, frame_length, tokens, token_length, rng=rng_pred, step=step, loss=loss
    )
    # Every token lasts at least one frame, so the examples with tokens are the valid ones (nll is 0 elsewhere): the
    # token count then follows from lengths, without the duration model (cheap for reductions.counting).
    text_loss = per_token(nll, token_length > 0, token_length)
    metrics = {
        "text_rnnt_loss": text_loss,
        "text_frames_per_token": batch_mean(jnp.sum(frame_length), jnp.sum(token_length)),
        "text_truncated": batch_total(valid & (jnp.sum(durations, axis=1) > max_frames)),
    }
    return Terms(text_loss, metrics)


@gin.configurable
def maestro(
    model,
    variables,
    batch,
    rng,
    step,
    *,
    shared: TextInjection | None = None,
    rnnt_weight: float = 1.0,
    modality_matching_weight: float = 1.0,
    duration_weight: float = 0.1,
    text_weight: float = 1.0,
    aligner: str = "rnnt",
    text_frames_per_token: int = 8,
    text_mask_prob: float = 0.02,
    text_mask_span: int = 5,
):
    """MAESTRO loss and metrics over whichever of batch["paired"], ["text"], ["speech"] are present.

    shared: the curriculum, BEST-RQ and CTC settings MAESTRO shares with ASTRA (default `TextInjection()` as bound in
    gin). Weights are per term (see the module docstring). aligner: "rnnt" | "ctc", the source of the durations (CTC
    needs TextInjection.ctc_weight > 0 to train the CTC head). text_frames_per_token: static encoder-frame budget per
    text token for the upsampled text (max_frames = U * this; longer text is cut, metric text_truncated); 8 is the
    LibriSpeech recipe's, and recipes on the synthetic corpus (about 2.8 frames per token) set less. text_mask_*:
    span masking of upsampled text (probability a frame starts a span, span length in frames).
    """
    shared = TextInjection() if shared is None else shared
    transducer = TransducerLoss()

    def paired_fn(stream, stream_rng):
        rng_asr, rng_mm = jax.random.split(stream_rng)
        asr = supervised_speech_terms(
            model, variables, stream, rng_asr, ctc_weight=shared.ctc_weight, loss=transducer, step=step
        )
        matching = modality_matching_terms(
            model,
            variables,
            stream,
            asr.encoding,
            rng_mm,
            aligner=aligner,
            chunk_size=transducer.chunk_size,
            matching_weight=modality_matching_weight,
            duration_weight=duration_weight,
        )
        return Terms(rnnt_weight * asr.loss + matching.loss, {**asr.metrics, **matching.metrics})

    def text_fn(stream, stream_rng):
        text = text_injection_terms(
            model,
            variables,
            stream,
            stream_rng,
            max_frames=stream["tokens"].shape[1] * text_frames_per_token,
            mask_prob=text_mask_prob,
            mask_span=text_mask_span,
            loss=transducer,
            step=step,
        )
        return Terms(text_weight * text.loss, text.metrics)

    return combine_stream_terms(model, variables, batch, rng, step, shared, paired_fn=paired_fn, text_fn=text_fn)
