"""Orbax CheckpointManager wrapper: async saves, keep-last-K plus best-by-metric, iterator state, any-mesh restore;
and the one place that lists checkpoint steps and restores params without the training state around them.

A checkpoint step holds three items: `state` (the TrainState, StandardSave), `data_iterator` (JSON: each process's
batcher state, keyed "process_<i>"; a batcher with `combine_states` restores them on another process count) and
`operative_config` (JSON: {"gin": the operative gin config text}). Evaluation, export and the SONAR teacher read
checkpoints through `checkpoint_steps`, `find_step`, `restore_pytree` and `restore_inference_variables`; this module
needs only JAX, NumPy and Orbax (no gin), so that `export.load` can use it.

A step is complete once Orbax has renamed `<step>.orbax-checkpoint-tmp` to `<step>` (on object stores without atomic
rename: once `<step>/commit_success.txt` exists); only complete steps are listed, so a save killed mid-flight is never
restored. Resuming (`Checkpointer.restore(None, ...)`) checks the latest step's array shapes against the model first,
then falls back to the previous step when a step fails to read (a truncated or corrupted file), with a warning.
"""

import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from maestro_jax import paths

log = logging.getLogger(__name__)


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
    """The complete (finalized) steps under a Checkpointer directory, ascending ([] when there is none or it does not
    exist); a step whose save is still in flight or was killed is not one."""
    return sorted(ocp.utils.checkpoint_steps(checkpoint_dir))


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


def _array_shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"params/Dense_0/kernel": shape} for every array of a state, an abstract state or an Orbax metadata tree, in
    tree order (a TrainState field, a dict key and an optax namedtuple field read as their names, a list as indices)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(key) for key in path): tuple(leaf.shape) for path, leaf in leaves}


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _gin_bindings(config_text: str) -> dict[str, str]:
    """{"ModelConfig.model_dim": "144", "MODEL_DIR": "'runs/x'", ...} of an operative gin config text; a value that
    gin wraps onto indented (or closing-bracket) lines is joined into one."""
    bindings: dict[str, str] = {}
    name = None
    for line in config_text.splitlines():
        text = line.strip().removesuffix("\\").strip()
        if not text or text.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_][\w./]*) = (.*)", line.rstrip())
        if match:
            name = match.group(1)
            bindings[name] = match.group(2).removesuffix("\\").strip()
        elif name is not None and (line[0].isspace() or text[0] in ")]}"):
            bindings[name] = f"{bindings[name]} {text}".strip()
    return bindings


def check_state_fits(step_dir: str, saved_tree, abstract_state, *, saved_config: str = "", config_text: str = ""):
    """Raises ValueError when the arrays of a checkpoint's state (`saved_tree`: its Orbax metadata) differ in shape
    or in name from `abstract_state`'s: the checkpoint is of another model shape (or optimizer, or EMA setting), which
    no older checkpoint fixes. The message names the first differing array, both shapes, and the gin bindings that
    differ between the checkpoint's operative config (`saved_config`) and this run's (`config_text`)."""
    saved, wanted = _array_shapes(saved_tree), _array_shapes(abstract_state)
    differences = [
        f"{path} is {saved[path]} in the checkpoint but {shape} in this model"
        if path in saved
        else f"{path} {shape} is in this model but not in the checkpoint"
        for path, shape in wanted.items()
        if saved.get(path) != shape
    ]
    differences += [
        f"{path} {shape} is in the checkpoint but not in this model"
        for path, shape in saved.items()
        if path not in wanted
    ]
    if not differences:
        return
    saved_bindings, bindings = _gin_bindings(saved_config), _gin_bindings(config_text)
    changed = [
        f"{name} = {value} there, {bindings[name]} here"
        for name, value in saved_bindings.items()
        if name in bindings and bindings[name] != value
    ]
    hint = f" (bindings that differ from its operative config: {'; '.join(changed[:8])})" if changed else ""
    raise ValueError(
        f"checkpoint {step_dir} does not fit this model: {differences[0]} ({len(differences)} of "
        f"{len(wanted | saved)} arrays differ). It was written with another model shape: set the gin bindings that "
        "shape the model (ModelConfig.* for SpeechTextModel, e.g. ModelConfig.model_dim; the optimizer; "
        f"train.ema_decay) back to the checkpoint's{hint}, or set MODEL_DIR (train.model_dir) to a new directory to "
        "train this model from scratch."
    )


class UnreadableCheckpointError(RuntimeError):
    """An item of a complete checkpoint step failed to read (a truncated or corrupted file)."""

    def __init__(self, path: str, error: BaseException):
        self.path, self.description = path, _describe(error)
        super().__init__(f"{path}: {self.description}")


def _describe(error: BaseException) -> str:
    """'Type: message' of the innermost cause of `error`: where TensorStore names the file and the array it failed
    on (the outer exception carries a page of TensorStore spec)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"


def _every_process(ok: bool) -> bool:
    """True when `ok` on every process, so that all processes restore the same step or fall back together."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.process_allgather(np.asarray(ok, np.int32)).min())


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
        self.directory = paths.resolve(directory)  # Orbax wants an absolute path; a gs:// URL stays one
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

    def restore(
        self,
        step: int | None,
        abstract_state,
        *,
        data_iterator: bool = True,
        combine_data_states: Callable[[list[dict]], dict] | None = None,
        config_text: str = "",
    ) -> tuple:
        """(state, this process's data iterator state, operative config text) at `step` (default: latest).

        abstract_state: ShapeDtypeStructs with the shardings of the *current* mesh; arrays are resharded onto it,
        so a checkpoint written on N devices restores on M. data_iterator=False skips the per-process data position
        (returned as None), e.g. to evaluate a checkpoint with a different number of processes.
        combine_data_states: fn(the saved data states of processes 0..N-1) -> the data state every process of this
        run restores (`MultiStreamBatcher.combine_states`), which lets a run saved on N processes resume on M; without
        it each process gets its own saved state and M must equal N.
        Before reading arrays, the step's shapes are checked against abstract_state (`check_state_fits`; config_text:
        this run's operative gin config, to name the bindings that differ). step=None: the latest step that reads; a
        newer one that fails to read (a truncated or corrupted file) is logged with a warning naming the step, the
        item directory and the error, then moved aside to `<step>.unreadable-<time>` so this run can save that step
        again. RuntimeError when no step reads: never a silent fresh start while checkpoints exist.
        """
        if step is None:
            step, restored = self._restore_latest_readable(abstract_state, config_text)
        else:
            restored = self._restore_step(step, abstract_state, config_text)
        if not data_iterator:
            return restored["state"], None, restored["operative_config"]["gin"]
        per_process = restored["data_iterator"]
        if combine_data_states is not None:
            data_state = combine_data_states([per_process[f"process_{i}"] for i in range(len(per_process))])
            return restored["state"], data_state, restored["operative_config"]["gin"]
        key = f"process_{jax.process_index()}"
        if len(per_process) != jax.process_count() or key not in per_process:
            raise ValueError(
                f"checkpoint {self.directory}/{step} holds data iterator states for {len(per_process)} processes but "
                f"this run has {jax.process_count()}, and train.make_data's iterator has no combine_states to join "
                "them; resume with the same number of processes (params and optimizer state restore on any mesh)."
            )
        return restored["state"], per_process[key], restored["operative_config"]["gin"]

    def _restore_step(self, step: int, abstract_state, config_text: str) -> dict:
        """{item name: restored item} of `step`, each item read on its own so that a failure names its directory;
        UnreadableCheckpointError when one fails, ValueError (before reading arrays) when the shapes differ."""
        step_dir = os.path.join(self.directory, str(step))

        def read(item: str, read_item):
            try:
                return read_item()
            except Exception as error:  # any read failure of a complete step: its files are damaged
                raise UnreadableCheckpointError(os.path.join(step_dir, item), error) from error

        def restore_item(item: str, args) -> object:
            return read(
                item, lambda: getattr(self.manager.restore(step, args=ocp.args.Composite(**{item: args})), item)
            )

        operative_config = restore_item("operative_config", ocp.args.JsonRestore())
        saved_tree = read("state", lambda: pytree_metadata(os.path.join(step_dir, "state")))
        check_state_fits(
            step_dir, saved_tree, abstract_state, saved_config=operative_config["gin"], config_text=config_text
        )
        return {
            "operative_config": operative_config,
            "data_iterator": restore_item("data_iterator", ocp.args.JsonRestore()),
            "state": restore_item("state", ocp.args.StandardRestore(abstract_state)),
        }

    def _restore_latest_readable(self, abstract_state, config_text: str) -> tuple[int, dict]:
        """(step, items) of the latest step that every process reads; newer ones are warned about and moved aside."""
        unreadable: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                restored, failure = self._restore_step(step, abstract_state, config_text), None
            except UnreadableCheckpointError as error:
                restored, failure = None, str(error)
            if _every_process(failure is None):
                self._move_aside([s for s, _ in unreadable])
                return step, restored
            failure = failure or "another process could not read it"
            log.warning("checkpoint step %d does not restore (%s); trying the previous step", step, failure)
            unreadable.append((step, failure))
        if not unreadable:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        raise RuntimeError(
            f"no checkpoint under {self.directory} restores: "
            + "; ".join(f"step {s}: {failure}" for s, failure in unreadable)
            + ". Copy those files back from a backup, or set MODEL_DIR (train.model_dir) to a new directory to train "
            "from scratch."
        )

    def _move_aside(self, steps: list[int]) -> None:
        """Renames unreadable steps to `<step>.unreadable-<time>` (kept for inspection; not a step to Orbax), so that
        the resumed run can save those steps again."""
        if not steps:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if jax.process_index() == 0:
            for step in steps:
                target = epath.Path(self.directory, f"{step}.unreadable-{stamp}")
                epath.Path(self.directory, str(step)).rename(target)
                log.warning("moved unreadable checkpoint step %d aside to %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("maestro_jax.checkpoints.move_aside")
        self.manager.reload()

    def wait_until_finished(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
