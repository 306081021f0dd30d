"""BEST-RQ self-supervised pretraining on untranscribed speech (Chiu et al., ICML 2022).

labels_t = argmax_k cos(P^T stack4(norm(x))_t, c_k)     (P, c frozen and random)
L = - mean over masked valid frames t of log p(labels_t | masked x)
"""

import gin

from maestro_jax.objectives.common import BestRQMasking, bestrq_terms


@gin.configurable
def bestrq(model, variables, batch, rng, step, *, masking: BestRQMasking | None = None):
    """(loss, metrics) on batch["speech"]. masking: span masking and noise (default `BestRQMasking()` as bound in gin,
    the same settings MAESTRO's and ASTRA's speech stream use)."""
    del step
    terms = bestrq_terms(model, variables, batch["speech"], rng, masking)
    return terms.loss, {"loss": terms.loss, **terms.metrics}
