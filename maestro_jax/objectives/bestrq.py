"""BEST-RQ self-supervised pretraining on untranscribed speech (Chiu et al., ICML 2022).

labels_t = argmax_k cos(P^T stack4(norm(x))_t, c_k)     (P, c frozen and random)
L = - mean over masked valid frames t of log p(labels_t | masked x)
"""

import gin

from maestro_jax.objectives.common import bestrq_terms


@gin.configurable
def bestrq(
    model,
    variables,
    batch,
    rng,
    step,
    *,
    mask_prob: float = 0.01,
    mask_span: int = 10,
    noise_std: float = 0.1,
):
    """(loss, metrics) on batch["speech"]. mask_prob: chance that a valid encoder frame starts a masked span;
    mask_span: span length in encoder frames; noise_std: std of the noise written into masked input frames."""
    del step
    loss, metrics = bestrq_terms(
        model, variables, batch["speech"], rng, mask_prob=mask_prob, mask_span=mask_span, noise_std=noise_std
    )
    return loss, {"loss": loss, **metrics}
