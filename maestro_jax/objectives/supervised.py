"""Supervised RNN-T on paired speech (optionally with an auxiliary CTC loss on the shared tower's output).

L = L_rnnt + ctc_weight * L_ctc,   both per token over the paired stream.
"""

import gin

from maestro_jax.objectives.common import supervised_speech_terms


@gin.configurable
def supervised(model, variables, batch, rng, step, *, ctc_weight: float = 0.0, chunk_size: int = 16):
    """(loss, metrics) on batch["paired"]. ctc_weight: weight of the auxiliary CTC term (0 turns it off);
    chunk_size: frames per chunk of the fused joint + transducer loss."""
    del step
    loss, metrics, _ = supervised_speech_terms(
        model, variables, batch["paired"], rng, ctc_weight=ctc_weight, chunk_size=chunk_size
    )
    return loss, {"loss": loss, **metrics}
