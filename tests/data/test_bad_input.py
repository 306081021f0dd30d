"""Bad input: each defect is dropped and counted per stream and reason, or stops a strict run naming the example;
out-of-range audio is scaled and clipped audio kept, both counted and logged."""

import collections
import json
import re

import numpy as np
import pytest
import sentencepiece
import soundfile

from maestro_jax.data import audio_files, batcher, preprocessors, tasks, tokenizer

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "we like green tea"]
MAX_SAMPLES, MAX_TOKENS = 4000, 32
GOOD_LENGTHS = [1000, 1100, 1200]
# id -> (reason, samples in its wav (None: no usable file), transcript)
BAD = {
    "garbage": (preprocessors.UNREADABLE_AUDIO, None, SENTENCES[0]),
    "missing": (preprocessors.UNREADABLE_AUDIO, None, SENTENCES[0]),
    "silent": (preprocessors.EMPTY_AUDIO, 0, SENTENCES[0]),
    "nan": (preprocessors.NON_FINITE_AUDIO, 1600, SENTENCES[0]),
    "long": (preprocessors.TOO_LONG_AUDIO, MAX_SAMPLES + 1, SENTENCES[0]),
    "untranscribed": (preprocessors.EMPTY_TRANSCRIPT, 1300, "   "),
    "digits": (preprocessors.UNK_TOKEN, 1400, "the cat 42"),
    "chatty": (preprocessors.TOO_MANY_TOKENS, 1500, " ".join(SENTENCES * 2)),
}
OPTION = {
    preprocessors.UNREADABLE_AUDIO: "fix or remove the file",
    preprocessors.EMPTY_AUDIO: "has 0 samples",
    preprocessors.NON_FINITE_AUDIO: "has 1 NaN/Inf samples of 1600",
    preprocessors.TOO_LONG_AUDIO: "raise StreamSpec.max_samples",
    preprocessors.EMPTY_TRANSCRIPT: "empty transcript",
    preprocessors.UNK_TOKEN: "unk \\(id 2\\)",
    preprocessors.TOO_MANY_TOKENS: "raise StreamSpec.max_tokens",
}


def row(root, name, samples, text):
    if name == "garbage":
        (root / "garbage.wav").write_bytes(b"RIFF\x00\x00 this is not audio")
    elif name == "nan":  # a float wav can hold NaN; it reads back as NaN
        audio = np.full(samples, 0.1, np.float32)
        audio[7] = np.nan
        soundfile.write(root / "nan.wav", audio, 16000, subtype="FLOAT")
    elif samples is not None:
        soundfile.write(root / f"{name}.wav", np.full(samples, 1000 + samples % 7, np.int16), 16000)
    return {"id": name, "audio": f"{name}.wav", "text": text}


def write_manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def vocabulary_and_rows(tmp_path_factory):
    """Registers task `bad_all` (3 good + every bad utterance) and `bad_<id>` (one good + that bad one)."""
    root = tmp_path_factory.mktemp("bad_input")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 5),
        model_prefix=str(root / "spm"),
        vocab_size=24,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    vocabulary = tokenizer.make_vocabulary(root / "spm.model")
    good = [row(root, f"good{i}", n, SENTENCES[i]) for i, n in enumerate(GOOD_LENGTHS)]
    bad = {name: row(root, name, samples, text) for name, (_, samples, text) in BAD.items()}
    write_manifest(root / "all.jsonl", good + list(bad.values()))
    tasks.register_audio_files_task("bad_all", root / "all.jsonl", vocabulary)
    for name, bad_row in bad.items():
        write_manifest(root / f"{name}.jsonl", [good[0], bad_row])
        tasks.register_audio_files_task(f"bad_{name}", root / f"{name}.jsonl", vocabulary)
    return vocabulary


def paired_spec(task, batch_size):
    return batcher.StreamSpec(task, batch_size=batch_size, max_samples=MAX_SAMPLES, max_tokens=MAX_TOKENS)


@pytest.mark.parametrize("name", sorted(BAD))
def test_strict_run_names_the_example_and_the_option(vocabulary_and_rows, name):
    reason = BAD[name][0]
    strict = batcher.MultiStreamBatcher({"paired": paired_spec(f"bad_{name}", 2)}, seed=0, strict=True)
    with pytest.raises(ValueError, match=f"'{name}' in bad_{name}:train.*{OPTION[reason]}.*strict=False"):
        next(strict)


def test_lenient_run_drops_and_counts_every_defect(vocabulary_and_rows):
    run = batcher.MultiStreamBatcher({"paired": paired_spec("bad_all", 1)}, seed=0)
    lengths = [int(next(run)["paired"]["waveform_length"][0]) for _ in range(2 * len(GOOD_LENGTHS))]
    assert sorted(lengths) == sorted(GOOD_LENGTHS * 2)
    # Two epochs of good examples consume every bad one of epoch 0 and possibly some of epoch 1.
    for reason in set(OPTION):
        expected = sum(r == reason for r, _, _ in BAD.values())
        assert expected <= run.filter_stats.count("paired", reason) <= 2 * expected, reason
    restored = batcher.MultiStreamBatcher({"paired": paired_spec("bad_all", 1)}, seed=0)
    restored.set_state(json.loads(json.dumps(run.get_state())))
    assert restored.filter_stats.as_dict() == run.filter_stats.as_dict()


def test_speech_stream_keeps_utterances_with_bad_transcripts(vocabulary_and_rows):
    usable_audio = GOOD_LENGTHS + [BAD[n][1] for n in ("untranscribed", "digits", "chatty")]
    spec = batcher.StreamSpec("bad_all", batch_size=len(usable_audio), max_samples=MAX_SAMPLES)
    run = batcher.MultiStreamBatcher({"speech": spec}, seed=1)
    batch = next(run)["speech"]  # exactly epoch 0's usable audio
    assert sorted(batch["waveform_length"].tolist()) == sorted(usable_audio)
    next(run)  # epoch 1's: every bad row of epoch 0 has been read by now
    assert set(run.filter_stats.as_dict()["speech"]) == {
        preprocessors.UNREADABLE_AUDIO,
        preprocessors.EMPTY_AUDIO,
        preprocessors.NON_FINITE_AUDIO,
        preprocessors.TOO_LONG_AUDIO,
    }


def test_eval_counts_each_defect_once_or_refuses(vocabulary_and_rows):
    stats = preprocessors.FilterStats()
    batches = list(
        batcher.eval_batches(
            "bad_all",
            batch_size=2,
            max_samples=MAX_SAMPLES,
            max_tokens=MAX_TOKENS,
            drop_invalid=True,
            filter_stats=stats,
        )
    )
    assert [i for b in batches for i, v in zip(b["id"], b["valid"]) if v] == ["good0", "good1", "good2"]
    expected = {}
    for reason, _, _ in BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert stats.as_dict() == {"eval": dict(sorted(expected.items()))}
    with pytest.raises(ValueError, match="'garbage' in bad_all:train.*drop_invalid=True"):
        list(batcher.eval_batches("bad_all", batch_size=2, max_samples=MAX_SAMPLES, max_tokens=MAX_TOKENS))


def test_strict_error_surfaces_through_the_prefetch_thread(vocabulary_and_rows):
    spec = {"paired": paired_spec("bad_silent", 2)}
    with batcher.MultiStreamBatcher(spec, seed=0, strict=True, prefetch=2) as run:
        with pytest.raises(ValueError, match="'silent' in bad_silent:train has 0 samples"):
            next(run)


def test_stream_scales_out_of_range_audio_keeps_clipped_audio_and_counts_both(
    vocabulary_and_rows, tmp_path, monkeypatch, caplog
):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000).astype(np.float32)
    soundfile.write(tmp_path / "loud.wav", 3 * tone, 16000, subtype="FLOAT")  # peak 1.5: a float wav holds it
    clipped = np.round(np.clip(4 * tone, -1, 32767 / 32768) * 32768).astype(np.int16)
    soundfile.write(tmp_path / "clipped.wav", clipped, 16000)
    rows = [{"id": name, "audio": f"{name}.wav", "text": SENTENCES[0]} for name in ("loud", "clipped")]
    write_manifest(tmp_path / "levels.jsonl", rows)
    tasks.register_audio_files_task("bad_levels", tmp_path / "levels.jsonl", vocabulary_and_rows)
    monkeypatch.setattr(preprocessors, "_level_counts", collections.Counter())  # count this test's reads only
    run = batcher.MultiStreamBatcher({"paired": paired_spec("bad_levels", 2)}, seed=0)
    batch = next(run)["paired"]
    run.close()
    assert batch["waveform_length"].tolist() == [1600, 1600]  # both used, none dropped
    # Batches carry no ids; the clipped row is the one that sits near full scale most of the time.
    loud, kept = sorted(batch["waveform"][:, :1600], key=lambda w: np.mean(np.abs(w) > 0.99))
    np.testing.assert_allclose(loud, 2 * tone, rtol=1e-5, atol=1e-7)  # peak 1.5 scaled to 1, not clipped
    np.testing.assert_array_equal(kept, clipped / np.float32(32768))  # clipped audio is kept as is
    counts = preprocessors.audio_level_counts()
    assert counts[audio_files.OUT_OF_RANGE_AUDIO] >= 1 and counts[audio_files.CLIPPED_AUDIO] >= 1
    assert run.filter_stats.as_dict() == {}
    assert re.search(r"out_of_range_audio: audio file '.*loud\.wav' \(utterance 'loud'\) peaks at 1\.5 ", caplog.text)
    assert re.search(r"clipped_audio: audio file '.*clipped\.wav' \(utterance 'clipped'\) is clipped: ", caplog.text)
