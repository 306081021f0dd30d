"""Orbax CheckpointManager wrapper: async saves, keep-last-K plus best-by-metric, iterator state, any-mesh restore.

A checkpoint step holds three items: `state` (the TrainState, StandardSave), `data_iterator` (JSON: each process's
batcher state, keyed "process_<i>") and `operative_config` (JSON: {"gin": the operative gin config text}).
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
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
