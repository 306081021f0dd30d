"""Synthetic corpus: resampler against analytic sines, espeak WAV parsing, a real tiny build, TFDS read-back."""

import json
import struct
import subprocess

import numpy as np
import pytest
import soundfile

from maestro_jax.cli import data as data_cli
from maestro_jax.data import sentences, synthetic


def sine(frequency_hz, rate, seconds=1.0, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * frequency_hz * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize("orig_rate,new_rate", [(22050, 16000), (16000, 22050), (48000, 16000)])
def test_resample_keeps_a_1khz_sine(orig_rate, new_rate):
    resampled = synthetic.resample(sine(1000, orig_rate), orig_rate, new_rate)
    assert len(resampled) == -(-orig_rate * new_rate // orig_rate)
    interior = slice(200, -200)  # the filter sees zero padding near the ends
    np.testing.assert_allclose(resampled[interior], sine(1000, new_rate)[interior], atol=1e-4)
    spectrum = np.abs(np.fft.rfft(resampled * np.hanning(len(resampled))))
    peak_hz = np.argmax(spectrum) * new_rate / len(resampled)
    assert abs(peak_hz - 1000) <= new_rate / len(resampled)
    # A Hann-windowed sine of amplitude a peaks at a * N / 4 in the rfft magnitude.
    np.testing.assert_allclose(spectrum.max() / (len(resampled) / 4), 0.5, rtol=1e-2)


def test_resample_rejects_what_would_alias():
    resampled = synthetic.resample(sine(10000, 22050), 22050, 16000)  # above the 8 kHz output Nyquist
    assert np.abs(resampled[200:-200]).max() < 0.5 * 10 ** (-60 / 20)


def test_resample_passes_dc_and_is_linear():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=500), rng.normal(size=500)
    np.testing.assert_allclose(synthetic.resample(np.ones(2000), 22050, 16000)[100:-100], 1.0, atol=1e-5)
    combined = synthetic.resample(2 * x + y, 22050, 16000)
    np.testing.assert_allclose(
        combined, 2 * synthetic.resample(x, 22050, 16000) + synthetic.resample(y, 22050, 16000), atol=1e-5
    )


def espeak_like_wav(pcm: np.ndarray, rate: int = 22050) -> bytes:
    """A WAV stream with espeak-ng's streaming placeholder sizes."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    header = b"RIFF" + struct.pack("<I", 0x7FFFF024) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    return header + b"data" + struct.pack("<I", 0x7FFFF000) + pcm.astype("<i2").tobytes()


def test_parse_espeak_wav_ignores_placeholder_size():
    pcm = np.array([0, 16384, -32768, 32767], np.int16)
    waveform, rate = synthetic.parse_espeak_wav(espeak_like_wav(pcm))
    assert rate == 22050
    np.testing.assert_array_equal(waveform, pcm / 32768.0)
    with pytest.raises(synthetic.SynthesisError, match="WAV"):
        synthetic.parse_espeak_wav(b"not a wav at all")


def job(tmp_path, text="the dog slept"):
    return synthetic.SynthesisJob("dev-000007", text, "en-us+f2", 170, 50, str(tmp_path / "x.wav"))


def test_zero_sample_synthesis_names_the_utterance(tmp_path, monkeypatch):
    empty = subprocess.CompletedProcess([], 0, stdout=espeak_like_wav(np.zeros(0, np.int16)), stderr=b"")
    monkeypatch.setattr(synthetic.subprocess, "run", lambda *args, **kwargs: empty)
    with pytest.raises(synthetic.SynthesisError, match="0 samples for utterance dev-000007 .'the dog slept'"):
        synthetic.synthesize(job(tmp_path))


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng"):
        synthetic.build_corpus(tmp_path / "corpus", "tiny")
    assert data_cli.main(["synth", "--size", "tiny", "--out", str(tmp_path / "corpus")]) == 1


def test_synthesis_is_deterministic(tmp_path):
    first = synthetic.synthesize(job(tmp_path))
    audio_first, rate = soundfile.read(tmp_path / "x.wav", dtype="int16")
    assert synthetic.synthesize(job(tmp_path)) == first == len(audio_first)
    np.testing.assert_array_equal(soundfile.read(tmp_path / "x.wav", dtype="int16")[0], audio_first)
    assert rate == 16000 and 0.5 < first / rate < 3.0 and np.abs(audio_first).max() > 1000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    summary = synthetic.build_corpus(out, "tiny", seed=0, workers=2)
    return out, summary


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_raw_layout_and_rows(corpus):
    out, summary = corpus
    for split in synthetic.SPLITS:
        rows = read_jsonl(out / "raw" / f"{split}.jsonl")
        assert len(rows) == synthetic.SIZES["tiny"].counts[split] == summary["splits"][split]["examples"]
        hours = 0.0
        for row in rows:
            assert set(row) == {"id", "speaker", "text", "audio"}
            assert (row["text"] == "") == (split == "speech_train")
            if split == "text_train":
                assert row["audio"] == "" and row["speaker"] == ""
                continue
            audio, rate = soundfile.read(out / "raw" / row["audio"], dtype="int16")
            assert rate == 16000 and audio.ndim == 1 and len(audio) > 8000
            assert soundfile.info(out / "raw" / row["audio"]).subtype == "PCM_16"
            hours += len(audio) / 16000 / 3600
        assert summary["splits"][split]["hours"] == pytest.approx(hours)


def test_manifests_match_raw_files(corpus):
    out, _ = corpus
    for split in synthetic.AUDIO_SPLITS:
        raw_rows = read_jsonl(out / "raw" / f"{split}.jsonl")
        manifest = read_jsonl(out / "manifests" / f"{split}.jsonl")
        assert len(manifest) == len(raw_rows)
        for entry, row in zip(manifest, raw_rows):
            assert entry["audio_filepath"] == str(out / "raw" / row["audio"])
            assert entry["text"] == row["text"]
            assert entry["duration"] == soundfile.info(entry["audio_filepath"]).frames / 16000
    assert not (out / "manifests" / "text_train.jsonl").exists()


def test_vocabulary_rules_and_held_out_voices(corpus):
    out, summary = corpus
    vocab = json.loads((out / "vocab.json").read_text())
    a, b = set(vocab["A"]), set(vocab["B"])
    texts = {split: [row["text"] for row in read_jsonl(out / "raw" / f"{split}.jsonl")] for split in synthetic.SPLITS}
    assert not {word for text in texts["paired_train"] for word in text.split()} & b
    assert all(not sentences.words_outside(text, a) for text in texts["dev"] + texts["test_in_vocab"])
    assert all(b.intersection(text.split()) for text in texts["test_text_only_vocab"])
    assert summary["checks"]["b_words_in_paired_train"] == 0
    assert summary["checks"]["character_coverage"] == 1.0
    speakers = {
        split: {row["speaker"] for row in read_jsonl(out / "raw" / f"{split}.jsonl")}
        for split in synthetic.AUDIO_SPLITS
    }
    assert len(set().union(*speakers.values())) >= 8
    assert summary["splits"]["dev"]["voices"] == len({synthetic.voice_of(s) for s in speakers["dev"]}) >= 8
    held_out = {s for s in synthetic.SPEAKERS if synthetic.voice_of(s) in synthetic.HELD_OUT_VOICES}
    assert len({synthetic.voice_of(s) for s in held_out}) >= 2
    assert not held_out & (speakers["paired_train"] | speakers["speech_train"])
    for split in ("test_in_vocab", "test_text_only_vocab"):
        assert len({synthetic.voice_of(s) for s in speakers[split] & held_out}) >= 2


def test_tfds_read_back_of_every_split(corpus):
    import tensorflow_datasets as tfds

    from maestro_jax.data import tfds_synthetic  # noqa: F401  (registers the builder)

    out, _ = corpus
    builder = tfds.builder("maestro_synthetic", data_dir=str(out / "tfds"), config="tiny")
    assert builder.info.features["audio"].sample_rate == 16000
    for split in synthetic.SPLITS:
        rows = {row["id"]: row for row in read_jsonl(out / "raw" / f"{split}.jsonl")}
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(examples) == len(rows)
        for example in examples[:5]:
            row = rows[example["id"].decode()]
            assert example["text"].decode() == row["text"] and example["speaker"].decode() == row["speaker"]
            assert example["audio"].dtype == np.int16
            expected = soundfile.read(out / "raw" / row["audio"], dtype="int16")[0] if row["audio"] else []
            np.testing.assert_array_equal(example["audio"], expected)


def test_seqio_tfds_source_reads_the_corpus(corpus):
    import seqio

    from maestro_jax.data import tfds_synthetic  # noqa: F401

    out, _ = corpus
    source = seqio.TfdsDataSource("maestro_synthetic/tiny:1.0.0", tfds_data_dir=str(out / "tfds"))
    assert source.num_input_examples("dev") == 16
    first = next(iter(source.get_dataset("paired_train", shuffle=False).as_numpy_iterator()))
    assert first["audio"].dtype == np.int16 and first["audio"].size > 0


def test_second_call_is_a_cache_hit(corpus, monkeypatch, capsys):
    out, summary = corpus
    stamp = (out / "summary.json").stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("cache hit expected, but the corpus was rebuilt")

    monkeypatch.setattr(synthetic, "run_synthesis", must_not_run)
    assert synthetic.build_corpus(out, "tiny", seed=0) == summary
    assert data_cli.main(["synth", "--size", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "up to date" in printed and "B words in paired_train = 0 (OK)" in printed
    assert (out / "summary.json").stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="rebuilt"):  # a different seed does not match the cache
        synthetic.build_corpus(out, "tiny", seed=1)
