"""maestro-train in subprocesses: SIGKILL + restart, SIGTERM (saves, exits 42), 2 processes x 2 devices, the exit
status, and configuration errors."""

import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import trainer_toy as toy

from maestro_jax import checkpoints, metrics, partitioning, train, trainer
from maestro_jax.cli import train as cli

STEPS = 8


def wait_for_step(process, model_dir, step, timeout_s=120):
    deadline = time.time() + timeout_s
    while toy.last_logged_step(model_dir) < step:
        assert process.poll() is None, "training exited before the step the test waits for"
        assert time.time() < deadline, f"no step {step} within {timeout_s}s"
        time.sleep(0.05)


def final_params(model_dir):
    """(latest step, params) of a run's last checkpoint, restored onto one device."""
    mesh = partitioning.make_mesh(devices=jax.devices()[:1])
    rules = partitioning.logical_axis_rules()
    abstract_batch = partitioning.abstract_global_batch(next(toy.ToyBatcher(0, 1, 0)), mesh, rules)
    init_fn = trainer.make_init_fn(toy.ToyMLP(), trainer.make_optimizer(), use_ema=False)
    abstract, _ = trainer.abstract_and_shardings(init_fn, jax.random.PRNGKey(0), abstract_batch, mesh, rules)
    state, _, _ = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints")).restore(
        None, abstract, data_iterator=False
    )
    return int(state.step), jax.device_get(state.params)


def in_process_reference(model_dir, devices, train_steps=STEPS):
    """The same run as `toy.write_gin` describes, uninterrupted and in this process, on `devices`."""
    schedule = trainer.make_learning_rate_schedule(peak_learning_rate=0.01, warmup_steps=2)
    train.train(
        model_dir=str(model_dir),
        model=toy.ToyMLP(),
        objective=toy.toy_objective,
        make_data=toy.ToyBatcher,
        train_steps=train_steps,
        learning_rate_schedule=schedule,
        log_every_steps=1,
        progress_bar=False,
        tensorboard=False,
        mesh=partitioning.make_mesh(fsdp=2 if len(devices) > 1 else 1, devices=devices),
    )
    return model_dir


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    return in_process_reference(tmp_path_factory.mktemp("reference"), jax.devices()[:1])


def test_sigkill_then_restart_ends_with_uninterrupted_params(reference_run, tmp_path):
    extra = "ToyBatcher.delay_s = 0.25\ntrain.checkpoint_every_steps = 2"
    gin_file = toy.write_gin(str(tmp_path / "run.gin"), str(tmp_path), train_steps=STEPS, extra=extra)
    process = toy.start_cli(gin_file)
    wait_for_step(process, tmp_path, 3)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    killed_at = toy.last_logged_step(tmp_path)
    assert killed_at < STEPS
    restarted = toy.start_cli(gin_file)
    assert restarted.wait(timeout=300) == 0, toy.read_log(gin_file)
    assert "restored step" in toy.read_log(gin_file)
    step, params = final_params(tmp_path)
    reference_step, reference = final_params(reference_run)
    assert step == reference_step == STEPS
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_sigterm_saves_complete_checkpoint_and_exits_with_the_preemption_code(tmp_path):
    """xpk restarts a workload that exits 42 and slurm_gpu.sbatch requeues it; a clean 0 would end the job."""
    extra = "ToyBatcher.delay_s = 0.3\ntrain.checkpoint_every_steps = 1000"
    gin_file = toy.write_gin(str(tmp_path / "run.gin"), str(tmp_path), train_steps=STEPS, extra=extra)
    process = toy.start_cli(gin_file)
    wait_for_step(process, tmp_path, 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 42, toy.read_log(gin_file)
    checkpointer = checkpoints.Checkpointer(os.path.join(tmp_path, "checkpoints"))
    step = checkpointer.latest_step()
    assert 3 <= step < STEPS
    assert set(os.listdir(os.path.join(tmp_path, "checkpoints", str(step)))) >= {
        "state",
        "data_iterator",
        "operative_config",
    }
    config = checkpointer.manager.restore(
        step,
        args=checkpoints.ocp.args.Composite(
            operative_config=checkpoints.ocp.args.JsonRestore(), data_iterator=checkpoints.ocp.args.JsonRestore()
        ),
    )
    assert "train.train_steps = 8" in config.operative_config["gin"]
    assert config.data_iterator == {"process_0": {"position": step}}


def test_exit_status_is_zero_when_done_and_the_preemption_code_after_stopping_early(tmp_path, monkeypatch):
    """main's status from where train() stopped (train() stubbed here; the test above runs it for real)."""
    import gin

    gin_file = toy.write_gin(str(tmp_path / "run.gin"), str(tmp_path), train_steps=STEPS)
    monkeypatch.setattr(cli.metrics, "log_to_stderr", lambda: None)
    monkeypatch.setattr(cli.distributed, "initialize_distributed", lambda: False)
    cases = [(STEPS, [], 0), (3, [], 42), (3, ["--gin.preemption_exit_code.code=7"], 7)]
    try:
        for stopped_at, flags, status in cases:
            monkeypatch.setattr(train, "train", lambda step=stopped_at: SimpleNamespace(step=np.int32(step)))
            gin.clear_config()  # also unlocks what main() finalized
            assert cli.main([f"--gin_file={gin_file}", *flags]) == status, (stopped_at, flags)
        gin.clear_config()
        with pytest.raises(ValueError, match=r"preemption_exit_code.code=0 is not an exit status in 1..255"):
            cli.main([f"--gin_file={gin_file}", "--gin.preemption_exit_code.code=0"])
    finally:
        gin.clear_config()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path_factory):
    one = in_process_reference(tmp_path_factory.mktemp("one_process_4dev"), jax.devices()[:4])
    model_dir = tmp_path_factory.mktemp("two_processes")
    port = free_port()
    extra = f"make_mesh.fsdp = 2\ninitialize_distributed.coordinator_address = 'localhost:{port}'\n"
    extra += "initialize_distributed.num_processes = 2\ninitialize_distributed.initialization_timeout_s = 60"
    gin_file = toy.write_gin(str(model_dir / "run.gin"), str(model_dir), train_steps=STEPS, extra=extra)
    processes = [
        toy.start_cli(gin_file, num_devices=2, bindings=[f"--gin.initialize_distributed.process_id={i}"])
        for i in range(2)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0], toy.read_log(gin_file)
    losses = [row["loss"] for row in metrics.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))]
    reference = [row["loss"] for row in metrics.read_jsonl(os.path.join(one, "metrics.jsonl"))]
    assert len(losses) == STEPS
    np.testing.assert_allclose(losses, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(final_params(model_dir)[1]), jax.tree.leaves(final_params(one)[1])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # about 2 min on 2 cores
def test_sigterm_to_local_multiprocess_saves_on_both_exits_42_and_a_rerun_finishes(tmp_path):
    """The whole path on CPU: the launcher forwards SIGTERM, JAX's preemption sync picks one step for both processes,
    both save it and exit 42, and the same command resumes to the end (tests/launch/ covers the launcher alone)."""
    steps = 40  # the sync point lands a few steps after the signal
    extra = "ToyBatcher.delay_s = 0.3\ntrain.checkpoint_every_steps = 1000\nmake_mesh.fsdp = 2\n"
    extra += "initialize_distributed.initialization_timeout_s = 60"
    gin_file = toy.write_gin(str(tmp_path / "run.gin"), str(tmp_path), train_steps=steps, extra=extra)

    def launch():
        env = {**toy.cli_env(2), "PORT": str(free_port()), "PYTHON": sys.executable}
        log = open(gin_file + ".log", "ab")
        args = ["bash", "launch/local_multiprocess.sh", "2", f"--gin_file={gin_file}"]
        return subprocess.Popen(args, cwd=toy.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    launcher = launch()
    wait_for_step(launcher, tmp_path, 3)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=180) == 42, toy.read_log(gin_file)
    saved = checkpoints.Checkpointer(os.path.join(tmp_path, "checkpoints")).latest_step()
    assert 3 <= saved < steps
    assert toy.read_log(gin_file).count(f"preemption requested: saved step {saved}, stopping") == 2
    assert launch().wait(timeout=300) == 0, toy.read_log(gin_file)
    assert final_params(tmp_path)[0] == steps


def test_unknown_gin_binding_names_binding_and_file(tmp_path):
    import gin

    gin_file = tmp_path / "bad.gin"
    gin_file.write_text("train.train_stepz = 3\n")
    try:
        with pytest.raises(cli.GinConfigError, match=r"gin file '.*bad.gin'.*train_stepz"):
            cli.configure_gin([str(gin_file)], [])
        gin.clear_config()
        with pytest.raises(cli.GinConfigError, match=r"--gin.make_optimizer.nme=3"):
            cli.configure_gin([], ["make_optimizer.nme = 3"])
    finally:
        gin.clear_config()


def test_unreachable_coordinator_error_names_address():
    port = free_port()
    code = (
        "from maestro_jax import distributed\n"
        f"distributed.initialize_distributed(coordinator_address='127.0.0.1:{port}', num_processes=2, process_id=1,"
        " initialization_timeout_s=3)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=toy.cli_env(1),
        cwd=toy.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"could not join the JAX coordinator at 127.0.0.1:{port} within 3s" in result.stderr


def test_run_gin_files_parse_and_cli_bindings_override_them():
    import gin

    try:
        # A run file goes after an experiment (it no longer re-includes default.gin).
        cli.configure_gin(
            ["gin/experiments/tiny_supervised.gin", "runs/cpu_debug.gin"], ["TRAIN_STEPS = 7", "make_mesh.fsdp = 2"]
        )
        assert (
            gin.query_parameter("%TRAIN_STEPS") == 7 and str(gin.query_parameter("train.train_steps")) == "%TRAIN_STEPS"
        )
        assert gin.query_parameter("%WARMUP_STEPS") == 5
        assert gin.query_parameter("make_mesh.fsdp") == 2
    finally:
        gin.clear_config()
    assert cli.parse_args(["--gin_file=a.gin", "--gin.X=1", "--gin.y.z='s'"]) == (["a.gin"], ["X = 1", "y.z = 's'"])
