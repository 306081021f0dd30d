"""maestro-eval's library: WER/CER against a brute-force edit distance, checkpoint restore without the optimizer
(params, EMA, step choice), manifests (any rate, stereo, unreadable files, bad rows skipped with --skip_bad,
out-of-range and clipped audio reported) and seqio splits scoring alike."""

import functools
import json
import os
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile

import maestro_jax
from maestro_jax import checkpoints, evaluation, sonar_eval, trainer
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
    expected = r"m\.jsonl:3 \(audio file '.*broken\.wav'\): unreadable_audio: .*--skip_bad"
    with pytest.raises(audio_files.AudioReadError, match=expected):
        list(evaluation.manifest_batches(str(manifest)))

    nan_tone = tone.copy()
    nan_tone[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan_tone, 22050, subtype="FLOAT")
    rows[2] = {"audio_filepath": str(tmp_path / "nan.wav"), "text": "three"}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = r"m\.jsonl:3 \(audio file '.*nan\.wav'\): non_finite_audio: has \d+ NaN/Inf samples of 16000"
    with pytest.raises(audio_files.AudioReadError, match=expected):
        list(evaluation.manifest_batches(str(manifest)))


TONE = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
# name -> (reason, whether the message names an audio file) for each kind of manifest row maestro-eval cannot score.
BAD_ROWS = {
    "missing": (audio_files.UNREADABLE_AUDIO, True),
    "garbage": (audio_files.UNREADABLE_AUDIO, True),
    "nan": (audio_files.NON_FINITE_AUDIO, True),
    "inf": (audio_files.NON_FINITE_AUDIO, True),
    "empty": (audio_files.EMPTY_AUDIO, True),
    "long": (audio_files.TOO_LONG_AUDIO, True),
    "no_text": (audio_files.MISSING_KEY, True),
    "no_audio_key": (audio_files.MISSING_KEY, False),
    "bad_json": (audio_files.BAD_JSON, False),
    "json_list": (audio_files.BAD_JSON, False),
}
LONG_LIMIT = 12000  # max_samples: TONE (8000 samples) fits, "long" (16000) does not


def bad_row_lines(root) -> dict[str, str]:
    """Writes the audio of BAD_ROWS (plus a good TONE) under `root`; returns name -> its manifest line."""
    nan, inf = TONE.copy(), TONE.copy()
    nan[10], inf[10] = np.nan, np.inf  # at 16 kHz no resampling smears them; Inf must not be clipped to 1
    soundfile.write(root / "good.wav", TONE, 16000)
    soundfile.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    soundfile.write(root / "inf.wav", inf, 16000, subtype="FLOAT")
    soundfile.write(root / "empty.wav", TONE[:0], 16000)
    soundfile.write(root / "long.wav", np.tile(TONE, 2), 16000)
    (root / "garbage.wav").write_bytes(b"RIFF\x00\x00 this is not audio")
    lines = {name: json.dumps({"audio_filepath": f"{name}.wav", "text": "a tone"}) for name in BAD_ROWS}
    lines["good"] = json.dumps({"audio_filepath": "good.wav", "text": "a tone"})
    lines["no_text"] = json.dumps({"audio_filepath": "good.wav", "duration": 0.5})
    lines["no_audio_key"] = json.dumps({"path": "good.wav", "text": "a tone"})
    lines["bad_json"] = '{"audio_filepath": "good.wav", "text": "a tone"'
    lines["json_list"] = '["good.wav", "a tone"]'
    return lines


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_manifest_row_stops_naming_line_file_and_reason_or_is_skipped(tmp_path, name):
    reason, names_file = BAD_ROWS[name]
    lines = bad_row_lines(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f"{lines['good']}\n{lines[name]}\n")
    read = functools.partial(evaluation.manifest_batches, str(manifest), batch_size=4, max_samples=LONG_LIMIT)
    file = rf" \(audio file '.*/{'good' if name == 'no_text' else name}\.wav'\)" if names_file else ""
    with pytest.raises((ValueError, audio_files.AudioReadError), match=rf"m\.jsonl:2{file}: {reason}: .*--skip_bad"):
        list(read())
    report = evaluation.ManifestReport()
    (batch,) = read(skip_bad=True, report=report)
    assert list(batch["id"][batch["valid"]]) == ["good"]
    (skipped,) = report.skipped
    assert (skipped["manifest"], skipped["line"], skipped["reason"]) == (str(manifest), 2, reason)
    assert skipped["file"].endswith(".wav") == names_file and skipped["value"]
    assert report.counts()["num_skipped"] == 1.0


def test_out_of_range_audio_is_scaled_and_clipped_audio_kept_and_both_reported(tmp_path, caplog):
    soundfile.write(tmp_path / "loud.wav", 3 * TONE, 16000, subtype="FLOAT")  # peak 1.5: float WAV holds it
    soundfile.write(tmp_path / "clipped.wav", np.clip(4 * TONE, -1, 1), 16000, subtype="PCM_16")
    soundfile.write(tmp_path / "full.wav", TONE / TONE.max(), 16000, subtype="PCM_16")  # touches full scale only
    loud, levels = audio_files.read_audio_with_levels(tmp_path / "loud.wav")
    assert levels.peak == pytest.approx(1.5) and levels.report == audio_files.OUT_OF_RANGE_AUDIO
    np.testing.assert_allclose(loud, 2 * TONE, rtol=1e-6)  # the same waveform at peak 1, not clipped
    clipped, levels = audio_files.read_audio_with_levels(tmp_path / "clipped.wav")
    assert levels.report == audio_files.CLIPPED_AUDIO and levels.clipped_fraction > 0.5
    np.testing.assert_allclose(clipped, np.clip(4 * TONE, -1, 1), atol=1 / 16384)  # kept as is
    assert audio_files.read_audio_with_levels(tmp_path / "full.wav")[1].report is None

    manifest = tmp_path / "m.jsonl"
    rows = [{"audio_filepath": f"{name}.wav", "text": "a tone"} for name in ("full", "loud", "clipped")]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluation.ManifestReport()
    (batch,) = evaluation.manifest_batches(str(manifest), batch_size=4, report=report)
    assert batch["valid"].sum() == 3 and np.abs(batch["waveform"]).max() == 1.0
    assert [(w["line"], w["reason"]) for w in report.level_warnings] == [
        (2, audio_files.OUT_OF_RANGE_AUDIO),
        (3, audio_files.CLIPPED_AUDIO),
    ]
    assert report.level_warnings[0]["peak"] == pytest.approx(1.5)
    assert report.counts() == {"num_skipped": 0.0, "num_out_of_range_audio": 1.0, "num_clipped_audio": 1.0}
    assert re.search(r"m\.jsonl:2: audio file '.*loud\.wav' peaks at 1\.5 ", caplog.text)
    assert re.search(r"m\.jsonl:3: audio file '.*clipped\.wav' is clipped: \d+\.\d+ % of samples", caplog.text)


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


def test_tune_fusion_picks_the_grid_point_with_the_lowest_dev_wer_as_evaluate_scores_it(run):
    model_dir, _, _ = run
    tuned = evaluation.tune_fusion(model_dir=model_dir, weights=(0.0, 0.5), rewards=(0.0, 2.0), beam_size=2)
    grid = {(p["ilm_fusion_weight"], p["length_reward"]): p["wer"] for p in tuned["grid"]}
    assert sorted(grid) == [(0.0, 0.0), (0.0, 2.0), (0.5, 0.0), (0.5, 2.0)]
    assert len(set(grid.values())) > 1, "every grid point scores alike: the grid does not probe the options"
    best = (tuned["ilm_fusion_weight"], tuned["length_reward"])
    assert tuned["wer"] == grid[best] == min(grid.values())
    for weight, reward in {best, (0.0, 0.0)}:
        scored = evaluation.evaluate(
            model_dir=model_dir,
            splits=["dev"],
            decoder="rnnt_beam",
            beam_size=2,
            ilm_fusion_weight=weight,
            length_reward=reward,
            progress=False,
        )
        assert scored["dev"]["wer"] == grid[(weight, reward)]


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


def test_skip_bad_scores_the_good_rows_like_a_manifest_of_only_them(run, tmp_path, capsys):
    model_dir, _, corpus_dir = run
    corpus_lines = (corpus_dir / "manifests" / "test_in_vocab.jsonl").read_text().splitlines()[:3]
    first = json.loads(corpus_lines[0])
    speech, _ = soundfile.read(first["audio_filepath"], dtype="float32")
    # A float copy of the first utterance peaking at 1.5: scored (scaled back to peak 1) and reported.
    soundfile.write(tmp_path / "loud.wav", speech * (1.5 / np.abs(speech).max()), 16000, subtype="FLOAT")
    good = corpus_lines + [json.dumps({"audio_filepath": str(tmp_path / "loud.wav"), "text": first["text"]})]
    bad = {name: line for name, line in bad_row_lines(tmp_path).items() if name not in ("good", "long")}
    clean, dirty = tmp_path / "clean.jsonl", tmp_path / "dirty.jsonl"
    clean.write_text("".join(line + "\n" for line in good))
    lines, expected_skips = [], set()
    for i, name in enumerate(bad):  # every bad row, the good ones interleaved with the first of them
        lines += good[i : i + 1] + [bad[name]]
        expected_skips.add((len(lines), BAD_ROWS[name][0]))
    dirty.write_text("".join(line + "\n" for line in lines))

    expected = evaluation.evaluate(model_dir=model_dir, manifests=[str(clean)], progress=False)[str(clean)]
    assert eval_cli.main(["--model_dir", model_dir, "--manifest", str(dirty)]) == 1
    name = next(iter(bad))
    first_bad = re.escape(f"{dirty}:2 (audio file '{tmp_path}/{name}.wav'): {BAD_ROWS[name][0]}: ")
    assert re.search(first_bad + ".*--skip_bad", capsys.readouterr().err)

    assert eval_cli.main(["--model_dir", model_dir, "--manifest", str(dirty), "--skip_bad", "--json"]) == 0
    out = capsys.readouterr().out
    got = json.loads(out[out.index("\n{") + 1 :])[str(dirty)]
    for key in ("wer", "cer", "num_utterances", "num_reference_words"):
        assert got[key] == expected[key], key
    assert got["num_utterances"] == len(good) and got["num_skipped"] == len(bad)
    assert {(row["line"], row["reason"]) for row in got["skipped"]} == expected_skips
    table = out.splitlines()
    assert table[0].split()[-1] == "skipped" and table[1].split()[-1] == str(len(bad))
    assert sum(line.startswith(f"skipped {dirty}:") for line in table) == len(bad)
    for report in (expected, got):
        (warning,) = report["level_warnings"]
        assert warning["file"].endswith("loud.wav") and warning["peak"] == pytest.approx(1.5)
        assert report["num_out_of_range_audio"] == 1.0 and report["num_clipped_audio"] == 0.0


def test_cli_prints_table_and_reports_missing_checkpoint(run, tmp_path, capsys):
    model_dir, _, _ = run
    assert eval_cli.main(["--model_dir", model_dir, "--split", "dev", "--decoder", "ctc_greedy"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["source", "WER", "%", "CER", "%", "utts", "skipped"]
    assert table.splitlines()[1].split()[0] == "dev" and table.splitlines()[1].split()[-2:] == ["16", "0"]
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
    assert got["test_in_vocab"]["retrieval_error_cosine"] == pytest.approx(misses / len(transcripts))
    xsim = sonar_eval.retrieval_error(speech, text, transcripts, margin="ratio", k=4)  # tested against LASER's loop
    assert got["test_in_vocab"]["retrieval_error"] == pytest.approx(xsim)
    with gin.unlock_config():
        gin.clear_config()


def test_retrieval_error_needs_a_sonar_model_dir(run):
    model_dir, _, _ = run
    assert eval_cli.main(["--model_dir", model_dir, "--retrieval", "--split", "test_in_vocab"]) == 1
    with pytest.raises(ValueError, match="holds no SONAR teacher.*Drop --retrieval"):
        evaluation.retrieval_errors(model_dir=model_dir, splits=["test_in_vocab"])
