"""Supervised, BEST-RQ, MAESTRO and ASTRA on the tiny corpus and tiny model: the loss falls, metrics are finite, and
gradients reach exactly the intended towers."""

import functools
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maestro_jax.data import synthetic, tasks
from maestro_jax.data.batcher import MultiStreamBatcher, StreamSpec
from maestro_jax.models.model import SpeechTextModel
from maestro_jax.models.sizes import MODEL_GIN_DIR, model_config_from_gin
from maestro_jax.objectives.astra import astra
from maestro_jax.objectives.bestrq import bestrq
from maestro_jax.objectives.common import (
    BestRQMasking,
    TextInjection,
    bound,
    durations_from_emit_frames,
    internal_lm_terms,
)
from maestro_jax.objectives.maestro import maestro
from maestro_jax.objectives.supervised import supervised

REPO = Path(__file__).resolve().parents[2]
STEPS = 25


@pytest.fixture(scope="module")
def setup():
    corpus_dir = synthetic.cached_corpus("tiny")
    tasks.register_synthetic_tasks(corpus_dir, "tiny")
    specs = {
        "paired": StreamSpec(tasks.synthetic_task_name("tiny", "paired_train"), 4, max_samples=64000, max_tokens=40),
        "speech": StreamSpec(tasks.synthetic_task_name("tiny", "speech_train"), 4, max_samples=64000),
        "text": StreamSpec(tasks.synthetic_task_name("tiny", "text_train"), 4, max_tokens=40),
    }
    with MultiStreamBatcher(specs, seed=0) as batcher:
        batch = jax.tree.map(jnp.asarray, next(batcher))
    model = SpeechTextModel(model_config_from_gin(MODEL_GIN_DIR / "tiny.gin"))
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), batch)
    return model, nn.meta.unbox(variables), batch


def tower_grad_norms(grads) -> dict[str, float]:
    return {name: float(optax.global_norm(sub)) for name, sub in grads.items()}


def train_briefly(model, variables, batch, objective):
    """STEPS Adam steps on one fixed batch; returns (losses, first step's per-tower grad norms, last metrics)."""
    optimizer = optax.adam(3e-3)
    params, frozen = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def step(params, opt_state, rng, step_index):
        def loss_fn(p):
            return objective(model, {"params": p, **frozen}, batch, rng, step_index)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics, grads

    opt_state = optimizer.init(params)
    losses, first_norms, metrics = [], None, None
    for i in range(STEPS):
        params, opt_state, loss, metrics, grads = step(params, opt_state, jax.random.PRNGKey(i), jnp.int32(i))
        losses.append(float(loss))
        if first_norms is None:
            first_norms = tower_grad_norms(grads)
    return losses, first_norms, jax.device_get(metrics)


# objective, the largest allowed (mean of the last 5 losses) / (first loss), expected towers with gradient, towers
# that must get none. BEST-RQ draws new masks every step, so its loss is noisier and falls less in 25 steps.
DENSER_MASKING = BestRQMasking(mask_prob=0.08, mask_span=4)
CASES = {
    "supervised": (
        supervised,
        0.5,
        {"speech_tower", "shared_tower", "rnnt_decoder"},
        {"text_tower", "duration_model", "refiner", "ctc_head", "pooler", "bestrq_head"},
    ),
    "supervised_ctc_only": (
        functools.partial(supervised, rnnt_weight=0.0, ctc_weight=1.0),
        0.7,
        {"speech_tower", "shared_tower", "ctc_head"},
        {"text_tower", "duration_model", "refiner", "rnnt_decoder", "pooler", "bestrq_head"},
    ),
    "bestrq": (
        functools.partial(bestrq, masking=DENSER_MASKING),
        0.85,
        {"speech_tower", "shared_tower", "bestrq_head"},
        {"text_tower", "duration_model", "refiner", "rnnt_decoder", "ctc_head", "pooler"},
    ),
    "maestro": (
        functools.partial(maestro, shared=TextInjection(bestrq_masking=DENSER_MASKING)),
        0.6,
        {"speech_tower", "text_tower", "duration_model", "refiner", "shared_tower", "rnnt_decoder", "bestrq_head"},
        {"ctc_head", "pooler"},
    ),
    "astra": (
        functools.partial(astra, shared=TextInjection(bestrq_masking=DENSER_MASKING)),
        0.6,
        {"speech_tower", "text_tower", "shared_tower", "rnnt_decoder", "bestrq_head"},
        {"duration_model", "refiner", "ctc_head", "pooler"},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_objective_learns_and_routes_gradients(setup, name):
    model, variables, batch = setup
    objective, max_ratio, trained, untouched = CASES[name]
    losses, norms, metrics = train_briefly(model, variables, batch, objective)
    print(f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert all(np.isfinite(losses))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert np.mean(losses[-5:]) < max_ratio * losses[0], losses
    for tower in trained:
        assert norms[tower] > 0, (tower, norms)
    for tower in untouched:
        assert norms[tower] == 0, (tower, norms)


def test_supervised_weights_scale_each_term(setup):
    model, variables, batch = setup
    rng, step = jax.random.PRNGKey(0), jnp.int32(0)
    both = supervised(model, variables, batch, rng, step, rnnt_weight=2.0, ctc_weight=0.5)[1]
    ctc_only = supervised(model, variables, batch, rng, step, rnnt_weight=0.0, ctc_weight=0.5)[1]
    np.testing.assert_allclose(both["loss"], 2.0 * both["rnnt_loss"] + 0.5 * both["ctc_loss"], rtol=1e-6)
    np.testing.assert_allclose(ctc_only["loss"], 0.5 * both["ctc_loss"], rtol=1e-6)
    assert "rnnt_loss" not in ctc_only
    with pytest.raises(ValueError, match="supervised.rnnt_weight or supervised.ctc_weight"):
        supervised(model, variables, batch, rng, step, rnnt_weight=0.0, ctc_weight=0.0)


def test_internal_lm_matches_a_step_by_step_decoder_loop(setup):
    """L_ilm against the prediction network run one label at a time, the joint fed with it alone, blank dropped."""
    model, variables, batch = setup
    stream = batch["text"]
    got = float(internal_lm_terms(model, variables, stream).loss)
    decoder = bound(model, variables)
    params = model.joint_params(variables["params"])
    tokens, lengths = np.asarray(stream["tokens"]), np.asarray(stream["token_length"])
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        carry, previous = decoder.rnnt_predictor_init(1), jnp.zeros((1,), jnp.int32)
        for u in range(lengths[b]):
            carry, pred = decoder.rnnt_predictor_step(carry, previous)
            logits = np.asarray(model.joint_output_fn(params, pred), np.float64)[0, 1:]
            log_z = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
            total += log_z - logits[tokens[b, u] - 1]
            count += 1
            previous = jnp.asarray(tokens[b, u : u + 1])
    np.testing.assert_allclose(got, total / count, rtol=1e-5)


def test_internal_lm_term_adds_to_supervised_and_maestro_and_trains_only_the_decoder(setup):
    model, variables, batch = setup
    rng, step = jax.random.PRNGKey(0), jnp.int32(0)
    base = supervised(model, variables, batch, rng, step)[1]
    with_lm = supervised(model, variables, batch, rng, step, internal_lm_weight=0.5)[1]
    assert with_lm["ilm_loss"] > 0
    # The paired terms draw from their own key either way, so the difference is exactly the weighted ILM term.
    np.testing.assert_allclose(with_lm["loss"] - base["loss"], 0.5 * with_lm["ilm_loss"], rtol=1e-4)
    with pytest.raises(ValueError, match="add 'text' to STREAMS"):
        supervised(model, variables, {"paired": batch["paired"]}, rng, step, internal_lm_weight=0.5)

    text_only = {"text": batch["text"]}
    plain = TextInjection(bestrq_weight=0.0)
    lm_on = TextInjection(bestrq_weight=0.0, internal_lm_weight=2.0)
    off = maestro(model, variables, text_only, rng, step, shared=plain)[1]
    on = maestro(model, variables, text_only, rng, step, shared=lm_on)[1]
    np.testing.assert_allclose(on["loss"] - off["loss"], 2.0 * on["ilm_loss"], rtol=1e-4)

    def ilm_only(params):
        return supervised(model, {**variables, "params": params}, batch, rng, step, internal_lm_weight=1.0)[1][
            "ilm_loss"
        ]

    norms = tower_grad_norms(jax.jit(jax.grad(ilm_only))(variables["params"]))
    assert norms["rnnt_decoder"] > 0, norms
    assert all(norm == 0 for tower, norm in norms.items() if tower != "rnnt_decoder"), norms


def test_maestro_text_only_stream_never_updates_speech_tower_or_duration_model(setup):
    model, variables, batch = setup
    text_only = {"text": batch["text"]}

    def loss_fn(params):
        return maestro(model, {**variables, "params": params}, text_only, jax.random.PRNGKey(0), jnp.int32(0))[0]

    norms = tower_grad_norms(jax.jit(jax.grad(loss_fn))(variables["params"]))
    for tower in ("text_tower", "refiner", "shared_tower", "rnnt_decoder"):
        assert norms[tower] > 0, (tower, norms)
    for tower in ("speech_tower", "duration_model", "bestrq_head", "ctc_head", "pooler"):
        assert norms[tower] == 0, (tower, norms)


def test_curriculum_switches_terms_on_by_step(setup):
    model, variables, batch = setup
    curriculum = TextInjection(paired_start_step=5, text_start_step=10, bestrq_weight=0.0)
    objective = jax.jit(functools.partial(maestro, model, shared=curriculum))

    def loss(stream, step):
        return float(objective(variables, {stream: batch[stream]}, jax.random.PRNGKey(0), jnp.int32(step))[0])

    # Each stream's terms switch on at its own start step (swapped, paired is off at step 5 and text on at 9).
    assert loss("paired", 4) == 0.0 < loss("paired", 5)
    assert loss("text", 9) == 0.0 < loss("text", 10)


def test_durations_from_emit_frames_against_numpy():
    emit = np.array([[0, 2, 2, 5], [1, 3, 0, 0]], np.int32)
    frame_length = np.array([8, 6], np.int32)
    token_length = np.array([4, 2], np.int32)
    got = np.asarray(
        durations_from_emit_frames(jnp.asarray(emit), jnp.asarray(frame_length), jnp.asarray(token_length))
    )
    expected = np.zeros_like(emit)
    for b in range(2):
        previous_end = 0
        for u in range(token_length[b]):
            end = frame_length[b] if u == token_length[b] - 1 else emit[b, u] + 1
            expected[b, u] = end - previous_end
            previous_end = end
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got.sum(1), frame_length)


def test_swapping_objectives_is_one_include_line():
    texts = {
        name: (REPO / "gin" / "experiments" / f"tiny_{name}.gin").read_text().replace(name, "X")
        for name in ("supervised", "bestrq", "maestro", "astra")
    }
    assert len(set(texts.values())) == 1
    import maestro_jax

    maestro_jax.register_configurables()
    objectives = set()
    for name in ("supervised", "maestro"):
        gin.clear_config()
        gin.add_config_file_search_path(str(REPO))
        gin.parse_config_file(str(REPO / "gin" / "experiments" / f"tiny_{name}.gin"))
        objectives.add(gin.query_parameter("train.objective").selector)
    gin.clear_config()
    assert objectives == {"supervised", "maestro"}
