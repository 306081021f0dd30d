"""Warm start: params copied from a checkpoint by path, boxes kept, missing ones fresh, mismatches named."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from maestro_jax import trainer, warm_start


class TwoTowers(nn.Module):
    width: int = 3

    @nn.compact
    def __call__(self, batch, train=False):
        dense = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        speech = nn.Dense(self.width, kernel_init=dense, name="speech")(batch["x"])
        return nn.Dense(2, name="text")(speech)


def save(directory, step, params):
    ocp.PyTreeCheckpointer().save(os.path.join(directory, str(step), "state"), {"params": params, "model_state": {}})


def test_init_hook_copies_the_params_the_checkpoint_has_and_keeps_the_rest(tmp_path):
    batch = {"x": jnp.ones((2, 4))}
    fresh = TwoTowers().init(jax.random.split(jax.random.PRNGKey(0))[0], batch)  # make_init_fn's init key
    saved_speech = {
        "kernel": np.arange(12, dtype=np.float32).reshape(4, 3),
        "bias": np.full(3, 7.0, np.float32),
    }
    save(tmp_path / "checkpoints", 5, {"speech": saved_speech, "only_in_checkpoint": {"w": np.zeros(2, np.float32)}})
    hook = lambda v: warm_start.init_params_from_checkpoint(v, checkpoint=str(tmp_path))
    init = trainer.make_init_fn(TwoTowers(), optax.sgd(0.1), use_ema=False, init_hooks=(hook,))
    # Jitted, as the trainer runs it: the hook's arrays must be host constants of the traced init.
    state = jax.jit(init)(jax.random.PRNGKey(0), batch)
    # The logical-axis box survives, with the checkpoint's value inside.
    assert isinstance(state.params["speech"]["kernel"], nn.Partitioned)
    assert state.params["speech"]["kernel"].names == ("embed", "mlp")
    np.testing.assert_array_equal(state.params["speech"]["kernel"].unbox(), saved_speech["kernel"])
    np.testing.assert_array_equal(state.params["speech"]["bias"], saved_speech["bias"])
    np.testing.assert_array_equal(state.params["text"]["kernel"], fresh["params"]["text"]["kernel"])
    assert "only_in_checkpoint" not in state.params


def test_mismatched_shapes_and_unrelated_checkpoints_are_refused(tmp_path):
    variables = TwoTowers().init(jax.random.PRNGKey(0), {"x": jnp.ones((2, 4))})
    save(tmp_path / "wide", 1, {"speech": {"kernel": np.zeros((4, 5), np.float32)}})
    with pytest.raises(ValueError, match=r"speech/kernel is \(4, 3\) in this model but \(4, 5\)"):
        warm_start.init_params_from_checkpoint(variables, checkpoint=str(tmp_path / "wide"))
    save(tmp_path / "other", 1, {"encoder": {"kernel": np.zeros((4, 3), np.float32)}})
    with pytest.raises(ValueError, match="holds no param at any path"):
        warm_start.init_params_from_checkpoint(variables, checkpoint=str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match="change init_params_from_checkpoint.step"):
        warm_start.init_params_from_checkpoint(variables, checkpoint=str(tmp_path / "other"), step=9)


def test_modules_limits_the_copy_to_named_top_level_modules(tmp_path):
    variables = TwoTowers().init(jax.random.PRNGKey(0), {"x": jnp.ones((2, 4))})
    # The text head has another shape in the checkpoint (SONAR's pooler vs the trunk's): skipped, not refused.
    saved = {
        "speech": {"kernel": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)},
        "text": {"kernel": np.zeros((3, 7), np.float32), "bias": np.zeros(7, np.float32)},
    }
    save(tmp_path, 1, saved)
    got = warm_start.init_params_from_checkpoint(variables, checkpoint=str(tmp_path), modules=("speech",))["params"]
    np.testing.assert_array_equal(got["speech"]["kernel"].unbox(), saved["speech"]["kernel"])
    np.testing.assert_array_equal(got["text"]["kernel"], variables["params"]["text"]["kernel"])
    with pytest.raises(ValueError, match=r"modules \['speach'\] are not top-level modules"):
        warm_start.init_params_from_checkpoint(variables, checkpoint=str(tmp_path), modules=("speach",))
