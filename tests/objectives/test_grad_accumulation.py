"""Exact gradient accumulation: a train step on M microbatches that hold different numbers of tokens and frames
equals the step on the whole batch (trainer.make_grad_fn with objectives.reductions), for real objectives on the
harness's very small model, and the counting pass behind it does not run the model.

Microbatch m draws from its own key, so only deterministic settings compare (no dropout, SpecAugment or text masks).
BEST-RQ's masking has no deterministic setting that trains sanely (masking every frame without noise zeroes the input
and its gradients reach 1e24), so the MAESTRO step runs on its paired and text streams; the counting test and
tests/trainer/test_trainer_step.py cover counts of masked frames.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_objective_harness import CASES, MODELS, random_batch, variables_of

from maestro_jax import trainer
from maestro_jax.objectives import reductions

# Microbatch m of M takes examples m, m + M, ...: with M = 2 the token counts are 6 + 5 vs 2 + 3 and the waveforms
# 8000 + 7000 vs 3000 + 4500 samples; with M = 4 every microbatch is one example.
TOKEN_LENGTH = np.array([6, 2, 5, 3], np.int32)
WAVEFORM_LENGTH = np.array([8000, 3000, 7000, 4500], np.int32)


def unequal_batch() -> dict:
    """random_batch with the lengths above in every stream (samples and tokens past a length zeroed)."""
    batch = random_batch(5, batch_size=4)
    for stream in batch.values():
        if "tokens" in stream:
            stream["token_length"] = TOKEN_LENGTH
            stream["tokens"] = stream["tokens"] * (np.arange(stream["tokens"].shape[1]) < TOKEN_LENGTH[:, None])
        if "waveform" in stream:
            stream["waveform_length"] = WAVEFORM_LENGTH
            samples = np.arange(stream["waveform"].shape[1])
            stream["waveform"] = stream["waveform"] * (samples < WAVEFORM_LENGTH[:, None])
    return batch


# SGD with rate 1: the new params are params - grads, so any gradient error shows at its own size.
OPTIMIZER = optax.sgd(1.0)
STEPS = {  # objective, streams of unequal_batch() it trains on
    "supervised": (functools.partial(CASES["supervised"].objective, ctc_weight=0.5), ("paired",)),
    "maestro": (CASES["maestro"].objective, ("paired", "text")),
}


def split_variables(model_name: str) -> tuple[dict, dict]:
    variables = variables_of(model_name)
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


@functools.cache
def one_step(name: str, num_microbatches: int):
    """(new params, metrics) of one SGD train step of STEPS[name] on unequal_batch()."""
    objective, streams = STEPS[name]
    params, model_state = split_variables("speech_text")
    state = trainer.TrainState(
        step=jnp.int32(0),
        params=params,
        model_state=model_state,
        opt_state=OPTIMIZER.init(params),
        ema_params=None,
        rng=jax.random.PRNGKey(0),
        skipped_steps=jnp.int32(0),
        consecutive_skipped=jnp.int32(0),
    )
    step = trainer.make_train_step(MODELS["speech_text"], objective, OPTIMIZER, num_microbatches=num_microbatches)
    batch = {stream: unequal_batch()[stream] for stream in streams}
    new_state, metrics = jax.jit(step)(state, batch)
    return jax.device_get(new_state.params), jax.device_get(metrics)


def test_microbatches_hold_unequal_counts():
    for num_microbatches in (2, 4):
        micro = trainer.split_microbatches(unequal_batch(), num_microbatches)
        for stream, key in (("paired", "token_length"), ("paired", "waveform_length"), ("text", "token_length")):
            per_microbatch = np.asarray(micro[stream][key]).sum(axis=1)
            assert len(set(per_microbatch.tolist())) == num_microbatches, (stream, key, per_microbatch)


@pytest.mark.parametrize(("name", "num_microbatches"), [("supervised", 2), ("supervised", 4), ("maestro", 2)])
def test_accumulated_step_equals_whole_batch_step(name, num_microbatches):
    initial, _ = split_variables("speech_text")
    whole_params, whole_metrics = one_step(name, 1)
    params, metrics = one_step(name, num_microbatches)
    assert np.isfinite(whole_metrics["grad_norm"]) and whole_metrics["grad_norm"] > 1.0
    # To 1e-5 of the largest update: float32 sums over the microbatches differ from the whole batch's in order, which
    # measured up to 1.2e-6 of it (M = 4, before and after the depthwise conv became shifted multiply-adds), while a
    # microbatch weighted wrongly moves gradients by percents.
    largest = max(float(np.abs(new - old).max()) for new, old in zip(*map(jax.tree.leaves, (whole_params, initial))))
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(whole_params), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5 * largest, err_msg=jax.tree_util.keystr(path))
    assert set(metrics) == set(whole_metrics)
    for key, want in whole_metrics.items():
        np.testing.assert_allclose(metrics[key], want, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", list(CASES))
def test_counting_pass_sums_whole_batch_counts_without_the_model(name):
    """The counts make_grad_fn divides by equal those of the whole batch, and computing them costs no model FLOPs."""
    case = CASES[name]
    model = MODELS[case.model]
    params, model_state = split_variables(case.model)
    batch, rng, step = unequal_batch(), jax.random.key(1), jnp.int32(0)

    def whole_batch_counts(params):
        with reductions.counting() as counts:
            case.objective(model, {"params": params, **model_state}, batch, rng, step)
        return tuple(counts)

    count_fn = jax.jit(trainer.make_count_fn(model, case.objective, num_microbatches=2))
    compiled = count_fn.lower(params, model_state, batch, rng, step).compile()
    counts = compiled(params, model_state, batch, rng, step)
    np.testing.assert_array_equal(counts, jax.jit(whole_batch_counts)(params))
    assert len(counts) >= 1 and all(float(count) > 0 for count in counts), counts
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    # The model's forward on this batch takes over 1e7 FLOPs; lengths, masks and sums take a few thousand.
    assert cost.get("flops", 0.0) < 1e5, cost.get("flops")


def test_batch_mean_outside_accumulation_is_total_over_count():
    assert float(reductions.batch_mean(jnp.float32(6.0), jnp.float32(4.0))) == 1.5
    assert float(reductions.batch_mean(jnp.float32(0.0), jnp.float32(0.0))) == 0.0
    assert float(reductions.batch_total(jnp.array([True, False, True]))) == 2.0
    with reductions.accumulating([jnp.float32(10.0)], 4):
        assert float(reductions.batch_mean(jnp.float32(5.0), jnp.float32(2.0))) == 2.0  # 4 * 5 / 10
        assert float(reductions.batch_total(jnp.array([1.0, 2.0]))) == 12.0


def test_accumulating_names_a_mismatched_sequence_of_means():
    with pytest.raises(RuntimeError, match="made 1 batch-level means .* but 2 while counting"):
        with reductions.accumulating([jnp.float32(1.0), jnp.float32(2.0)], 2):
            reductions.batch_mean(jnp.float32(1.0), jnp.float32(1.0))
    with pytest.raises(RuntimeError, match="more batch-level means .* than the 1"):
        with reductions.accumulating([jnp.float32(1.0)], 2):
            reductions.batch_mean(jnp.float32(1.0), jnp.float32(1.0))
            reductions.batch_mean(jnp.float32(1.0), jnp.float32(1.0))
