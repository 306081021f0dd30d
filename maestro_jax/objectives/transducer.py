"""Which transducer loss the objectives train with: the full lattice (default) or k2/icefall's pruned RNN-T.

    TransducerLoss.kind = "pruned"    # in an experiment's gin file; prune_range etc. as below

kind="pruned" trains simple_scale * L_simple + pruned_scale * L_pruned per example (maestro_jax.losses.pruned_rnnt),
with the scales of `pruned_loss_scales` at the training step. The simple loss's additive joint uses the joint's own
output layer (kernel W [J, V], bias b [V]) on each projection, am = enc_proj @ W + b and lm = pred_proj @ W: no new
parameters, and am + lm is the real joint with its tanh left out. icefall instead trains separate simple_am_proj /
simple_lm_proj layers.

Only the training NLL changes. MAESTRO's Viterbi durations and ASTRA's arc posteriors keep using the full lattice
through `rnnt_log_probs_fused` (forward only), and decoding and evaluation are untouched.
"""

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from maestro_jax.losses.pruned_rnnt import pruned_loss_scales, pruned_transducer_loss

KINDS = ("full", "pruned")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransducerLoss:
    """kind: "full" (rnnt_loss_fused over the whole [T, U+1] lattice) or "pruned".
    prune_range: label positions per frame kept by the pruned loss (S; at most S - 1 labels per frame).
    simple_loss_scale: weight of the simple loss once warmed up (the pruned loss's is 1).
    warmup_steps: training steps over which the simple weight falls from 1 and the pruned weight rises from 0.1.
      icefall's zipformer recipe uses 2000 (older pruned_transducer_stateless recipes 3000); 2000 is also within
      this project's short toy runs (a few thousand steps).
    chunk_size: encoder frames per chunk of the fused full-lattice joint: the full loss, and the forward-only
      log-probs behind MAESTRO's durations and ASTRA's posteriors (peak memory grows as B * chunk_size * (U+1) * V).
    """

    kind: str = "full"
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    warmup_steps: int = 2000
    chunk_size: int = 16

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"TransducerLoss.kind must be one of {KINDS}; got {self.kind!r}.")
        if self.prune_range < 2:
            raise ValueError(
                f"TransducerLoss.prune_range must be >= 2 (label positions per frame); got {self.prune_range}."
            )
        if self.chunk_size < 1:
            raise ValueError(f"TransducerLoss.chunk_size must be >= 1 (frames per chunk); got {self.chunk_size}.")


def simple_joint_logits(joint_params, enc_proj: jax.Array, pred_proj: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(am f32[B, T, V], lm f32[B, U+1, V]) = (enc_proj @ W + b, pred_proj @ W) with the joint's output layer."""
    params = nn.meta.unbox(joint_params)
    kernel = params["kernel"].astype(jnp.float32)
    am = enc_proj.astype(jnp.float32) @ kernel + params["bias"].astype(jnp.float32)
    return am, pred_proj.astype(jnp.float32) @ kernel


def pruned_transducer_nll(
    loss: TransducerLoss,
    joint_output_fn,
    joint_params,
    enc_proj: jax.Array,
    pred_proj: jax.Array,
    tokens: jax.Array,
    logit_lengths: jax.Array,
    label_lengths: jax.Array,
    step=None,
) -> tuple[jax.Array, dict]:
    """simple_scale * simple + pruned_scale * pruned, f32[B], and the parts {"simple", "pruned" f32[B],
    "pruned_feasible" bool[B]}. step: training step (int or traced), None = after warm-up. An example whose band
    cannot reach its last label (U_b > (S - 1) T_b) keeps only its simple term."""
    am, lm = simple_joint_logits(joint_params, enc_proj, pred_proj)
    losses = pruned_transducer_loss(
        joint_output_fn,
        joint_params,
        enc_proj,
        pred_proj,
        am,
        lm,
        tokens,
        logit_lengths,
        label_lengths,
        prune_range=loss.prune_range,
    )
    simple_scale, pruned_scale = pruned_loss_scales(step, loss.warmup_steps, loss.simple_loss_scale)
    nll = simple_scale * losses.simple + pruned_scale * losses.pruned
    return nll, {"simple": losses.simple, "pruned": losses.pruned, "pruned_feasible": losses.feasible}
