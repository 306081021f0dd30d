"""Train step numerics: grad accumulation, schedules, the non-finite guard and EMA against independent references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import trainer_toy as toy

from maestro_jax import metrics, trainer
from maestro_jax.objectives import reductions
from maestro_jax.objectives.common import masked_mean


@pytest.fixture(scope="module")
def setup():
    model = toy.ToyMLP()
    batch = jax.tree.map(jnp.asarray, next(toy.ToyBatcher(0, 1, 0, global_batch_size=8)))
    optimizer = optax.adam(1e-2)
    init_fn = trainer.make_init_fn(model, optimizer, use_ema=True)
    state = nn.unbox(init_fn(jax.random.PRNGKey(0), batch))
    return model, batch, optimizer, state


def deterministic_objective(model, variables, batch, rng, step):
    return toy.toy_objective(model, variables, batch, rng, step, noise=0.0)


def test_grad_accumulation_equals_full_batch(setup):
    model, batch, _, state = setup
    args = (state.params, state.model_state, batch, jax.random.PRNGKey(1), jnp.int32(0))
    full_loss, _, full_grads = trainer.make_grad_fn(model, deterministic_objective)(*args)
    accumulated_loss, _, accumulated_grads = jax.jit(
        trainer.make_grad_fn(model, deterministic_objective, num_microbatches=4)
    )(*args)
    np.testing.assert_allclose(accumulated_loss, full_loss, rtol=1e-6)
    for full, accumulated in zip(jax.tree.leaves(full_grads), jax.tree.leaves(accumulated_grads)):
        np.testing.assert_allclose(accumulated, full, rtol=1e-5, atol=1e-7)
    assert float(optax.global_norm(full_grads)) > 1e-3


def masked_objective(model, variables, batch, rng, step):
    """MSE over batch["mask"] bool[B, F] (a per-frame-like mean) plus its count, through objectives.reductions."""
    squared_error = jnp.square(model.apply(variables, batch, train=True) - batch["y"])
    loss = masked_mean(squared_error, batch["mask"])
    return loss, {"masked_mse": loss, "masked": reductions.batch_total(batch["mask"])}


def test_grad_accumulation_is_exact_for_unequal_masks(setup):
    """Microbatch m of 4 holds examples m, m + 4: their masks keep 1 + 2 + 3 + ... features, unequal counts."""
    model, batch, _, state = setup
    kept = 1 + (np.arange(8) * 5) % 16
    batch = {**batch, "mask": jnp.arange(16)[None, :] < kept[:, None]}
    args = (state.params, state.model_state, batch, jax.random.PRNGKey(1), jnp.int32(0))
    full_loss, full_metrics, full_grads = trainer.make_grad_fn(model, masked_objective)(*args)
    loss, accumulated_metrics, grads = jax.jit(trainer.make_grad_fn(model, masked_objective, num_microbatches=4))(*args)
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    np.testing.assert_allclose(accumulated_metrics["masked_mse"], full_metrics["masked_mse"], rtol=1e-6)
    assert float(accumulated_metrics["masked"]) == float(full_metrics["masked"]) == kept.sum()
    for full, got in zip(jax.tree.leaves(full_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-7)
    assert float(optax.global_norm(full_grads)) > 1e-3


def test_split_microbatches_indivisible_batch_names_option():
    with pytest.raises(ValueError, match="num_microbatches=3"):
        trainer.split_microbatches({"x": jnp.zeros((8, 2))}, 3)


def test_train_step_matches_optax_update_and_ema(setup):
    model, batch, optimizer, state = setup
    step_fn = jax.jit(trainer.make_train_step(model, deterministic_objective, optimizer, ema_decay=0.9))
    new_state, metrics = step_fn(state, batch)
    (_, _), grads = jax.value_and_grad(
        lambda p: deterministic_objective(
            model, {"params": p, **state.model_state}, batch, jax.random.PRNGKey(0), jnp.int32(0)
        ),
        has_aux=True,
    )(state.params)
    updates, _ = optimizer.update(grads, optimizer.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for ema, old, new in zip(*(jax.tree.leaves(t) for t in (new_state.ema_params, state.params, expected))):
        np.testing.assert_allclose(ema, 0.9 * old + 0.1 * new, rtol=1e-6, atol=1e-7)
    assert int(new_state.step) == 1 and int(metrics["skipped_steps"]) == 0
    np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-6)


def test_nonfinite_batch_skips_update_and_counts(setup):
    model, batch, optimizer, state = setup
    step_fn = jax.jit(trainer.make_train_step(model, deterministic_objective, optimizer, ema_decay=0.9))
    bad = {**batch, "x": batch["x"].at[0, 0].set(jnp.nan)}
    state1, metrics1 = step_fn(state, bad)
    state2, metrics2 = step_fn(state1, bad)
    assert not np.isfinite(float(metrics1["loss"]))
    for before, after in zip(
        jax.tree.leaves((state.params, state.opt_state)), jax.tree.leaves((state2.params, state2.opt_state))
    ):
        np.testing.assert_array_equal(before, after)
    assert (int(state2.step), int(state2.skipped_steps), int(state2.consecutive_skipped)) == (2, 2, 2)
    state3, _ = step_fn(state2, batch)
    assert (int(state3.skipped_steps), int(state3.consecutive_skipped)) == (2, 0)
    assert not np.array_equal(jax.tree.leaves(state3.params)[0], jax.tree.leaves(state.params)[0])


@pytest.mark.parametrize("step", [0, 3, 9, 10, 11, 40, 399])
def test_inverse_sqrt_schedule_matches_formula(step):
    schedule = trainer.make_learning_rate_schedule(peak_learning_rate=2e-3, warmup_steps=10, decay="inverse_sqrt")
    n = step + 1
    expected = 2e-3 * min(n / 10, np.sqrt(10 / n))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_cosine_schedule_warms_up_then_decays_to_floor():
    schedule = trainer.make_learning_rate_schedule(
        peak_learning_rate=1.0, warmup_steps=10, decay="cosine", total_steps=110, final_learning_rate_fraction=0.1
    )
    np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 0.1, rtol=1e-5)
    with pytest.raises(ValueError, match="total_steps"):
        trainer.make_learning_rate_schedule(decay="cosine", warmup_steps=10, total_steps=None)


def test_optimizer_clips_global_norm():
    # Adam's first update is -lr * g / (|g| + eps) per coordinate (its bias-corrected moments are g and g**2); with
    # eps as large as |g| it depends on the gradient's size, so clipping shows. g = [3, 4, 0] has norm 5 -> [.6, .8, 0].
    params = {"w": jnp.zeros(3)}
    gradient = np.array([3.0, 4.0, 0.0])
    grads = {"w": jnp.asarray(gradient)}
    clipped = np.array([0.6, 0.8, 0.0])
    expected = -clipped / (np.abs(clipped) + 1.0)
    unclipped = -gradient / (np.abs(gradient) + 1.0)
    optimizer = trainer.make_optimizer(learning_rate=1.0, name="adam", eps=1.0, max_grad_norm=1.0)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)
    assert np.abs(expected - unclipped).max() > 0.3
    no_clipping = trainer.make_optimizer(learning_rate=1.0, name="adam", eps=1.0, max_grad_norm=None)
    updates, _ = no_clipping.update(grads, no_clipping.init(params), params)
    np.testing.assert_allclose(updates["w"], unclipped, rtol=1e-6)


def test_compile_ahead_of_time_reports_flops_and_bytes():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
    compiled, figures = trainer.compile_ahead_of_time(jax.jit(lambda x, y: x @ y), a, b, mesh, ())
    assert figures["flops_per_step"] == 2 * 64 * 32 * 16
    assert figures["argument_size_in_bytes"] == (64 * 32 + 32 * 16) * 4
    assert figures["output_size_in_bytes"] == 64 * 16 * 4
    np.testing.assert_allclose(compiled(jnp.ones((64, 32)), jnp.ones((32, 16))), np.full((64, 16), 32.0))


def test_peak_flops_table_lookup_and_mfu():
    class FakeDevice:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert metrics.peak_flops_per_device(FakeDevice()) == (989e12, "table[H100]")
    FakeDevice.device_kind = "TPU v5 lite"
    assert metrics.peak_flops_per_device(FakeDevice())[0] == 197e12
    FakeDevice.device_kind = "Mystery Accelerator"
    with pytest.raises(ValueError, match="PEAK_FLOPS_BY_DEVICE_KIND"):
        metrics.peak_flops_per_device(FakeDevice())
    assert metrics.model_flops_utilization(1e12, 2.0, 4e12) == 0.5
