"""seqio tasks and mixtures: feature mapping, tokenisation, audio-file reading, idempotent registration."""

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import seqio
import soundfile
import tensorflow_datasets as tfds

from maestro_jax.data import audio_files, tasks, tokenizer

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "we like green tea", "she sells sea shells"]


def utterance_audio(index: int, samples: int) -> np.ndarray:
    """Deterministic int16 audio, different for every utterance."""
    return (np.random.default_rng(index).uniform(-1, 1, samples) * 20000).astype(np.int16)


def train_spm(prefix: str) -> str:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 5),
        model_prefix=prefix,
        vocab_size=28,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return prefix + ".model"


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    return train_spm(str(tmp_path_factory.mktemp("spm") / "spm"))


@pytest.fixture(scope="module")
def spm_processor(spm_path):
    return sentencepiece.SentencePieceProcessor(model_file=spm_path)


@pytest.fixture(scope="module")
def vocabulary(spm_path):
    return tokenizer.make_vocabulary(spm_path)


def examples_of(task_name: str) -> list[dict]:
    task = seqio.get_mixture_or_task(task_name)
    split = tasks.only_split(task_name)
    dataset = task.get_dataset(None, split=split, shuffle=False, trim_output_features=False, try_in_mem_cache=False)
    return list(dataset.as_numpy_iterator())


def raw_rows(corpus: Path, split: str) -> dict[str, dict]:
    with open(corpus / "raw" / f"{split}.jsonl") as lines:
        return {row["id"]: row for row in map(json.loads, lines)}


def test_synthetic_tasks_match_the_raw_corpus(tiny_corpus):
    names = tasks.register_synthetic_tasks(tiny_corpus, "tiny")
    assert names == [f"maestro_synth_tiny_{split}" for split in tasks.SYNTHETIC_SPLITS]
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tiny_corpus / "spm" / "spm.model"))
    rows = raw_rows(tiny_corpus, "paired_train")
    paired = examples_of("maestro_synth_tiny_paired_train")
    assert sorted(e["id"].decode() for e in paired) == sorted(rows)
    for example in paired[:4]:
        row = rows[example["id"].decode()]
        samples, rate = soundfile.read(tiny_corpus / "raw" / row["audio"], dtype="int16")
        assert rate == 16000
        assert example["waveform"].dtype == np.float32
        np.testing.assert_array_equal(example["waveform"], samples / 32768.0)
        assert example["tokens"].dtype == np.int32
        assert example["tokens"].tolist() == processor.encode(row["text"])
        assert 1 not in example["tokens"].tolist()  # no EOS
    text_only = examples_of("maestro_synth_tiny_text_train")
    assert len(text_only) == len(raw_rows(tiny_corpus, "text_train"))
    assert all(e["waveform"].shape == (0,) and e["tokens"].size > 0 for e in text_only)
    assert all(e["tokens"].shape == (0,) for e in examples_of("maestro_synth_tiny_speech_train"))


def test_registration_is_idempotent(tiny_corpus):
    first = tasks.register_synthetic_tasks(tiny_corpus, "tiny")
    second = tasks.register_synthetic_tasks(tiny_corpus, "tiny")
    assert first == second
    mixtures = tasks.register_stream_mixtures("idem", paired={first[0]: 1.0}, speech={first[0]: 1.0, first[1]: 3.0})
    again = tasks.register_stream_mixtures("idem", paired={first[0]: 1.0}, speech={first[0]: 1.0, first[1]: 3.0})
    assert mixtures == again == {"paired": "idem_paired", "speech": "idem_speech"}
    assert tasks.resolve_tasks("idem_speech") == pytest.approx({first[0]: 0.25, first[1]: 0.75})
    assert tasks.resolve_tasks(first[2]) == {first[2]: 1.0}


def test_mixture_rejects_unknown_task_and_bad_rate(tiny_corpus):
    names = tasks.register_synthetic_tasks(tiny_corpus, "tiny")
    with pytest.raises(ValueError, match="'no_such_task', which is not registered"):
        tasks.register_stream_mixtures("bad", text={"no_such_task": 1.0})
    with pytest.raises(ValueError, match="rate -1"):
        tasks.register_stream_mixtures("bad", text={names[2]: -1})


def sine(frequency: float, sample_rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.mark.parametrize("sample_rate,suffix", [(8000, ".wav"), (22050, ".flac"), (16000, ".wav")])
def test_read_audio_resamples_and_mixes_to_mono(tmp_path, sample_rate, suffix):
    left, right = sine(440, sample_rate, 0.5), sine(440, sample_rate, 0.5) * 0.2
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, np.stack([left, right], axis=1), sample_rate, subtype="PCM_16")
    audio = audio_files.read_audio(path)
    assert audio.dtype == np.float32
    assert audio.shape == (int(np.ceil(len(left) * 16000 / sample_rate)),)
    # The channel mean of the two tones is a 440 Hz tone of amplitude 0.3 at 16 kHz; skip filter edges.
    expected = sine(440, 16000, 0.5) * 0.6
    np.testing.assert_allclose(audio[200:-200], expected[200 : len(audio) - 200], atol=0.01)


def test_read_audio_names_unreadable_file(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    with pytest.raises(audio_files.AudioReadError, match="broken.wav"):
        audio_files.read_audio(broken)


def test_audio_file_tasks_from_directory_and_manifest(tmp_path, vocabulary, spm_processor):
    (tmp_path / "speaker" / "chapter").mkdir(parents=True)
    for i in range(3):
        soundfile.write(tmp_path / "speaker" / "chapter" / f"utt{i}.flac", utterance_audio(i, 1000 + i), 16000)
    tasks.register_audio_files_task("untranscribed_dir", tmp_path / "speaker", vocabulary)
    unlabeled = examples_of("untranscribed_dir")
    assert [e["id"].decode() for e in unlabeled] == [f"chapter/utt{i}" for i in range(3)]
    for i, example in enumerate(unlabeled):
        np.testing.assert_array_equal(example["waveform"], utterance_audio(i, 1000 + i) / 32768.0)
        assert example["tokens"].shape == (0,)

    manifest = tmp_path / "paired.jsonl"
    rows = [
        {"audio_filepath": str(tmp_path / "speaker" / "chapter" / f"utt{i}.flac"), "text": SENTENCES[i].upper()}
        for i in range(3)
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks.register_audio_files_task("paired_manifest", manifest, vocabulary, split="dev", lowercase=True)
    paired = examples_of("paired_manifest")
    assert [e["tokens"].tolist() for e in paired] == [spm_processor.encode(s) for s in SENTENCES[:3]]
    assert [e["text"].decode() for e in paired] == SENTENCES[:3]


def test_librispeech_tasks_on_mock_data(vocabulary, spm_processor):
    with tfds.testing.mock_data(num_examples=3):
        names = tasks.register_librispeech_tasks(vocabulary, splits=("dev_clean",))
        raw = list(tfds.load("librispeech", split="dev_clean").as_numpy_iterator())
        mapped = examples_of(names[0])
    assert names == ["librispeech_dev_clean"]
    assert len(mapped) == len(raw) == 3
    for source, example in zip(raw, mapped):
        np.testing.assert_array_equal(example["waveform"], source["speech"].astype(np.float32) / 32768.0)
        assert np.all(np.abs(example["waveform"]) <= 1.0)
        assert example["text"].decode() == source["text"].decode().strip().lower()
        assert example["tokens"].tolist() == spm_processor.encode(source["text"].decode().strip().lower())
        assert example["id"] == source["id"]


def test_librispeech_lm_task_on_mock_data(vocabulary, spm_processor):
    with tfds.testing.mock_data(num_examples=3):
        name = tasks.register_librispeech_lm_task(vocabulary)
        raw = list(tfds.load("librispeech_lm", split="train").as_numpy_iterator())
        mapped = examples_of(name)
    assert len(mapped) == len(raw) == 3
    for source, example in zip(raw, mapped):
        lowered = source["text"].decode().strip().lower()
        assert example["tokens"].tolist() == spm_processor.encode(lowered)
        assert example["waveform"].shape == (0,)
