"""The gin-configurable training loop: data, init/restore, AOT compile, steps, metrics, eval, checkpoints, preemption.

Generic over the model (a Flax module), the objective (`objective(model, variables, batch, rng, step) ->
(loss, metrics)`) and the data (`make_data(process_index, process_count, seed)` -> a batcher with `__next__`,
`get_state()` and `set_state(dict)`, and optionally `combine_states(list of every process's state) -> dict` to resume
on another process count), all bound through gin.
"""

import logging
import os
import signal
import time
from collections.abc import Callable

import flax.linen as nn
import gin
import jax
import numpy as np
import optax
from jax.sharding import Mesh

from maestro_jax import checkpoints, metrics, partitioning, paths, trainer
from maestro_jax.data import tokenizer

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


class _PreemptionFlag:
    """Set by SIGTERM (single-process runs); the loop saves at the next step boundary and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if jax.process_count() == 1:
            # Multi-process runs leave SIGTERM to JAX's preemption notifier, which agrees on a step across processes.
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@gin.configurable
def preemption_exit_code(code: int = 42) -> int:
    """maestro-train's exit status when train() stopped early after a preemption save (a finished run exits 0).

    42 is the code xpk restarts a workload on; launch/slurm_gpu.sbatch requeues the job on it (launch/README.md).
    """
    if not 0 < code < 256:
        raise ValueError(f"preemption_exit_code.code={code} is not an exit status in 1..255; bind one (default 42).")
    return code


def _write_operative_config(model_dir: str) -> str:
    text = gin.operative_config_str()
    if jax.process_index() == 0:
        paths.as_path(os.path.join(model_dir, "operative_config.gin")).write_text(text)
    return text


@gin.configurable(denylist=["mesh"])
def train(
    *,
    model_dir: str = gin.REQUIRED,
    model: nn.Module = gin.REQUIRED,
    objective: Callable = gin.REQUIRED,
    make_data: Callable = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    seed: int = 0,
    learning_rate_schedule: optax.Schedule | None = None,
    optimizer: optax.GradientTransformation | None = None,
    num_microbatches: int = 1,
    ema_decay: float | None = None,
    max_consecutive_nonfinite: int = 10,
    checkpoint_every_steps: int = 1000,
    keep_checkpoints: int = 3,
    keep_best_checkpoints: int = 0,
    best_metric: str = "loss",
    best_mode: str = "min",
    async_checkpointing: bool = True,
    log_every_steps: int = 10,
    eval_fn: Callable | None = None,
    eval_every_steps: int = 0,
    progress_bar: bool = True,
    tensorboard: bool = True,
    init_hooks: tuple[Callable, ...] = (),
    mesh: Mesh | None = None,
) -> trainer.TrainState:
    """Trains until `train_steps` (resuming from the latest checkpoint in model_dir/checkpoints) and returns the state;
    a model_dir whose latest checkpoint already reaches `train_steps` is restored and returned without training.

    model_dir: where checkpoints/, metrics.jsonl, tensorboard/, operative_config.gin and loss_curves.png go; a local
    directory or a URL such as gs://bucket/run (`paths`).
    train_steps: total optimizer steps, counted across restarts. seed: init, step rng and data shuffling.
    learning_rate_schedule: default `trainer.make_learning_rate_schedule()`; logged, and used by the default
    optimizer `trainer.make_optimizer(learning_rate=learning_rate_schedule)`.
    num_microbatches: gradient accumulation splits of each batch.
    ema_decay: keep an EMA of params with this decay (None: off). max_consecutive_nonfinite: stop after this many
    skipped steps in a row. checkpoint_every_steps / keep_checkpoints / keep_best_checkpoints by best_metric
    (best_mode "min" or "max"; an "eval/..." name ranks by eval metrics). log_every_steps: metrics cadence.
    eval_fn(model, variables, step) -> dict of scalars, run every eval_every_steps (0: only at the end).
    init_hooks: functions variables -> variables run after model.init (e.g. `init_teacher_from_checkpoint`).
    mesh: defaults to `partitioning.make_mesh()` (gin-configurable sizes).
    """
    model_dir = paths.resolve(model_dir)
    paths.makedirs(model_dir)
    rules = partitioning.logical_axis_rules()
    mesh = partitioning.make_mesh() if mesh is None else mesh
    if learning_rate_schedule is None:
        learning_rate_schedule = trainer.make_learning_rate_schedule()
    if optimizer is None:
        optimizer = trainer.make_optimizer(learning_rate=learning_rate_schedule)
    data = make_data(jax.process_index(), jax.process_count(), seed)
    _check_vocab_size(model, data)

    # Peek one batch for shapes, then rewind so the loop sees it again.
    initial_data_state = data.get_state()
    first_local_batch = next(data)
    data.set_state(initial_data_state)
    setup = trainer.setup_train_step(
        model,
        optimizer,
        first_local_batch,
        mesh,
        rules,
        seed=seed,
        use_ema=ema_decay is not None,
        init_hooks=init_hooks,
    )

    checkpointer = checkpoints.Checkpointer(
        os.path.join(model_dir, "checkpoints"),
        save_interval_steps=checkpoint_every_steps,
        max_to_keep=keep_checkpoints,
        keep_best=keep_best_checkpoints,
        best_metric=best_metric,
        best_mode=best_mode,
        async_save=async_checkpointing,
    )
    if checkpointer.latest_step() is not None:
        state, data_state, _ = checkpointer.restore(
            None,
            setup.abstract_state,
            combine_data_states=getattr(data, "combine_states", None),  # resumable on another process count
            config_text=gin.operative_config_str(),
        )
        data.set_state(data_state)
        log.info("restored step %d from %s", int(state.step), checkpointer.directory)
        if int(state.step) >= train_steps:  # nothing to train: skip compiling the step
            log.info("step %d already reaches train_steps=%d; not training", int(state.step), train_steps)
            checkpointer.close()
            _close_data(data)
            return state
    else:
        state = setup.initial_state(first_local_batch)

    train_step = trainer.make_train_step(
        model,
        objective,
        optimizer,
        num_microbatches=num_microbatches,
        ema_decay=ema_decay,
        learning_rate_schedule=learning_rate_schedule,
    )
    peak_flops, peak_source = metrics.peak_flops_per_device(mesh.devices.flat[0])
    # One executable per batch shape: a batcher with length buckets feeds a few shapes, each compiled on first sight.
    executables: dict[tuple, tuple[Callable, dict]] = {}

    def executable_for(local_batch) -> tuple[Callable, dict]:
        key = tuple(
            (jax.tree_util.keystr(path), x.shape) for path, x in jax.tree_util.tree_leaves_with_path(local_batch)
        )
        if key not in executables:
            executables[key] = setup.compile(train_step, local_batch)
            log.info(
                "train step compiled for %s: %s; peak %.3g FLOP/s per device (%s)",
                dict(key),
                executables[key][1],
                peak_flops,
                peak_source,
            )
        return executables[key]

    executable_for(first_local_batch)

    writer = metrics.MetricsWriter(model_dir, tensorboard=tensorboard)
    preemption = _PreemptionFlag()
    step = int(state.step)
    bar = metrics.ProgressBar(initial=step, total=train_steps, enabled=progress_bar)
    config_text = None
    window: list[dict] = []
    window_flops: list[float] = []  # XLA's FLOP count of each step's executable since the last log line
    last_logged = {"time": time.perf_counter(), "step": step}
    last_metrics: dict = {}

    def handle_step_metrics(done_step: int, step_metrics, flops: float | None) -> None:
        nonlocal last_metrics
        host = {k: float(np.asarray(v)) for k, v in jax.device_get(step_metrics).items()}
        last_metrics = host
        window.append(host)
        if flops is not None:
            window_flops.append(flops)
        bar.update(1, loss=host["loss"])
        if host["consecutive_skipped"] >= max_consecutive_nonfinite:
            raise NonFiniteTrainingError(
                f"{int(host['consecutive_skipped'])} consecutive steps up to step {done_step} had a non-finite loss "
                f"or gradient norm (loss={host['loss']}, grad_norm={host['grad_norm']}); the last checkpoint in "
                f"{checkpointer.directory} holds finite params. Lower make_learning_rate_schedule.peak_learning_rate, "
                "check the data, or raise train.max_consecutive_nonfinite."
            )
        if done_step % log_every_steps == 0 or done_step == train_steps:
            now = time.perf_counter()
            steps_per_second = (done_step - last_logged["step"]) / max(now - last_logged["time"], 1e-9)
            last_logged.update(time=now, step=done_step)
            summary = {k: float(np.mean([row[k] for row in window])) for k in window[-1]}
            summary.update(
                skipped_steps=host["skipped_steps"],
                consecutive_skipped=host["consecutive_skipped"],
                steps_per_second=steps_per_second,
            )
            if window_flops:
                summary["mfu"] = metrics.model_flops_utilization(
                    float(np.mean(window_flops)), steps_per_second, peak_flops
                )
            writer.write(done_step, summary)
            window.clear()
            window_flops.clear()

    def run_eval(done_step: int) -> dict:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            results = eval_fn(model, state.variables(use_ema=ema_decay is not None), done_step)
        results = {f"eval/{k}": float(v) for k, v in results.items()}
        writer.write(done_step, results)
        return results

    pending = None
    try:
        while step < train_steps:
            try:
                local_batch = next(data)
            except StopIteration:
                raise RuntimeError(
                    f"the data from train.make_data ran out after {step} of {train_steps} steps; make it repeat "
                    "(e.g. more epochs) or lower train.train_steps."
                ) from None
            compiled, compile_figures = executable_for(local_batch)
            batch = partitioning.global_batch(local_batch, mesh, rules)
            state, step_metrics = compiled(state, batch)
            step += 1
            # Host-side bookkeeping for step s-1 overlaps the device running step s.
            if pending is not None:
                handle_step_metrics(*pending)
            pending = (step, step_metrics, compile_figures.get("flops_per_step"))
            if config_text is None:
                config_text = _write_operative_config(model_dir)
                writer.write_text("operative_config", config_text)
            eval_metrics = {}
            if eval_fn is not None and ((eval_every_steps and step % eval_every_steps == 0) or step == train_steps):
                eval_metrics = run_eval(step)
            preempted = preemption.requested or checkpointer.reached_preemption(step)
            if preempted or step == train_steps or step % checkpoint_every_steps == 0:
                handle_step_metrics(*pending)
                pending = None
                _save_if_finite(
                    checkpointer, step, state, data, config_text, {**last_metrics, **eval_metrics}, force=True
                )
            if preempted:
                log.warning("preemption requested: saved step %d, stopping", step)
                break
        if pending is not None:
            handle_step_metrics(*pending)
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()
        preemption.restore()
        bar.close()
        writer.close()
        _close_data(data)
    if jax.process_index() == 0 and paths.as_path(writer.jsonl_path).exists():
        metrics.plot_loss_curves(writer.jsonl_path, os.path.join(model_dir, "loss_curves.png"))
    return state


def _check_vocab_size(model: nn.Module, data) -> None:
    """Stops before anything compiles when a stream's tokenizer (data with `tokenizer_files`, e.g. MultiStreamBatcher)
    has another size than the model's vocab_size (tokenizer.check_model_vocab_size)."""
    for path in dict.fromkeys(getattr(data, "tokenizer_files", {}).values()):
        tokenizer.check_model_vocab_size(path, model)


def _close_data(data) -> None:
    """Stops a batcher's prefetch thread (MultiStreamBatcher.close), so a caller that goes on to evaluate in the same
    process does not keep it and its dataset readers alive."""
    if hasattr(data, "close"):
        data.close()


def _save_if_finite(checkpointer, step, state, data, config_text, step_metrics, *, force):
    if not trainer.all_finite(state.params):
        log.error("step %d: params hold non-finite values; not checkpointing them", step)
        return
    checkpointer.save(
        step, state, data_state=data.get_state(), config_text=config_text, metrics=step_metrics, force=force
    )
