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
