"""The training loop in-process on 8 simulated devices: mesh equivalence, NaN guard, restore on fewer devices."""

import functools
import glob
import os

import jax
import numpy as np
import pytest
import trainer_toy as toy

from maestro_jax import checkpoints, metrics, partitioning, train, trainer

STEPS = 5


def run(model_dir, mesh, *, steps=STEPS, make_data=toy.ToyBatcher, **kwargs):
    options = dict(log_every_steps=1, progress_bar=False, tensorboard=False, checkpoint_every_steps=2)
    options.update(kwargs)
    state = train.train(
        model_dir=str(model_dir),
        model=toy.ToyMLP(),
        objective=toy.toy_objective,
        make_data=make_data,
        train_steps=steps,
        learning_rate_schedule=trainer.make_learning_rate_schedule(peak_learning_rate=0.02, warmup_steps=2),
        mesh=mesh,
        **options,
    )
    losses = [row["loss"] for row in metrics.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))]
    return state, np.asarray(losses)


def read_tensorboard(log_dir) -> dict[str, list[tuple[int, np.ndarray]]]:
    """{tag: [(step, value), ...] in the order written} of every summary in log_dir's event files."""
    import tensorflow as tf

    logged = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                logged.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return logged


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("one_device")
    state, losses = run(model_dir, partitioning.make_mesh(devices=jax.devices()[:1]), tensorboard=True)
    return model_dir, jax.device_get(state.params), losses


@pytest.mark.parametrize("sizes", [dict(data=8), dict(data=2, fsdp=2, tensor=2)], ids=["data8", "2x2x2"])
def test_eight_devices_match_one_device(single_device_run, tmp_path, sizes):
    _, reference_params, reference_losses = single_device_run
    state, losses = run(tmp_path, partitioning.make_mesh(**sizes))
    assert len(losses) == STEPS and reference_losses[-1] < reference_losses[0]
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(reference_params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_run_writes_metrics_config_plot_and_checkpoints(single_device_run):
    model_dir, _, _ = single_device_run
    rows = metrics.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert {"loss", "mse", "grad_norm", "learning_rate", "steps_per_second", "mfu", "skipped_steps"} <= set(rows[0])
    np.testing.assert_allclose([row["learning_rate"] for row in rows[:3]], [0.01, 0.02, 0.02 * np.sqrt(2 / 3)], 1e-5)
    logged = read_tensorboard(os.path.join(model_dir, "tensorboard"))
    with open(os.path.join(model_dir, "operative_config.gin")) as f:
        assert [(step, value.item().decode()) for step, value in logged.pop("operative_config")] == [(0, f.read())]
    # TensorBoard holds exactly the scalars of metrics.jsonl, at the same steps.
    assert set(logged) == set(rows[0]) - {"step"}
    for tag, points in logged.items():
        assert [step for step, _ in points] == [row["step"] for row in rows], tag
        np.testing.assert_allclose([value for _, value in points], [row[tag] for row in rows], rtol=1e-6, err_msg=tag)
    assert os.path.getsize(os.path.join(model_dir, "loss_curves.png")) > 1000
    assert sorted(checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints")).all_steps()) == [2, 4, 5]


def test_rerun_at_train_steps_restores_without_compiling(single_device_run, monkeypatch):
    model_dir, reference_params, _ = single_device_run

    def no_compiling(*args, **kwargs):
        raise AssertionError("a finished run compiled its train step again")

    monkeypatch.setattr(trainer, "compile_ahead_of_time", no_compiling)
    rows_before = metrics.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
    for steps in (STEPS, STEPS - 2):  # equal to, and short of, the saved step
        state, _ = run(model_dir, partitioning.make_mesh(devices=jax.devices()[:1]), steps=steps)
        assert int(state.step) == STEPS
    for got, want in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(reference_params)):
        np.testing.assert_array_equal(got, want)
    assert metrics.read_jsonl(os.path.join(model_dir, "metrics.jsonl")) == rows_before


def test_injected_nan_is_skipped_counted_and_never_checkpointed(tmp_path):
    make_data = functools.partial(toy.ToyBatcher, nan_at_steps=(1, 2))
    mesh = partitioning.make_mesh(devices=jax.devices()[:2])
    final_state, _ = run(tmp_path, mesh, steps=4, make_data=make_data, checkpoint_every_steps=1, keep_checkpoints=10)
    rows = metrics.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [row["skipped_steps"] for row in rows] == [0, 1, 2, 2]
    assert not np.isfinite(rows[1]["loss"]) and np.isfinite(rows[3]["loss"])
    checkpointer = checkpoints.Checkpointer(os.path.join(tmp_path, "checkpoints"))
    assert sorted(checkpointer.all_steps()) == [1, 2, 3, 4]
    for step in checkpointer.all_steps():
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), final_state)
        state, _, _ = checkpointer.restore(step, abstract)
        assert trainer.all_finite(state.params) and trainer.all_finite(state.opt_state)


def test_consecutive_nans_stop_training_with_clear_error(tmp_path):
    make_data = functools.partial(toy.ToyBatcher, nan_at_steps=(1, 2, 3))
    mesh = partitioning.make_mesh(devices=jax.devices()[:1])
    with pytest.raises(train.NonFiniteTrainingError, match="2 consecutive steps up to step 3"):
        run(tmp_path, mesh, steps=6, make_data=make_data, max_consecutive_nonfinite=2)


def test_checkpoint_from_four_devices_restores_and_resumes_on_one(tmp_path):
    four = partitioning.make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
    state4, _ = run(tmp_path, four, steps=2)
    assert {len(x.addressable_shards) for x in jax.tree.leaves(state4.params)} == {4}
    params4 = jax.device_get(state4.params)
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    state1, _ = run(tmp_path, one, steps=3)
    assert int(state1.step) == 3
    rows = metrics.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(state1.params))
    checkpointer = checkpoints.Checkpointer(os.path.join(tmp_path, "checkpoints"))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
        state4,
    )
    restored, data_state, config = checkpointer.restore(2, abstract)
    assert data_state == {"position": 2} and isinstance(config, str)
    for got, want in zip(jax.tree.leaves(restored.params), jax.tree.leaves(params4)):
        np.testing.assert_array_equal(got, want)
