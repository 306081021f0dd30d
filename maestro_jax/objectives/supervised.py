"""Supervised RNN-T and/or CTC on paired speech (both heads read the shared tower's output).

L = rnnt_weight * L_rnnt + ctc_weight * L_ctc (+ internal_lm_weight * L_ilm),   each per token

L_rnnt and L_ctc over the paired stream; L_ilm (optional) is the transducer's internal LM on the unspoken-text stream
(`common.internal_lm_terms`): text-only adaptation of the prediction network without text injection into the encoder,
the baseline that tells how much of MAESTRO's or ASTRA's text-only gain the prediction network alone could get.

rnnt_weight = 0 trains a CTC model: the RNN-T prediction network and joint are then not run at all (their params
exist but get no gradient), which makes the step several times cheaper; decode such a model with `ctc_greedy`.
"""

import gin
import jax

from maestro_jax.objectives.common import (
    Terms,
    ctc_terms,
    encode_paired_speech,
    internal_lm_terms,
    supervised_speech_terms,
)
from maestro_jax.objectives.reductions import batch_total


def ctc_speech_terms(model, variables, stream, rng) -> Terms:
    """Speech -> speech tower -> shared tower -> CTC on a paired stream (per-token CTC loss)."""
    _, h, frame_length = encode_paired_speech(model, variables, stream, *jax.random.split(rng))
    ctc = ctc_terms(model, variables, h, frame_length, stream["tokens"], stream["token_length"])
    valid = (frame_length > 0) & (stream["token_length"] > 0)
    return Terms(ctc.loss, {**ctc.metrics, "paired_examples": batch_total(valid)})


@gin.configurable
def supervised(
    model,
    variables,
    batch,
    rng,
    step,
    *,
    rnnt_weight: float = 1.0,
    ctc_weight: float = 0.0,
    internal_lm_weight: float = 0.0,
):
    """(loss, metrics) on batch["paired"] (and batch["text"] for the internal LM). rnnt_weight / ctc_weight: weights
    of the transducer and CTC terms (0 turns a term off; at least one must be positive). internal_lm_weight > 0 needs
    the text stream (STREAMS with 'text'). The transducer loss is `TransducerLoss()` as bound in gin."""
    if rnnt_weight <= 0 and ctc_weight <= 0:
        raise ValueError(
            f"supervised needs a positive supervised.rnnt_weight or supervised.ctc_weight; got {rnnt_weight} and "
            f"{ctc_weight}."
        )
    if internal_lm_weight > 0 and "text" not in batch:
        raise ValueError(
            f"supervised.internal_lm_weight={internal_lm_weight} trains on the unspoken-text stream, but the batch has "
            f"only {sorted(batch)}: add 'text' to STREAMS (or set supervised.internal_lm_weight = 0)."
        )
    if rnnt_weight > 0:
        stream, relative_ctc = batch["paired"], ctc_weight / rnnt_weight
        terms = supervised_speech_terms(model, variables, stream, rng, ctc_weight=relative_ctc, step=step)
        loss = rnnt_weight * terms.loss
    else:
        terms = ctc_speech_terms(model, variables, batch["paired"], rng)
        loss = ctc_weight * terms.loss
    metrics = dict(terms.metrics)
    if internal_lm_weight > 0:
        # Its own key, derived so that the paired terms' draws stay as without it.
        lm = internal_lm_terms(model, variables, batch["text"], jax.random.fold_in(rng, 1))
        loss = loss + internal_lm_weight * lm.loss
        metrics.update(lm.metrics)
    return loss, {"loss": loss, **metrics}
