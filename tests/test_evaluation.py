"""maestro-eval's library: WER/CER against a brute-force edit distance, checkpoint restore without the optimizer
(params, EMA, step choice), manifests (any rate, stereo, unreadable files) and seqio splits scoring alike."""

import functools
import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile

import maestro_jax
from maestro_jax import checkpoints, evaluation, trainer
from maestro_jax.cli import eval as eval_cli
from maestro_jax.data import audio_files, pipeline, synthetic, unseen_speech
from maestro_jax.models import make_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_tiny_checkpoints(model_dir: str, steps=(1, 2)) -> dict[int, trainer.TrainState]:
    """Saves randomly initialised tiny-model TrainStates (params scaled per step, EMA = params / 2) at `steps`
    under model_dir/checkpoints with their operative config, as maestro-train would. Returns {step: state}."""
    corpus_dir = synthetic.cached_corpus("tiny")
    maestro_jax.register_configurables()
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config_file(os.path.join(REPO, "gin/models/tiny.gin"))
        gin.parse_config(f"synthetic_corpus.corpus_dir = '{corpus_dir}'\nsynthetic_corpus.size = 'tiny'")
    pipeline.synthetic_corpus()
    model = make_model()
    batch = {
        "paired": {
            "waveform": jnp.zeros([2, 16000]),
            "waveform_length": jnp.array([16000, 8000], jnp.int32),
            "tokens": jnp.ones([2, 8], jnp.int32),
            "token_length": jnp.array([8, 4], jnp.int32),
        }
    }
    init = trainer.make_init_fn(model, optax.sgd(0.1), use_ema=True)
    state = jax.jit(lambda rng: nn.unbox(init(rng, batch)))(jax.random.PRNGKey(0))
    config_text = gin.operative_config_str()
    checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"), async_save=False)
    states = {}
    for step in steps:
        params = jax.tree.map(functools.partial(np.multiply, 1.0 + 0.1 * step), state.params)
        states[step] = state.replace(
            step=jnp.int32(step), params=params, ema_params=jax.tree.map(lambda p: p / 2, params)
        )
        checkpointer.save(step, states[step], data_state={}, config_text=config_text, force=True)
    checkpointer.close()
    return states


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A model dir with two random-init checkpoints, and the tiny corpus directory."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    states = write_tiny_checkpoints(model_dir)
    yield model_dir, states, synthetic.cached_corpus("tiny")
    with gin.unlock_config():
        gin.clear_config()


def edit_distance(reference: list, hypothesis: list) -> int:
    """Brute-force Levenshtein distance by dynamic programming."""
    rows = np.arange(len(hypothesis) + 1)
    for i, r in enumerate(reference, start=1):
        previous, rows = rows, np.empty_like(rows)
        rows[0] = i
        for j, h in enumerate(hypothesis, start=1):
            rows[j] = min(previous[j] + 1, rows[j - 1] + 1, previous[j - 1] + (r != h))
    return int(rows[-1])


def test_error_rates_match_brute_force_edit_distance():
    references = ["Hello, World!", "the cat sat on the mat", "", "a b c"]
    hypotheses = ["hello world", "the cat sat mat", "ignored", "a x c d"]
    got = evaluation.error_rates(references, hypotheses)
    kept = [
        (evaluation.normalize_transcript(r), evaluation.normalize_transcript(h))
        for r, h in zip(references, hypotheses)
        if r
    ]
    word_errors = sum(edit_distance(r.split(), h.split()) for r, h in kept)
    char_errors = sum(edit_distance(list(r), list(h)) for r, h in kept)
    assert got["wer"] == pytest.approx(word_errors / sum(len(r.split()) for r, _ in kept))
    assert got["cer"] == pytest.approx(char_errors / sum(len(r) for r, _ in kept))
    assert got["skipped_empty_references"] == 1.0
    assert word_errors == 4  # 2 deletions + 1 substitution + 1 insertion


def assert_trees_equal(got, want):
    """Same tree structure and every leaf equal; a mismatch names the leaf's path."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path)), got, want
    )


def test_restore_picks_step_and_ema_without_optimizer(run):
    model_dir, states, _ = run
    checkpoint_dir = os.path.join(model_dir, "checkpoints")
    restored = evaluation.load_model_dir(model_dir)
    assert restored.step == 2
    assert "make_model" in restored.config_text
    assert_trees_equal(restored.variables, {"params": states[2].params, **states[2].model_state})
    first_ema = checkpoints.restore_inference_variables(checkpoint_dir, 1, use_ema=True)
    assert_trees_equal(first_ema, {"params": states[1].ema_params, **states[1].model_state})
    with pytest.raises(FileNotFoundError, match=r"steps \[1, 2\], not 7; change --checkpoint_step"):
        evaluation.load_model_dir(model_dir, checkpoint_step=7)


def test_manifest_reads_any_rate_and_stereo_and_names_bad_files(tmp_path):
    seconds = np.arange(22050) / 22050.0
    tone = 0.5 * np.sin(2 * np.pi * 440 * seconds).astype(np.float32)
    soundfile.write(tmp_path / "stereo.wav", np.stack([tone, tone], axis=1), 22050)
    soundfile.write(tmp_path / "mono.flac", tone[:11025], 22050)
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"audio_filepath": str(tmp_path / "stereo.wav"), "text": "one"},
        {"audio_filepath": str(tmp_path / "mono.flac"), "text": "two"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (batch,) = evaluation.manifest_batches(str(manifest), batch_size=4, samples_multiple=1600)
    assert batch["waveform"].shape == (4, 16000)
    np.testing.assert_array_equal(batch["waveform_length"], [16000, 8000, 0, 0])
    np.testing.assert_array_equal(batch["valid"], [True, True, False, False])
    assert list(batch["text"][:2]) == ["one", "two"]
    # Both are the same 440 Hz tone once resampled to 16 kHz (away from the resampler's edge effects; 16-bit FLAC).
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000.0)
    np.testing.assert_allclose(batch["waveform"][0, 500:15500], expected[500:15500], atol=2e-3)
    np.testing.assert_allclose(batch["waveform"][1, 500:7500], expected[500:7500], atol=2e-3)
    assert not batch["waveform"][1, 8000:].any()

    (tmp_path / "broken.wav").write_bytes(b"not audio")
    rows.append({"audio_filepath": str(tmp_path / "broken.wav"), "text": "three"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = r"m\.jsonl, utterance '.*broken': cannot read audio file '.*broken\.wav'"
    with pytest.raises(audio_files.AudioReadError, match=expected):
        list(evaluation.manifest_batches(str(manifest)))

    nan_tone = tone.copy()
    nan_tone[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan_tone, 22050, subtype="FLOAT")
    rows[2] = {"audio_filepath": str(tmp_path / "nan.wav"), "text": "three"}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = r"m\.jsonl, utterance '.*nan': audio file '.*nan\.wav' has \d+ NaN/Inf samples of 16000"
    with pytest.raises(audio_files.AudioReadError, match=expected):
        list(evaluation.manifest_batches(str(manifest)))


def test_split_and_manifest_of_the_same_audio_score_alike(run, tmp_path):
    model_dir, _, corpus_dir = run
    out = tmp_path / "hyps.jsonl"
    manifest = str(corpus_dir / "manifests" / "test_in_vocab.jsonl")
    results = evaluation.evaluate(
        model_dir=model_dir, splits=["test_in_vocab"], manifests=[manifest], out=str(out), progress=False
    )
    split, listed = results["test_in_vocab"], results[manifest]
    assert split["num_utterances"] == listed["num_utterances"] == 16
    assert split["wer"] == pytest.approx(listed["wer"]) and split["cer"] == pytest.approx(listed["cer"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 32 and {r["source"] for r in rows} == {"test_in_vocab", manifest}
    by_id = {}
    for row in rows:
        by_id.setdefault(row["id"].split("/")[-1], set()).add(row["hypothesis"])
    assert all(len(hypotheses) == 1 for hypotheses in by_id.values())
    # The scores are recomputable from the written hypotheses (and a random model gets some words out).
    split_rows = [r for r in rows if r["source"] == "test_in_vocab"]
    assert any(r["hypothesis"] for r in split_rows)
    recomputed = evaluation.error_rates([r["reference"] for r in split_rows], [r["hypothesis"] for r in split_rows])
    assert recomputed["wer"] == split["wer"]


def test_periodic_eval_hook_scores_like_evaluate_and_compiles_once(run):
    model_dir, _, _ = run
    restored = evaluation.load_model_dir(model_dir)
    expected = {
        decoder: evaluation.evaluate(model_dir=model_dir, splits=["dev"], decoder=decoder, progress=False)["dev"]
        for decoder in ("rnnt_greedy", "ctc_greedy")
    }
    evaluation._cached_transcriber.cache_clear()
    for step in (1, 2):
        got = evaluation.split_error_rates(
            restored.model, restored.variables, step, splits=("dev",), decoders=("rnnt_greedy", "ctc_greedy")
        )
    assert got == {
        "dev/wer": expected["rnnt_greedy"]["wer"],
        "dev/cer": expected["rnnt_greedy"]["cer"],
        "dev/ctc_greedy_wer": expected["ctc_greedy"]["wer"],
        "dev/ctc_greedy_cer": expected["ctc_greedy"]["cer"],
    }
    assert evaluation._cached_transcriber.cache_info().misses == 2  # one jitted transcriber per decoder


def test_unseen_voices_and_words_manifest_evaluates(run, tmp_path):
    model_dir, _, _ = run
    manifest = unseen_speech.write_unseen_manifest(tmp_path / "unseen")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 2 * len(unseen_speech.SENTENCES)
    assert not {row["speaker"] for row in rows} & set(synthetic.SPEAKERS)
    for _, rate, pitch in unseen_speech.VOICES:
        low_rate, high_rate = synthetic.SPEAKING_RATE_WPM
        low_pitch, high_pitch = synthetic.PITCH
        assert not low_rate <= rate <= high_rate and not low_pitch <= pitch <= high_pitch
    assert len(unseen_speech.out_of_lexicon_words()) >= 10
    formats = {
        (info.samplerate, info.channels)
        for info in (soundfile.info(manifest.parent / row["audio_filepath"]) for row in rows)
    }
    assert formats == {(22050, 2), (16000, 1)}
    results = evaluation.evaluate(model_dir=model_dir, manifests=[str(manifest)], progress=False)
    assert results[str(manifest)]["num_utterances"] == len(rows)
    assert np.isfinite(results[str(manifest)]["cer"])


def test_cli_prints_table_and_reports_missing_checkpoint(run, tmp_path, capsys):
    model_dir, _, _ = run
    assert eval_cli.main(["--model_dir", model_dir, "--split", "dev", "--decoder", "ctc_greedy"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["source", "WER", "%", "CER", "%", "utts"]
    assert table.splitlines()[1].split()[0] == "dev" and table.splitlines()[1].split()[-1] == "16"
    assert eval_cli.main(["--model_dir", str(tmp_path)]) == 1
    assert "no checkpoints under" in capsys.readouterr().err


def test_retrieval_error_of_a_sonar_model_dir_matches_numpy_nearest_neighbour(tmp_path):
    """retrieval_errors on a random-init SONAR student + teacher equals a per-utterance NumPy nearest-neighbour count
    (manifest audio, sentencepiece tokens, one utterance per call)."""
    import sentencepiece

    from maestro_jax.models.sonar_text import SonarTextModel
    from maestro_jax.objectives.sonar import add_teacher

    corpus_dir = synthetic.cached_corpus("tiny")
    maestro_jax.register_configurables()
    with gin.unlock_config():
        gin.clear_config()
        for name in ("gin/models/tiny.gin", "gin/models/sonar_text_tiny.gin"):
            gin.parse_config_file(os.path.join(REPO, name))
        gin.parse_config(
            f"synthetic_corpus.corpus_dir = '{corpus_dir}'\nsynthetic_corpus.size = 'tiny'\n"
            "sonar_speech.teacher_model = @SonarTextModel()\nModelConfig.pooler_output_dim = 32"
        )
    pipeline.synthetic_corpus()
    model, teacher = make_model(), SonarTextModel()
    tokens, token_length = jnp.ones([2, 8], jnp.int32), jnp.array([8, 4], jnp.int32)
    batch = {
        "paired": {
            "waveform": jnp.zeros([2, 16000]),
            "waveform_length": jnp.array([16000, 8000], jnp.int32),
            "tokens": tokens,
            "token_length": token_length,
        }
    }
    teacher_params = nn.unbox(jax.jit(teacher.init)(jax.random.PRNGKey(3), batch)["params"])
    init = trainer.make_init_fn(
        model, optax.sgd(0.1), use_ema=False, init_hooks=[lambda v: add_teacher(v, teacher_params)]
    )
    state = jax.jit(lambda rng: nn.unbox(init(rng, batch)))(jax.random.PRNGKey(4))
    checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    # The full config: the operative one lists only configurables already called, and sonar_speech was not.
    checkpointer.save(1, state, data_state={}, config_text=gin.config_str(), force=True)
    checkpointer.close()

    got = evaluation.retrieval_errors(model_dir=str(tmp_path), splits=["test_in_vocab"], batch_size=8, progress=False)

    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(corpus_dir / "spm" / "spm.model"))
    variables = {"params": state.params, **state.model_state}

    # One utterance at a time (batch of 1, read from the manifest), padded to one fixed shape so it compiles once.
    @jax.jit
    def embed_speech(waveform, length):
        h, n = model.apply(variables, waveform, length, train=False, method="encode_speech")
        return model.apply(variables, h, n, method="pool")

    embed_text = jax.jit(functools.partial(teacher.apply, {"params": teacher_params}, method="embed"))
    speech, text, transcripts = [], [], []
    for entry in audio_files.list_manifest(str(corpus_dir / "manifests" / "test_in_vocab.jsonl")):
        waveform = audio_files.read_audio(entry.path)
        padded = np.zeros([1, 6 * 16000], np.float32)
        padded[0, : len(waveform)] = waveform
        speech.append(np.asarray(embed_speech(padded, np.array([len(waveform)], np.int32)))[0])
        ids = tokenizer.encode(entry.text)
        tokens = np.zeros([1, 64], np.int32)
        tokens[0, : len(ids)] = ids
        text.append(np.asarray(embed_text(tokens, np.array([len(ids)], np.int32)))[0])
        transcripts.append(entry.text)
    speech, text = np.array(speech, np.float64), np.array(text, np.float64)
    cosine = (speech / np.linalg.norm(speech, axis=1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1)[:, None]).T
    misses = sum(transcripts[int(np.argmax(row))] != transcripts[i] for i, row in enumerate(cosine))
    assert got["test_in_vocab"]["num_utterances"] == len(transcripts) == 16
    assert got["test_in_vocab"]["retrieval_error"] == pytest.approx(misses / len(transcripts))
    with gin.unlock_config():
        gin.clear_config()


def test_retrieval_error_needs_a_sonar_model_dir(run):
    model_dir, _, _ = run
    assert eval_cli.main(["--model_dir", model_dir, "--retrieval", "--split", "test_in_vocab"]) == 1
    with pytest.raises(ValueError, match="holds no SONAR teacher.*Drop --retrieval"):
        evaluation.retrieval_errors(model_dir=model_dir, splits=["test_in_vocab"])
