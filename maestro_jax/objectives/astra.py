"""ASTRA (Gaur et al., Interspeech 2024; US20250391399A1): text injection at token rate, no duration model.

Our reading of the method, as implemented here. Notation: e_s = SpeechTower(x) f32[B, T, D] (speech frames),
e_t = TextTower(y) f32[B, U, D] (one vector per token), d(a, b) = mean_D |a - b| (L1, default) or mean_D (a - b)^2.

Paired stream (x, y), consistency through the transducer lattice. Every RNN-T alignment emits token u at exactly one
frame t; the label arc (t, u) carries the distance d(e_s[t], e_t[u]). The loss is the expected distance over all
alignments under the current model, i.e. a weighted RNN-T objective computed with forward-backward:
    γ[t, u] = P(token u emitted at frame t | x, y)     (label-arc posteriors from alpha/beta, stop-gradient)
    L_cons  = (1 / Σ_b U_b) Σ_b Σ_t Σ_u γ[b, t, u] d(e_s[b, t], e_t[b, u])
Since Σ_t γ[t, u] = 1 for every token, L_cons is the mean over tokens of the expected distance to the frame that
emits it. Hard variant (consistency="hard"): one speech vector per token from the best path (RNN-T Viterbi or CTC
forced alignment), L_cons = mean_u d(e_s[t*_u], e_t[u]).
    L_rnnt  = -log P_rnnt(y | Shared(e_s))                                   per token
Text-only stream y, at token rate (no upsampling):
    L_text  = -log P_rnnt(y | Shared(SpanMask(e_t)))                         per token; T = U frames
Speech-only stream: L_bestrq.

    L = w_bestrq L_bestrq + a_p (w_rnnt L_rnnt + w_cons L_cons) + a_t w_text L_text
with the curriculum a_p = [step >= paired_start_step], a_t = [step >= text_start_step]; w_bestrq, the curriculum,
BEST-RQ's masking and the optional CTC term are MAESTRO's and ASTRA's shared settings (common.TextInjection).
"""

import gin
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import frame_mask
from maestro_jax.losses.alignment import reduce_to_token_rate, rnnt_arc_posteriors
from maestro_jax.models.bestrq import span_mask
from maestro_jax.objectives.common import (
    PairedEncoding,
    Terms,
    TextInjection,
    best_path_emit_frames,
    bound,
    combine_stream_terms,
    lattice_log_probs,
    masked_mean,
    per_token,
    supervised_speech_terms,
    transducer_nll,
)
from maestro_jax.objectives.reductions import batch_mean
from maestro_jax.objectives.transducer import TransducerLoss


def vector_distance(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
    """Mean-over-D distance of broadcastable a, b f32[..., D] ("l1" or "mse") -> f32[...]."""
    if kind == "l1":
        return jnp.mean(jnp.abs(a - b), axis=-1)
    if kind == "mse":
        return jnp.mean(jnp.square(a - b), axis=-1)
    raise ValueError(f"unknown consistency distance {kind!r}; set astra.distance to 'l1' or 'mse'.")


def consistency_terms(
    model,
    variables,
    stream,
    encoding: PairedEncoding,
    rng,
    *,
    consistency: str,
    aligner: str,
    distance: str,
    chunk_size: int,
) -> Terms:
    """L_cons tying speech-tower frames to token-rate text-tower vectors (see the module docstring)."""
    weights = consistency_alignment(
        model, variables, stream, encoding, consistency=consistency, aligner=aligner, chunk_size=chunk_size
    )
    return consistency_given_alignment(
        model, variables, stream, encoding.e_s, weights, rng, consistency=consistency, distance=distance
    )


def consistency_alignment(
    model, variables, stream, encoding: PairedEncoding, *, consistency: str, aligner: str, chunk_size: int
) -> jax.Array:
    """What L_cons weighs frames by (stop-gradient): "soft", arc posteriors f32[B, T, U] zeroed at padded tokens;
    "hard", the emitting frame i32[B, U] of each token on the best path."""
    tokens, token_length = stream["tokens"], stream["token_length"]
    if consistency == "soft":
        log_probs = lattice_log_probs(model, variables, encoding, tokens, chunk_size=chunk_size)
        posteriors = rnnt_arc_posteriors(log_probs, tokens, jnp.maximum(encoding.frame_length, 1), token_length)
        return jax.lax.stop_gradient(posteriors) * frame_mask(token_length, tokens.shape[1])[:, None, :]
    if consistency == "hard":
        return best_path_emit_frames(model, variables, aligner, encoding, tokens, token_length, chunk_size=chunk_size)
    raise ValueError(f"unknown consistency {consistency!r}; set astra.consistency to 'soft' or 'hard'.")


def consistency_given_alignment(
    model, variables, stream, e_s, weights, rng, *, consistency: str, distance: str
) -> Terms:
    """`consistency_terms` after the alignment: the text tower and the (soft or hard) distance to e_s f32[B, T, D]."""
    tokens, token_length = stream["tokens"], stream["token_length"]
    e_t, _ = bound(model, variables, rng).encode_text(tokens, token_length, train=True)
    token_mask = frame_mask(token_length, tokens.shape[1])
    if consistency == "soft":
        expected = jnp.sum(weights * vector_distance(e_s[:, :, None, :], e_t[:, None, :, :], distance))
        loss = batch_mean(expected, jnp.sum(token_mask))
    else:
        reduced = reduce_to_token_rate(e_s, weights, token_length)
        loss = masked_mean(vector_distance(reduced, e_t, distance), token_mask)
    return Terms(loss, {"consistency_loss": loss})


def masked_token_rate_text(model, variables, stream, rngs, *, mask_prob: float, mask_span: int) -> jax.Array:
    """The text-only stream up to the shared tower: text tower (rngs[0]) -> span mask (rngs[1]) -> f32[B, U, D]."""
    tokens, token_length = stream["tokens"], stream["token_length"]
    e_t, _ = bound(model, variables, rngs[0]).encode_text(tokens, token_length, train=True)
    masked = span_mask(rngs[1], token_length, tokens.shape[1], mask_prob=mask_prob, span=mask_span)
    return jnp.where(masked[..., None], 0.0, e_t)


def token_rate_text_terms(
    model,
    variables,
    stream,
    rng,
    *,
    mask_prob: float,
    mask_span: int,
    loss: TransducerLoss | None = None,
    step=None,
) -> Terms:
    """L_text: unspoken text -> text tower (token rate) -> span mask -> shared tower -> RNN-T."""
    rng_text, rng_mask, rng_shared, rng_pred = jax.random.split(rng, 4)
    tokens, token_length = stream["tokens"], stream["token_length"]
    e_t = masked_token_rate_text(
        model, variables, stream, (rng_text, rng_mask), mask_prob=mask_prob, mask_span=mask_span
    )
    h, _ = bound(model, variables, rng_shared).shared_encode(e_t, token_length, train=True)
    nll, valid, _, _ = transducer_nll(
        model, variables, h, token_length, tokens, token_length, rng=rng_pred, step=step, loss=loss
    )
    text_loss = per_token(nll, valid, token_length)
    return Terms(text_loss, {"text_rnnt_loss": text_loss})


@gin.configurable
def astra(
    model,
    variables,
    batch,
    rng,
    step,
    *,
    shared: TextInjection | None = None,
    rnnt_weight: float = 1.0,
    consistency_weight: float = 1.0,
    text_weight: float = 1.0,
    consistency: str = "soft",
    aligner: str = "rnnt",
    distance: str = "l1",
    text_mask_prob: float = 0.0,
    text_mask_span: int = 2,
):
    """ASTRA loss and metrics over whichever of batch["paired"], ["text"], ["speech"] are present.

    shared: the curriculum, BEST-RQ and CTC settings ASTRA shares with MAESTRO (default `TextInjection()` as bound in
    gin). consistency: "soft" (arc-posterior-weighted, the default) or "hard" (best path; aligner "rnnt" | "ctc", CTC
    needs TextInjection.ctc_weight > 0). distance: "l1" | "mse". text_mask_*: span masking of token-rate text
    (probability a token starts a span, span in tokens). Weights as in the module docstring.
    """
    shared = TextInjection() if shared is None else shared
    transducer = TransducerLoss()

    def paired_fn(stream, stream_rng):
        rng_asr, rng_cons = jax.random.split(stream_rng)
        asr = supervised_speech_terms(
            model, variables, stream, rng_asr, ctc_weight=shared.ctc_weight, loss=transducer, step=step
        )
        cons = consistency_terms(
            model,
            variables,
            stream,
            asr.encoding,
            rng_cons,
            consistency=consistency,
            aligner=aligner,
            distance=distance,
            chunk_size=transducer.chunk_size,
        )
        return Terms(rnnt_weight * asr.loss + consistency_weight * cons.loss, {**asr.metrics, **cons.metrics})

    def text_fn(stream, stream_rng):
        text = token_rate_text_terms(
            model,
            variables,
            stream,
            stream_rng,
            mask_prob=text_mask_prob,
            mask_span=text_mask_span,
            loss=transducer,
            step=step,
        )
        return Terms(text_weight * text.loss, text.metrics)

    return combine_stream_terms(model, variables, batch, rng, step, shared, paired_fn=paired_fn, text_fn=text_fn)
