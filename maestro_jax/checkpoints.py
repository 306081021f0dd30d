"""Orbax CheckpointManager wrapper: async saves, keep-last-K plus best-by-metric, iterator state, any-mesh restore;
and the one place that lists checkpoint steps and restores params without the training state around them.

A checkpoint step holds three items: `state` (the TrainState, StandardSave), `data_iterator` (JSON: each process's
batcher state, keyed "process_<i>") and `operative_config` (JSON: {"gin": the operative gin config text}).
Evaluation, export and the SONAR teacher read checkpoints through `checkpoint_steps`, `find_step`,
`restore_pytree` and `restore_inference_variables`; this module needs only JAX, NumPy and Orbax (no gin), so that
`export.load` can use it.
"""

import json
import os
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers


def gather_process_states(local_state: dict) -> dict:
    """{"process_<i>": state of process i} for every process (an all-gather of JSON text; every process calls it)."""
    if jax.process_count() == 1:
        return {"process_0": local_state}
    encoded = np.frombuffer(json.dumps(local_state).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([encoded.size], np.int32))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return {
        f"process_{i}": json.loads(bytes(gathered[i, : int(lengths.reshape(-1)[i])]).decode())
        for i in range(jax.process_count())
    }


def checkpoint_steps(checkpoint_dir: str) -> list[int]:
    """The saved steps under a Checkpointer directory, ascending ([] when there is none or it does not exist)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())


def find_step(checkpoint_dir: str, step: int | None = None, *, step_option: str = "--checkpoint_step") -> int:
    """`step` (default: the latest) if it is saved under `checkpoint_dir`; FileNotFoundError otherwise.

    step_option: the flag or gin parameter that chose `step`, named in the error.
    """
    steps = checkpoint_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(
            f"no checkpoints under {checkpoint_dir}; train first (maestro-train) or fix --model_dir."
        )
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"{checkpoint_dir} has steps {steps}, not {step}; change {step_option}.")
    return step


def pytree_metadata(path: str) -> dict:
    """The tree of array metadata of the Orbax PyTree checkpoint at `path` (nothing is read but metadata)."""
    metadata = ocp.PyTreeCheckpointer().metadata(path)
    return metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata


def restore_pytree(
    path: str, *, keys: Sequence[str] | None = None, sharding: jax.sharding.Sharding | None = None
) -> dict:
    """Restores the Orbax PyTree checkpoint at `path` (a step's `state` item, an export's params/).

    keys: restore only these top-level entries (a missing or empty one comes back as {}), e.g. the params of a
    TrainState without its optimizer state. sharding: put every array there; None restores host NumPy arrays, which
    works whatever mesh wrote the checkpoint.
    """
    checkpointer = ocp.PyTreeCheckpointer()
    tree = pytree_metadata(path)
    if keys is not None:
        tree = {key: tree.get(key) or {} for key in keys}
    if sharding is None:
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    else:
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), tree)
    if keys is None:
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    # A partial restore needs the wanted subtree as `item`.
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree)
    return checkpointer.restore(
        path, args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)
    )


def restore_inference_variables(
    checkpoint_dir: str,
    step: int | None = None,
    *,
    use_ema: bool = False,
    device: jax.Device | None = None,
    sharding: jax.sharding.Sharding | None = None,
    on_host: bool = False,
) -> dict:
    """{"params": ..., **model_state} of checkpoint `step` (default: the latest) under a Checkpointer directory,
    without the optimizer state. use_ema: take the EMA params instead of the trained ones. The arrays go onto
    `sharding`, else onto `device` (default: the first local device); on_host: host NumPy arrays instead (what an
    init hook needs: it runs inside the traced init, where device arrays cannot be assembled)."""
    step = find_step(checkpoint_dir, step)
    path = os.path.join(checkpoint_dir, str(step), "state")
    params_key = "ema_params" if use_ema else "params"
    if not pytree_metadata(path).get(params_key):
        raise ValueError(
            f"checkpoint {path} holds no {params_key!r}; "
            + ("it was trained without EMA (train.ema_decay=None): drop --use_ema." if use_ema else "is it complete?")
        )
    if not on_host:
        sharding = sharding or jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
    restored = restore_pytree(path, keys=(params_key, "model_state"), sharding=sharding)
    return {"params": restored[params_key], **(restored["model_state"] or {})}


def restore_operative_config(checkpoint_dir: str, step: int) -> str:
    """The operative gin config text saved with checkpoint `step` under a Checkpointer directory."""
    return ocp.JsonCheckpointHandler().restore(epath.Path(checkpoint_dir, str(step), "operative_config"))["gin"]


class Checkpointer:
    """Saves and restores TrainState + data iterator state + operative config under `directory`.

    save_interval_steps: steps between periodic saves. max_to_keep: most recent checkpoints kept.
    keep_best: additionally keep this many best checkpoints by `best_metric` (lower is better when best_mode="min").
    """

    def __init__(
        self,
        directory: str,
        *,
        save_interval_steps: int = 1000,
        max_to_keep: int = 3,
        keep_best: int = 0,
        best_metric: str = "loss",
        best_mode: str = "min",
        async_save: bool = True,
    ):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode={best_mode!r}; choose min or max.")
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        policies = [checkpoint_managers.LatestN(max_to_keep)]
        if keep_best:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_interval_steps,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data_iterator", "operative_config")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any has a preemption notice (JAX's multi-host preemption sync point)."""
        return self.manager.reached_preemption(step)

    def save(self, step: int, state, *, data_state: dict, config_text: str, metrics=None, force=False) -> bool:
        """Starts an (async) save; every process must call it. data_state is this process's iterator state."""
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        if metrics is not None and self.best_metric not in metrics:
            metrics = None
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iterator=ocp.args.JsonSave(gather_process_states(data_state)),
            operative_config=ocp.args.JsonSave({"gin": config_text}),
        )
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore(self, step: int | None, abstract_state, *, data_iterator: bool = True) -> tuple:
        """(state, this process's data iterator state, operative config text) at `step` (default: latest).

        abstract_state: ShapeDtypeStructs with the shardings of the *current* mesh; arrays are resharded onto it,
        so a checkpoint written on N devices restores on M. data_iterator=False skips the per-process data position
        (returned as None), e.g. to evaluate a checkpoint with a different number of processes.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iterator=ocp.args.JsonRestore(),
                operative_config=ocp.args.JsonRestore(),
            ),
        )
        if not data_iterator:
            return restored.state, None, restored.operative_config["gin"]
        per_process = restored.data_iterator
        key = f"process_{jax.process_index()}"
        if len(per_process) != jax.process_count() or key not in per_process:
            raise ValueError(
                f"checkpoint {self.directory}/{step} holds data iterator states for {len(per_process)} processes but "
                f"this run has {jax.process_count()}; resume with the same number of processes (params and optimizer "
                "state restore on any mesh, the per-process data position does not)."
            )
        return restored.state, per_process[key], restored.operative_config["gin"]

    def wait_until_finished(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
