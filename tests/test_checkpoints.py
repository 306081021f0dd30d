"""checkpoints.py as the one restore path: step listing, step choice and params-only restores (host or sharded)."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from maestro_jax import checkpoints

TREE = {
    "params": {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
    "opt_state": {"mu": np.full(4, 0.5, np.float32)},
    "model_state": {},
}


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoints")
    for step in (3, 10):
        tree = {**TREE, "params": {"dense": {"kernel": TREE["params"]["dense"]["kernel"] + step}}}
        ocp.PyTreeCheckpointer().save(os.path.join(directory, str(step), "state"), tree)
    (directory / "tmp_not_a_step").mkdir()
    return str(directory)


def test_steps_are_listed_in_order_and_chosen_by_name(checkpoint_dir, tmp_path):
    assert checkpoints.checkpoint_steps(checkpoint_dir) == [3, 10]
    assert checkpoints.checkpoint_steps(str(tmp_path / "missing")) == []
    assert checkpoints.find_step(checkpoint_dir) == 10
    assert checkpoints.find_step(checkpoint_dir, 3) == 3
    with pytest.raises(FileNotFoundError, match=r"has steps \[3, 10\], not 4; change teacher.step"):
        checkpoints.find_step(checkpoint_dir, 4, step_option="teacher.step")
    with pytest.raises(FileNotFoundError, match="no checkpoints under .*train first"):
        checkpoints.find_step(str(tmp_path))


def test_restore_pytree_whole_or_some_entries_on_host_or_a_sharding(checkpoint_dir):
    path = os.path.join(checkpoint_dir, "3", "state")
    whole = checkpoints.restore_pytree(path)
    assert set(whole) == {"params", "opt_state", "model_state"}
    np.testing.assert_array_equal(whole["opt_state"]["mu"], TREE["opt_state"]["mu"])
    host = checkpoints.restore_pytree(path, keys=("params", "model_state"))
    assert set(host) == {"params", "model_state"} and isinstance(host["params"]["dense"]["kernel"], np.ndarray)
    np.testing.assert_array_equal(host["params"]["dense"]["kernel"], TREE["params"]["dense"]["kernel"] + 3)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[-1])
    placed = checkpoints.restore_pytree(path, keys=("params",), sharding=sharding)
    kernel = placed["params"]["dense"]["kernel"]
    assert isinstance(kernel, jax.Array) and kernel.sharding == sharding
    np.testing.assert_array_equal(np.asarray(kernel), TREE["params"]["dense"]["kernel"] + 3)


def test_restore_inference_variables_takes_the_latest_params_without_optimizer(checkpoint_dir):
    variables = checkpoints.restore_inference_variables(checkpoint_dir)
    assert set(variables) == {"params"}
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["dense"]["kernel"]), TREE["params"]["dense"]["kernel"] + 10
    )
    with pytest.raises(ValueError, match="holds no 'ema_params'.*drop --use_ema"):
        checkpoints.restore_inference_variables(checkpoint_dir, 3, use_ema=True)


def small_state(step: int, width: int = 64) -> dict:
    """A TrainState-like tree big enough that its kernel gets its own data file (small values are inlined)."""
    kernel = np.arange(width * width, dtype=np.float32).reshape(width, width) + step
    return {"params": {"dense": {"kernel": kernel}}, "step": np.asarray(step, np.int32)}


def abstract_of(state: dict) -> dict:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def save_steps(directory, steps, config_text="ToyMLP.hidden = 32\ntrain.train_steps = 8\n"):
    checkpointer = checkpoints.Checkpointer(str(directory))
    for step in steps:
        checkpointer.save(step, small_state(step), data_state={"position": step}, config_text=config_text, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()


def truncate_largest_array_file(step_dir) -> None:
    """Halves the largest data file of a step's state (its arrays' chunks), as a disk that filled up would."""
    data_dir = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    path = max((os.path.join(data_dir, name) for name in os.listdir(data_dir)), key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_resume_falls_back_past_a_truncated_checkpoint_with_a_warning(tmp_path, caplog):
    save_steps(tmp_path, (1, 2))
    truncate_largest_array_file(tmp_path / "2")
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    with caplog.at_level("WARNING", logger=checkpoints.__name__):
        state, data_state, config = checkpointer.restore(None, abstract_of(small_state(0)))
    np.testing.assert_array_equal(
        np.asarray(state["params"]["dense"]["kernel"]), small_state(1)["params"]["dense"]["kernel"]
    )
    assert data_state == {"position": 1} and "ToyMLP.hidden = 32" in config
    warning = next(r.getMessage() for r in caplog.records if "does not restore" in r.getMessage())
    # The step, the item directory and the error (TensorStore's: the array and the database it failed on).
    assert f"checkpoint step 2 does not restore ({tmp_path}/2/state: " in warning
    assert 'Error reading "params.dense.kernel' in warning and "not valid for value of size" in warning, warning
    # Moved aside, so the resumed run can save step 2 again.
    assert checkpointer.all_steps() == [1] and checkpoints.checkpoint_steps(str(tmp_path)) == [1]
    assert [name for name in os.listdir(tmp_path) if name.startswith("2.unreadable-")]
    checkpointer.save(2, small_state(2), data_state={"position": 2}, config_text="", force=True)
    checkpointer.wait_until_finished()
    state, _, _ = checkpointer.restore(None, abstract_of(small_state(0)))
    assert int(state["step"]) == 2
    checkpointer.close()


def test_resume_with_no_readable_checkpoint_raises_and_moves_nothing(tmp_path):
    save_steps(tmp_path, (1,))
    truncate_largest_array_file(tmp_path / "1")
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    with pytest.raises(
        RuntimeError, match=rf"no checkpoint under {tmp_path} restores: step 1: {tmp_path}/1/state: .*MODEL_DIR"
    ):
        checkpointer.restore(None, abstract_of(small_state(0)))
    assert checkpoints.checkpoint_steps(str(tmp_path)) == [1]
    checkpointer.close()


def test_a_checkpoint_of_another_model_shape_names_the_array_the_shapes_and_the_bindings(tmp_path):
    # gin wraps long values onto indented lines; they are compared whole.
    save_steps(
        tmp_path, (1,), config_text="ToyMLP.hidden = 32\ntrain.init_hooks = \\\n    (@hook_a,)\ntrain.train_steps = 8\n"
    )
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    wider = abstract_of(small_state(0, width=96))
    this_run = "ToyMLP.hidden = 96\ntrain.init_hooks = (@hook_b,)\ntrain.train_steps = 8\n"
    with pytest.raises(ValueError) as raised:
        checkpointer.restore(None, wider, config_text=this_run)
    message = str(raised.value)
    assert (
        f"checkpoint {tmp_path}/1 does not fit this model: params/dense/kernel is (64, 64) in the checkpoint" in message
    )
    assert "but (96, 96) in this model (1 of 2 arrays differ)" in message
    assert "ToyMLP.hidden = 32 there, 96 here; train.init_hooks = (@hook_a,) there, (@hook_b,) here)" in message
    assert "train_steps" not in message
    assert "ModelConfig." in message and "MODEL_DIR" in message
    # A shape error is the run's configuration, not a damaged file: no fallback, nothing moved aside.
    assert checkpoints.checkpoint_steps(str(tmp_path)) == [1]
    extra = {**abstract_of(small_state(0)), "ema_params": abstract_of(small_state(0))["params"]}
    with pytest.raises(
        ValueError, match=r"ema_params/dense/kernel \(64, 64\) is in this model but not in the checkpoint"
    ):
        checkpointer.restore(1, extra)
    checkpointer.close()
