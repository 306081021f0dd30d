"""bench/acoustic_reliance.py: reversal of valid samples only, and the own-vs-reversed NLL gap, which is exactly 0 for
a transducer whose encoder projection ignores the audio and not 0 for one that uses it (tiny model, random weights)."""

import importlib.util
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from maestro_jax.models.model import SpeechTextModel
from maestro_jax.models.sizes import MODEL_GIN_DIR, model_config_from_gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("acoustic_reliance", os.path.join(REPO, "bench", "acoustic_reliance.py"))
acoustic_reliance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(acoustic_reliance)


def _batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    t = np.arange(8000) / 16000
    chirp = np.linspace(0.0, 0.8, 8000) * np.sin(2 * np.pi * (200 + 6000 * t) * t)  # rising pitch and loudness
    return {
        "waveform": (chirp + 0.01 * rng.standard_normal((2, 8000))).astype(np.float32),
        "waveform_length": np.array([8000, 5000], np.int32),
        "tokens": rng.integers(3, 256, (2, 5)).astype(np.int32),
        "token_length": np.array([5, 3], np.int32),
    }


def test_reverse_valid_keeps_padding_in_place():
    waveform = np.array([[1, 2, 3, 4], [5, 6, 7, 0]], np.float32)
    got = acoustic_reliance.reverse_valid(waveform, np.array([4, 3]))
    np.testing.assert_array_equal(got, [[4, 3, 2, 1], [7, 6, 5, 0]])
    np.testing.assert_array_equal(waveform, [[1, 2, 3, 4], [5, 6, 7, 0]])  # input untouched


@pytest.fixture(scope="module")
def tiny():
    model = SpeechTextModel(model_config_from_gin(MODEL_GIN_DIR / "tiny.gin"))
    abstract = jax.eval_shape(model.init, jax.random.key(0), {"paired": _batch(0)})
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda leaf: 0.3 * rng.standard_normal(leaf.shape).astype(leaf.dtype), abstract)
    return model, nn.meta.unbox(variables)


def test_gap_is_zero_only_when_the_encoder_is_ignored(tiny):
    model, variables = tiny
    listening = acoustic_reliance.reliance(model, variables, [_batch(2), _batch(3)])
    assert abs(listening["gap"]) > 1e-3
    deaf = jax.tree.map(lambda x: x, variables)
    deaf["params"]["rnnt_decoder"]["encoder_proj"]["kernel"] = np.zeros_like(
        variables["params"]["rnnt_decoder"]["encoder_proj"]["kernel"]
    )
    ignored = acoustic_reliance.reliance(model, deaf, [_batch(2), _batch(3)])
    assert ignored["gap"] == pytest.approx(0.0, abs=1e-5)
    assert ignored["own"] == pytest.approx(ignored["reversed"], rel=1e-6)
    assert listening["reversed"] - listening["own"] == pytest.approx(listening["gap"])
