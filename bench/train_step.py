"""Benchmark one jitted train step: compile time, per-device memory, FLOPs, steps/s and MFU.

    .venv/bin/python bench/train_step.py --gin_file=BENCH.gin [--gin.NAME=VALUE ...]

The gin files bind `bench_train_step.model`, `.objective` and `.make_data` exactly like `train.*` in a training run
(e.g. `bench_train_step.model = @SpeechTextModel()`), plus the mesh through `make_mesh.*`. Without
maestro_jax.models.model.SpeechTextModel importable the benchmark prints why it is skipped and exits 0.
"""

import importlib
import sys
import time

import gin
import jax
import numpy as np

from maestro_jax import metrics as metrics_lib
from maestro_jax import partitioning, trainer
from maestro_jax.cli import train as cli


@gin.configurable
def bench_train_step(
    *, model=gin.REQUIRED, objective=gin.REQUIRED, make_data=gin.REQUIRED, steps: int = 20, seed: int = 0
) -> dict:
    """Times `steps` train steps after an AOT compile; returns the figures it prints."""
    rules = partitioning.logical_axis_rules()
    mesh = partitioning.make_mesh()
    optimizer = trainer.make_optimizer()
    data = make_data(jax.process_index(), jax.process_count(), seed)
    local = next(data)
    abstract_batch = partitioning.abstract_global_batch(local, mesh, rules)
    init_fn = trainer.make_init_fn(model, optimizer, use_ema=False)
    rng = jax.random.PRNGKey(seed)
    abstract_state, shardings = trainer.abstract_and_shardings(init_fn, rng, abstract_batch, mesh, rules)
    batch = partitioning.global_batch(local, mesh, rules)
    state = trainer.initialize_state(init_fn, rng, batch, shardings, mesh, rules)
    step_fn = trainer.make_train_step(model, objective, optimizer)
    jitted = trainer.jit_train_step(step_fn, shardings, jax.tree.map(lambda x: x.sharding, abstract_batch), mesh)
    start = time.perf_counter()
    compiled, figures = trainer.compile_ahead_of_time(jitted, abstract_state, abstract_batch, mesh, rules)
    figures["compile_s"] = time.perf_counter() - start
    state, step_metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(step_metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, step_metrics = compiled(state, partitioning.global_batch(next(data), mesh, rules))
    jax.block_until_ready(step_metrics)
    figures["steps_per_second"] = steps / (time.perf_counter() - start)
    examples_per_step = sum(next(iter(stream.values())).shape[0] for stream in batch.values())
    figures["examples_per_second"] = figures["steps_per_second"] * examples_per_step
    peak, source = metrics_lib.peak_flops_per_device(mesh.devices.flat[0])
    figures["peak_flops_per_device"], figures["peak_source"] = peak, source
    if "flops_per_step" in figures:
        figures["mfu"] = metrics_lib.model_flops_utilization(
            figures["flops_per_step"], figures["steps_per_second"], peak
        )
    figures["final_loss"] = float(np.asarray(step_metrics["loss"]))
    figures["device"] = f"{jax.device_count()} x {mesh.devices.flat[0].device_kind}"
    return figures


def main(argv=None) -> int:
    try:
        importlib.import_module("maestro_jax.models.model").SpeechTextModel  # noqa: B018
    except (ImportError, AttributeError) as error:
        print(f"skipped: maestro_jax.models.model.SpeechTextModel is not importable yet ({error})")
        return 0
    gin_files, bindings = cli.parse_args(sys.argv[1:] if argv is None else argv)
    cli.configure_gin(gin_files, bindings)
    for name, value in bench_train_step().items():
        print(f"{name:>28}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
