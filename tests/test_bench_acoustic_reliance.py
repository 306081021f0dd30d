"""bench/acoustic_reliance.py: reversal of valid samples only, and the own-vs-reversed NLL gap, which is exactly 0 for
a transducer whose encoder projection ignores the audio and not 0 for one that uses it (tiny model, random weights);
per-token pooling over batches on known NLLs; and table rows that score each checkpoint of a run."""

import importlib.util
import os

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
from test_evaluation import write_tiny_checkpoints

from maestro_jax import evaluation
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


def test_reliance_pools_nll_over_tokens_of_all_batches(monkeypatch):
    """Known per-batch NLL sums and token counts: the per-token figures pool them (not a mean of batch means), and
    the reversed score comes from each batch with its valid samples reversed."""
    scores = {  # waveform row -> (summed NLL, tokens)
        (0.0, 0.5, 1.0, 9.0): (10.0, 4),  # batch 0 (3 valid samples, then padding)
        (1.0, 0.5, 0.0, 9.0): (30.0, 4),  # batch 0 reversed
        (2.0, 3.0): (3.0, 2),  # batch 1
        (3.0, 2.0): (5.0, 2),  # batch 1 reversed
    }
    batches = [
        {"waveform": np.array([[0.0, 0.5, 1.0, 9.0]]), "waveform_length": np.array([3])},
        {"waveform": np.array([[2.0, 3.0]]), "waveform_length": np.array([2])},
    ]

    def known_nll(model, variables, batch):
        return scores[tuple(batch["waveform"][0].tolist())]

    monkeypatch.setattr(acoustic_reliance, "transcript_nll", known_nll)
    got = acoustic_reliance.reliance(None, None, batches)
    assert got == pytest.approx({"own": 13 / 6, "reversed": 35 / 6, "gap": 22 / 6})


def test_table_rows_score_each_checkpoint(tmp_path, capsys):
    write_tiny_checkpoints(str(tmp_path))
    argv = ["--model_dir", str(tmp_path), "--split", "test_in_vocab", "--batches", "1", "--batch_size", "2"]
    assert acoustic_reliance.main(argv) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row[0].strip() for row in rows[1:]] == ["1", "2"]
    restored = evaluation.load_model_dir(str(tmp_path), checkpoint_step=1)
    batches, _ = evaluation.split_batches("test_in_vocab", batch_size=2, needs_text=True)
    want = acoustic_reliance.reliance(restored.model, restored.variables, [next(batches)])
    assert [float(x) for x in rows[1][1:]] == pytest.approx([want["own"], want["reversed"], want["gap"]], abs=1e-3)
    assert rows[1][1:] != rows[2][1:]  # the checkpoints differ, so a row scoring the latest twice would show
    with gin.unlock_config():
        gin.clear_config()
