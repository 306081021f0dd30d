"""The contract every objective keeps, on random batches and a very small model (no corpus needed).

A new objective joins by adding one line to CASES (docs/ADDING_AN_OBJECTIVE.md): its loss and metrics are finite,
its gradients are finite, non-zero for every parameter subtree it should train and exactly zero for every other one,
and padding (longer waveforms and token sequences, plus an all-padding example in every stream) does not change its
loss. Dropout and SpecAugment are off and masking is deterministic, so the padded and unpadded batches see the same
computation on their valid positions.
"""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maestro_jax.models.config import ModelConfig
from maestro_jax.models.model import SpeechTextModel
from maestro_jax.models.sonar_text import SonarTextModel
from maestro_jax.objectives.astra import astra
from maestro_jax.objectives.bestrq import bestrq
from maestro_jax.objectives.common import BestRQMasking, TextInjection
from maestro_jax.objectives.maestro import maestro
from maestro_jax.objectives.sonar import sonar_speech, sonar_text
from maestro_jax.objectives.supervised import supervised

VOCAB = 16  # ids 0-2 are pad/blank, eos and unk; batches use 3..15
EMBED = 8
SPEECH_TEXT = SpeechTextModel(
    ModelConfig(
        vocab_size=VOCAB, model_dim=16, num_heads=2, ff_multiplier=2, conv_kernel_size=3, dropout_rate=0.0,
        subsampling="stack", subsampling_channels=4, relative_position=False, spec_augment=False,
        num_speech_layers=1, num_text_conv_layers=1, num_text_layers=1, num_duration_layers=1, num_refiner_layers=1,
        num_shared_layers=1, prediction_embed_dim=8, prediction_dim=8, joint_dim=8, num_pooler_layers=1,
        pooler_output_dim=EMBED, bestrq_codebook_size=8, bestrq_codebook_dim=4,
    )
)  # fmt: skip
SONAR_TEXT = SonarTextModel(
    vocab_size=VOCAB, model_dim=16, embedding_dim=EMBED, num_heads=2, mlp_dim=32, num_encoder_layers=1,
    num_decoder_layers=1, dropout_rate=0.0,
)  # fmt: skip
MODELS = {"speech_text": SPEECH_TEXT, "sonar_text": SONAR_TEXT}

# Every valid frame masked and no noise: BEST-RQ's masks then do not depend on the padded shapes.
EVERY_FRAME = BestRQMasking(mask_prob=1.0, mask_span=1, noise_std=0.0)
SHARED = TextInjection(bestrq_masking=EVERY_FRAME)
SPEECH = {"speech_tower", "shared_tower"}
ALL = None  # `trains` for an objective that trains every parameter of its model


class Case(NamedTuple):
    objective: object  # fn(model, variables, batch, rng, step) -> (loss, metrics), deterministic settings bound
    trains: set[str] | None  # top-level param subtrees that must get gradient; every other one must get none
    model: str = "speech_text"  # key of MODELS


# One line per objective (deterministic settings: no span masking of text, which draws shape-dependent masks).
CASES = {
    "supervised": Case(supervised, SPEECH | {"rnnt_decoder"}),
    "supervised_ctc_only": Case(functools.partial(supervised, rnnt_weight=0.0, ctc_weight=1.0), SPEECH | {"ctc_head"}),
    "bestrq": Case(functools.partial(bestrq, masking=EVERY_FRAME), SPEECH | {"bestrq_head"}),
    "maestro": Case(
        functools.partial(maestro, shared=SHARED, text_mask_prob=0.0),
        SPEECH | {"text_tower", "duration_model", "refiner", "rnnt_decoder", "bestrq_head"},
    ),
    "astra": Case(functools.partial(astra, shared=SHARED), SPEECH | {"text_tower", "rnnt_decoder", "bestrq_head"}),
    "sonar_speech": Case(sonar_speech, {"speech_tower", "pooler"}),
    "sonar_text": Case(
        functools.partial(sonar_text, noise_mask_prob=0.0, noise_drop_prob=0.0, shuffle_window=0), ALL, "sonar_text"
    ),
}


def random_batch(seed: int, *, batch_size: int = 3, samples: int = 8000, tokens: int = 6) -> dict:
    """{"paired", "speech", "text"} streams of random audio in [-0.3, 0.3] and random tokens, zero-padded; the first
    example of each stream fills its padded length. "paired" also carries a precomputed teacher_embedding."""
    rng = np.random.default_rng(seed)

    def lengths(longest: int, shortest: int) -> np.ndarray:
        values = rng.integers(shortest, longest + 1, batch_size).astype(np.int32)
        values[0] = longest
        return values

    def audio() -> dict:
        length = lengths(samples, samples // 2)
        waveform = 0.3 * rng.uniform(-1, 1, (batch_size, samples)) * (np.arange(samples) < length[:, None])
        return {"waveform": waveform.astype(np.float32), "waveform_length": length}

    def text() -> dict:
        length = lengths(tokens, 2)
        ids = rng.integers(3, VOCAB, (batch_size, tokens)) * (np.arange(tokens) < length[:, None])
        return {"tokens": ids.astype(np.int32), "token_length": length}

    teacher = rng.normal(size=(batch_size, EMBED)).astype(np.float32)
    return {"paired": {**audio(), **text(), "teacher_embedding": teacher}, "speech": audio(), "text": text()}


def padded(batch: dict, *, samples: int = 1600, tokens: int = 3) -> dict:
    """`batch` with `samples` more zero samples, `tokens` more pad tokens and an all-padding example in every stream."""
    grow = {"waveform": samples, "tokens": tokens}

    def pad(key: str, value: np.ndarray) -> np.ndarray:
        return np.pad(value, [(0, 1)] + [(0, grow.get(key, 0))] * (value.ndim - 1))

    return {name: {key: pad(key, value) for key, value in stream.items()} for name, stream in batch.items()}


def tower_norms(grads: dict) -> dict[str, float]:
    return {name: float(optax.global_norm(subtree)) for name, subtree in grads.items()}


@functools.cache
def variables_of(model_name: str) -> dict:
    model = MODELS[model_name]
    return nn.meta.unbox(jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), random_batch(0)))


@functools.cache
def evaluate(name: str):
    """(loss, metrics, per-subtree grad norms, all grads finite, loss on the padded batch) of CASES[name]."""
    case = CASES[name]
    model, variables = MODELS[case.model], variables_of(case.model)
    params, others = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(p, batch):
        return case.objective(model, {"params": p, **others}, batch, jax.random.key(1), jnp.int32(0))

    batch = random_batch(1)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch)
    finite = all(bool(np.all(np.isfinite(g))) for g in jax.tree.leaves(grads))
    padded_loss, _ = jax.jit(loss_fn)(params, padded(batch))
    return float(loss), jax.device_get(metrics), tower_norms(grads), finite, float(padded_loss)


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_metrics_are_finite(name):
    loss, metrics, _, _, _ = evaluate(name)
    assert np.isfinite(loss) and loss > 0, loss
    assert all(np.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_are_finite_and_reach_exactly_the_trained_params(name):
    _, _, norms, finite, _ = evaluate(name)
    assert finite
    trains = set(norms) if CASES[name].trains is ALL else CASES[name].trains
    assert trains <= set(norms), (trains - set(norms), sorted(norms))
    assert {tower for tower in trains if not norms[tower] > 0} == set(), norms
    assert {tower for tower in set(norms) - trains if norms[tower] != 0} == set(), norms


@pytest.mark.parametrize("name", list(CASES))
def test_padding_does_not_change_the_loss(name):
    loss, _, _, _, padded_loss = evaluate(name)
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)


def test_padded_batch_adds_padding_only():
    batch = random_batch(1)
    more = padded(batch)
    for name, stream in batch.items():
        for key, value in stream.items():
            grown = more[name][key]
            assert grown.shape[0] == value.shape[0] + 1 and not np.any(grown[-1]), (name, key)
            np.testing.assert_array_equal(grown[tuple(slice(0, n) for n in value.shape)], value)
    assert more["paired"]["waveform"].shape[1] == batch["paired"]["waveform"].shape[1] + 1600
    assert more["text"]["tokens"].shape[1] == batch["text"]["tokens"].shape[1] + 3


@pytest.mark.parametrize("objective", [maestro, astra])
def test_text_injection_trains_bestrq_with_the_shared_masking(objective):
    """MAESTRO's and ASTRA's speech stream is the bestrq objective with TextInjection's weight and masking (noise
    included) on their third split of the step's key."""
    model, variables = SPEECH_TEXT, variables_of("speech_text")
    speech_only = {"speech": random_batch(2)["speech"]}
    rng = jax.random.key(3)
    masking = BestRQMasking(mask_prob=0.3, mask_span=2, noise_std=0.7)
    shared = TextInjection(bestrq_weight=0.5, bestrq_masking=masking)
    injected = jax.jit(lambda v: objective(model, v, speech_only, rng, 0, shared=shared)[0])(variables)
    alone = jax.jit(
        lambda v, m: bestrq(model, v, speech_only, jax.random.split(rng, 3)[2], 0, masking=m)[0], static_argnums=1
    )
    np.testing.assert_allclose(injected, 0.5 * alone(variables, masking), rtol=1e-6)
    quieter = BestRQMasking(mask_prob=0.3, mask_span=2, noise_std=0.1)
    assert abs(float(alone(variables, quieter)) - float(alone(variables, masking))) > 1e-4
