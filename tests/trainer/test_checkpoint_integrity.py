"""Checkpoint integrity through maestro-train: SIGKILL while an async save is in flight, a checkpoint of another model
width, and (slow: MAESTRO_SLOW_TESTS=1 only) ten SIGKILLs at random steps of one run."""

import glob
import os
import random
import signal
import time

import gin
import jax
import numpy as np
import pytest
import trainer_toy as toy
from hold_checkpoint_commit import HOLDING_MESSAGE
from test_trainer_processes import STEPS, final_params, in_process_reference

from maestro_jax import checkpoints, metrics, partitioning, train, trainer
from maestro_jax.gin_utils import configure_gin


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    return in_process_reference(tmp_path_factory.mktemp("reference"), jax.devices()[:1])


def assert_same_params(model_dir, reference_dir, steps):
    step, params = final_params(model_dir)
    reference_step, reference = final_params(reference_dir)
    assert step == reference_step == steps
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def wait_until(process, condition, what, timeout_s=120):
    deadline = time.time() + timeout_s
    while not condition():
        assert process.poll() is None, f"training exited before {what}"
        assert time.time() < deadline, f"no {what} within {timeout_s}s"
        time.sleep(0.02)


def logged_rows(jsonl) -> list[dict]:
    return metrics.read_jsonl(jsonl) if os.path.exists(jsonl) else []


def train_in_process(gin_file, bindings=()):
    """train.train() as maestro-train configures it from `gin_file`, in this process on one device, from an empty,
    unlocked gin config (whatever ran before in this worker may have left one finalized)."""
    gin.clear_config()  # also unlocks
    configure_gin([gin_file], list(bindings))
    try:
        return train.train(mesh=partitioning.make_mesh(devices=jax.devices()[:1]))
    finally:
        gin.clear_config()


def kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_sigkill_during_an_async_save_restores_the_previous_complete_step(reference_run, tmp_path, monkeypatch, caplog):
    model_dir = tmp_path / "run"
    extra = "train.checkpoint_every_steps = 2"
    held_gin = toy.write_gin(str(tmp_path / "held.gin"), str(model_dir), train_steps=STEPS, extra=extra)
    with open(held_gin, "a") as f:
        f.write("import hold_checkpoint_commit\n")
    monkeypatch.setenv("HOLD_CHECKPOINT_COMMIT_FROM_STEP", "4")
    process = toy.start_cli(held_gin)
    try:
        wait_until(process, lambda: f"{HOLDING_MESSAGE} 4" in toy.read_log(held_gin), "held save of step 4")
    finally:
        kill(process)
    checkpoint_dir = model_dir / "checkpoints"
    in_flight = checkpoint_dir / "4.orbax-checkpoint-tmp"
    # Every item of step 4 is on disk; only Orbax's atomic rename, the commit, is missing.
    assert set(os.listdir(in_flight)) >= {"state", "data_iterator", "operative_config"}
    assert checkpoints.checkpoint_steps(str(checkpoint_dir)) == [2]
    assert checkpoints.Checkpointer(str(checkpoint_dir)).all_steps() == [2]

    gin_file = toy.write_gin(str(tmp_path / "run.gin"), str(model_dir), train_steps=STEPS, extra=extra)
    with caplog.at_level("INFO", logger=train.__name__):
        train_in_process(gin_file)
    assert "restored step 2 from" in caplog.text
    assert_same_params(model_dir, reference_run, STEPS)
    # The resumed run saved step 4 again, replacing the unfinished directory.
    assert not in_flight.exists() and 4 in checkpoints.checkpoint_steps(str(checkpoint_dir))


def test_resuming_with_another_model_width_stops_before_compiling(tmp_path, monkeypatch):
    gin_file = toy.write_gin(str(tmp_path / "run.gin"), str(tmp_path), train_steps=2)
    train_in_process(gin_file, ["ToyMLP.hidden = 32"])
    monkeypatch.setattr(trainer, "make_train_step", lambda *a, **k: pytest.fail("compiled a train step"))
    with pytest.raises(ValueError) as raised:
        train_in_process(gin_file, ["ToyMLP.hidden = 48"])
    message = str(raised.value)
    assert f"checkpoint {tmp_path}/checkpoints/2 does not fit this model: params/Dense_0/bias is (32,)" in message
    assert "but (48,) in this model" in message
    assert "ToyMLP.hidden = 32 there, 48 here" in message and "MODEL_DIR (train.model_dir)" in message


@pytest.mark.slow  # 3.5 min on 2 busy cores
def test_ten_sigkills_at_random_steps_resume_to_the_uninterrupted_run(tmp_path):
    steps = 40
    reference_dir = in_process_reference(tmp_path / "reference", jax.devices()[:1], train_steps=steps)
    reference_loss = {
        row["step"]: row["loss"] for row in metrics.read_jsonl(os.path.join(reference_dir, "metrics.jsonl"))
    }
    model_dir = tmp_path / "run"
    checkpoint_dir = str(model_dir / "checkpoints")
    jsonl = str(model_dir / "metrics.jsonl")
    extra = "ToyBatcher.delay_s = 0.05\ntrain.checkpoint_every_steps = 2"
    gin_file = toy.write_gin(str(tmp_path / "run.gin"), str(model_dir), train_steps=steps, extra=extra)
    rng = random.Random(0)
    lives = []  # (step it resumed from, last step it logged, whether a save of its own was in flight at the kill)
    for _ in range(10):
        resumed_from = max(checkpoints.checkpoint_steps(checkpoint_dir), default=0)
        kill_after = resumed_from + rng.randint(1, 4)
        rows_before = len(logged_rows(jsonl))
        started = time.time()
        process = toy.start_cli(gin_file)
        try:
            wait_until(
                process,
                lambda after=kill_after, skip=rows_before: any(
                    row["step"] >= after for row in logged_rows(jsonl)[skip:]
                ),
                f"step {kill_after}",
            )
            time.sleep(rng.uniform(0.0, 0.3))  # anywhere in the next steps, a save's included
        finally:
            kill(process)
        saving = [
            p
            for p in glob.glob(os.path.join(checkpoint_dir, "*.orbax-checkpoint-tmp"))
            if os.path.getmtime(p) > started
        ]
        lives.append((resumed_from, logged_rows(jsonl)[-1]["step"], bool(saving)))
    print("lives (resumed from, last logged step, killed during its save):", lives)
    assert toy.read_log(gin_file).count("restored step") == sum(start > 0 for start, _, _ in lives)
    train_in_process(gin_file)
    # Every life's losses equal the uninterrupted run's at the same steps: each resume continued the same run.
    rows = metrics.read_jsonl(jsonl)
    assert {row["step"] for row in rows} == set(reference_loss)
    for row in rows:
        np.testing.assert_allclose(row["loss"], reference_loss[row["step"]], rtol=1e-6, err_msg=f"step {row['step']}")
    assert_same_params(model_dir, reference_dir, steps)
