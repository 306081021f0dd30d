"""maestro-export: the export transcribes and embeds exactly like the in-framework model (same WER on the same data),
averages checkpoints leaf-wise, handles any batch size and length up to its largest bucket, and loads without gin,
seqio, TensorFlow or the training code."""

import json
import os
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece
from test_evaluation import write_tiny_checkpoints

from maestro_jax import evaluation, export, sonar_eval
from maestro_jax.cli import export as export_cli

BUCKETS = (5.0, 8.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model dir, its two checkpoint states, an export of the average of both, an export of the latest)."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    states = write_tiny_checkpoints(model_dir)
    averaged = str(tmp_path_factory.mktemp("export") / "averaged")
    assert (
        export_cli.main(["--model_dir", model_dir, "--out", averaged, "--average_last", "2", "--bucket_seconds", "5"])
        == 0
    )
    latest = export.export_model_dir(
        model_dir, str(tmp_path_factory.mktemp("export") / "latest"), bucket_seconds=BUCKETS
    )
    yield model_dir, states, averaged, latest
    with gin.unlock_config():
        gin.clear_config()


def test_layout_and_checkpoint_average(exported):
    _, states, averaged, _ = exported
    loaded = export.load(averaged)
    assert loaded.metadata["steps"] == [1, 2] and loaded.metadata["bucket_samples"] == [80000]
    assert sorted(os.listdir(os.path.join(averaged, "functions"))) == ["embed_80000.jax", "transcribe_80000.jax"]
    assert "make_model" in loaded.config_text
    for got, first, second in zip(
        jax.tree.leaves(loaded.variables["params"]),
        jax.tree.leaves(states[1].params),
        jax.tree.leaves(states[2].params),
    ):
        np.testing.assert_allclose(got, (np.asarray(first) + np.asarray(second)) / 2, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(loaded.variables["frozen"]), jax.tree.leaves(states[2].model_state["frozen"])):
        np.testing.assert_array_equal(got, want)


def test_export_matches_the_model_tokens_embeddings_and_wer(exported):
    model_dir, _, _, latest = exported
    restored = evaluation.load_model_dir(model_dir)
    loaded = export.load(latest)
    rng = np.random.default_rng(0)
    # Three utterances, one longer than the first bucket so the 8 s function is used; batch size 3 is not traced.
    lengths = np.array([20000, 100000, 7000], np.int32)
    waveform = (0.1 * rng.standard_normal((3, 100000))).astype(np.float32)
    waveform[np.arange(100000)[None, :] >= lengths[:, None]] = 0.0
    want_tokens, want_lengths = evaluation.make_transcriber(restored.model)(
        restored.variables, jnp.asarray(waveform), jnp.asarray(lengths)
    )
    got_tokens, got_lengths = loaded.transcribe_tokens(waveform, lengths)
    np.testing.assert_array_equal(got_lengths, want_lengths)
    assert got_lengths.min() > 0, "a random model should emit tokens, or this comparison proves little"
    np.testing.assert_array_equal(got_tokens, np.asarray(want_tokens))
    texts = loaded.transcribe(waveform, lengths)
    assert texts[0] == loaded._tokenizer.decode(got_tokens[0, : got_lengths[0]].tolist())
    want_embedding = sonar_eval.embed_speech(restored.model, restored.variables, jnp.asarray(waveform), lengths)
    np.testing.assert_allclose(loaded.embed(waveform, lengths), want_embedding, rtol=1e-4, atol=1e-5)

    in_framework = evaluation.evaluate(model_dir=model_dir, splits=["test_in_vocab"], progress=False)
    from_export = evaluation.evaluate(export_dir=latest, splits=["test_in_vocab"], progress=False)
    assert from_export["test_in_vocab"]["wer"] == in_framework["test_in_vocab"]["wer"]
    assert from_export["test_in_vocab"]["cer"] == in_framework["test_in_vocab"]["cer"]


def test_too_long_input_names_lengths_and_option(exported):
    loaded = export.load(exported[3])
    with pytest.raises(
        ValueError, match=r"160000 samples \(10\.0 s\) exceeds .* 128000 samples \(8\.0 s\).*--bucket_seconds"
    ):
        loaded.transcribe(np.zeros((1, 160000), np.float32), np.array([160000]))


def test_a_tokenizer_of_another_size_stops_the_export(exported, tmp_path):
    from maestro_jax.data import tokenizer

    other = tokenizer.train_sentencepiece(
        ["the cat sat on the mat", "a dog ran far", "we sing and they dance"] * 5,
        tmp_path / "other.model",
        vocab_size=20,
    )
    with pytest.raises(ValueError, match=rf"tokenizer {other} has 20 pieces but ModelConfig.vocab_size = \d+"):
        export.export_model_dir(exported[0], str(tmp_path / "export"), tokenizer_path=str(other))
    assert not (tmp_path / "export").exists()


LOADER_SCRIPT = """
import json, sys
import numpy as np
from maestro_jax import export
model = export.load(sys.argv[1])
with np.load(sys.argv[2]) as inputs:
    waveform, lengths = inputs["waveform"], inputs["lengths"]
tokens, token_length = model.transcribe_tokens(waveform, lengths)
texts = model.transcribe(waveform, lengths)
embedding = model.embed(waveform, lengths)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("gin", "seqio", "tensorflow", "tensorflow_datasets")
               or m in ("maestro_jax.train", "maestro_jax.trainer", "maestro_jax.evaluation", "maestro_jax.models",
                        "maestro_jax.data", "maestro_jax.objectives"))
print(json.dumps({"texts": texts, "tokens": [row[:n].tolist() for row, n in zip(tokens, token_length)],
                  "embedding": embedding.tolist(), "heavy": heavy}))
"""


def test_loader_runs_without_gin_seqio_tensorflow_or_training_code(exported, tmp_path):
    model_dir, _, _, latest = exported
    # Noise, not a tone or silence: their floor-dominated log-mels make a random model's embedding ill-conditioned.
    waveform = (0.1 * np.random.default_rng(1).standard_normal((2, 16000))).astype(np.float32)
    lengths = np.array([16000, 8000], np.int32)
    waveform[1, 8000:] = 0.0
    np.savez(tmp_path / "inputs.npz", waveform=waveform, lengths=lengths)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [sys.executable, "-c", LOADER_SCRIPT, latest, str(tmp_path / "inputs.npz")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    # The same tokens, text and embeddings as the in-framework model of the run on the same audio.
    restored = evaluation.load_model_dir(model_dir)
    want_tokens, want_lengths = evaluation.make_transcriber(restored.model)(
        restored.variables, jnp.asarray(waveform), jnp.asarray(lengths)
    )
    want_tokens = evaluation.token_lists(want_tokens, want_lengths)
    assert report["tokens"] == want_tokens and all(want_tokens), "a random model should emit tokens here"
    processor = sentencepiece.SentencePieceProcessor(model_file=evaluation.tokenizer_of_config())
    assert report["texts"] == [processor.decode(ids) for ids in want_tokens]
    want_embedding = sonar_eval.embed_speech(restored.model, restored.variables, jnp.asarray(waveform), lengths)
    np.testing.assert_allclose(report["embedding"], want_embedding, rtol=1e-4, atol=1e-5)
