"""Benchmark one jitted train step: compile time, per-device memory, FLOPs, steps/s and MFU.

    .venv/bin/python bench/train_step.py --gin_file=BENCH.gin [--gin.NAME=VALUE ...]

The gin files bind `bench_train_step.model`, `.objective` and `.make_data` exactly like `train.*` in a training run
(e.g. `bench_train_step.model = @SpeechTextModel()`), plus the mesh through `make_mesh.*`. The step is set up
and compiled by the same `trainer.setup_train_step` as a training run.
"""

import sys
import time

import gin
import jax
import numpy as np

from maestro_jax import metrics as metrics_lib
from maestro_jax import partitioning, trainer
from maestro_jax.gin_utils import configure_gin, parse_gin_flags


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
    setup = trainer.setup_train_step(model, optimizer, local, mesh, rules, seed=seed, use_ema=False)
    state = setup.initial_state(local)
    batch = partitioning.global_batch(local, mesh, rules)
    start = time.perf_counter()
    compiled, figures = setup.compile(trainer.make_train_step(model, objective, optimizer))
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
    argv = sys.argv[1:] if argv is None else argv
    gin_files, bindings = parse_gin_flags(argv, prog="bench/train_step.py", description=__doc__.splitlines()[0])
    configure_gin(gin_files, bindings)
    for name, value in bench_train_step().items():
        print(f"{name:>28}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
