"""Warm starts: a new run's parameters taken from another run's checkpoint (`train.init_hooks`).

The toy table's fair protocol branches every system (paired-only, MAESTRO, ASTRA) from one supervised checkpoint:

    train.init_hooks = (@init_params_from_checkpoint,)
    init_params_from_checkpoint.checkpoint = 'runs/text_injection/supervised'
    init_params_from_checkpoint.step = 2000

Only parameters are copied (the optimizer state, step and data position start fresh, so the new run warms up again);
parameters the checkpoint lacks (e.g. a text tower that a supervised run never trained) keep their fresh values.
"""

import logging
import os

import flax.linen as nn
import gin
import jax.numpy as jnp
from flax import traverse_util

from maestro_jax import checkpoints, paths

log = logging.getLogger(__name__)


def _checkpoint_dir(checkpoint: str) -> str:
    nested = os.path.join(checkpoint, "checkpoints")
    return nested if paths.as_path(nested).is_dir() else checkpoint


def copy_matching_params(
    fresh: dict, saved: dict, *, source: str, modules: tuple[str, ...] = ()
) -> tuple[dict, int, int]:
    """`fresh` params with every leaf that `saved` holds at the same path replaced by the saved value (cast to the
    fresh dtype; axis-metadata boxes kept). Returns (params, copied leaves, fresh leaves kept).

    modules: top-level module names to copy (e.g. ("speech_tower",)); empty: every module.
    A copied path present in both with different shapes raises a ValueError naming it; paths only in `saved` are
    ignored.
    """
    fresh_flat = traverse_util.flatten_dict(fresh)
    saved_flat = traverse_util.flatten_dict(saved)
    unknown = set(modules) - {path[0] for path in fresh_flat}
    if unknown:
        raise ValueError(
            f"modules {sorted(unknown)} are not top-level modules of this model "
            f"({sorted({path[0] for path in fresh_flat})}); fix init_params_from_checkpoint.modules"
        )
    copied = {}
    for path, leaf in fresh_flat.items():
        if path not in saved_flat or (modules and path[0] not in modules):
            continue
        value = leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf
        if tuple(value.shape) != tuple(saved_flat[path].shape):
            raise ValueError(
                f"param {'/'.join(path)} is {tuple(value.shape)} in this model but {tuple(saved_flat[path].shape)} "
                f"in {source}; warm-start only from a model of the same size (init_params_from_checkpoint.checkpoint)"
            )
        new = jnp.asarray(saved_flat[path], value.dtype)
        copied[path] = leaf.replace_boxed(new) if isinstance(leaf, nn.meta.AxisMetadata) else new
    params = traverse_util.unflatten_dict({**fresh_flat, **copied})
    return params, len(copied), len(fresh_flat) - len(copied)


@gin.configurable
def init_params_from_checkpoint(
    variables: dict,
    *,
    checkpoint: str = gin.REQUIRED,
    step: int | None = None,
    use_ema: bool = False,
    modules: tuple[str, ...] = (),
) -> dict:
    """Init hook: `variables` with the params of `checkpoint` (a model dir or its checkpoints/ directory; `step` or
    the latest; the EMA params with `use_ema`) wherever this model has a param of the same path, within the top-level
    `modules` when given (SONAR's stage 2 takes only the speech and shared towers: its pooler has another size)."""
    directory = _checkpoint_dir(checkpoint)
    step = checkpoints.find_step(directory, step, step_option="init_params_from_checkpoint.step")
    saved = checkpoints.restore_inference_variables(directory, step, use_ema=use_ema, on_host=True)["params"]
    params, copied, kept = copy_matching_params(
        variables["params"], saved, source=f"{directory} step {step}", modules=tuple(modules)
    )
    if copied == 0:
        raise ValueError(
            f"{directory} step {step} holds no param at any path of this model (modules: {tuple(modules) or 'all'}); "
            "is it a run of another model family? (init_params_from_checkpoint.checkpoint, .modules)"
        )
    log.info("warm start from %s step %d: %d param arrays copied, %d kept fresh", directory, step, copied, kept)
    return {**variables, "params": params}
