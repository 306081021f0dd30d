"""Own data: manifests and text files written here (espeak-ng speech at 22.05 kHz stereo and 8 kHz, a corrupt and a
missing file, a gzip'ed text with an empty and an untokenisable line) -> `maestro-data tokenizer` -> manifest_streams
(each bad row counted by kind, resume equal to an uninterrupted run) -> a tiny MAESTRO trained by `maestro-train` with
gin/experiments/own_data_maestro.gin, dev WER from a manifest."""

import gzip
import json
import os

import gin
import numpy as np
import pytest
import sentencepiece
import soundfile
from scipy import signal

from maestro_jax import evaluation, inference, metrics
from maestro_jax.audio_constants import SAMPLE_RATE_HZ
from maestro_jax.cli import data as data_cli
from maestro_jax.cli import train as train_cli
from maestro_jax.data import pipeline, preprocessors, synthetic

VOCAB_SIZE = 128
UNTOKENISABLE = "雪 ☃ 雪"


def read_texts(path, limit):
    with open(path) as f:
        return [json.loads(line)["text"] for line in f][:limit]


@pytest.fixture(scope="module")
def own_files(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    (root / "audio").mkdir()
    sentences = read_texts(tiny_corpus / "raw" / "paired_train.jsonl", 6)
    rows, durations = [], {}
    for index, text in enumerate(sentences):
        waveform, rate = synthetic.speak(text, "en-us", 170, 50)  # espeak-ng's native 22.05 kHz mono
        if index % 2 == 0:  # 22.05 kHz stereo wav
            name = f"audio/u{index}.wav"
            soundfile.write(root / name, np.stack([waveform, 0.8 * waveform], axis=1), rate)
        else:  # 8 kHz flac
            name = f"audio/u{index}.flac"
            waveform, rate = signal.resample_poly(waveform, 8000 // 50, rate // 50).astype(np.float32), 8000
            soundfile.write(root / name, np.clip(waveform, -1, 1), rate)
        durations[f"u{index}"] = len(waveform) / rate
        rows.append({"audio_filepath": name, "text": text, "duration": len(waveform) / rate})
    (root / "audio" / "corrupt.wav").write_bytes(b"RIFF\x00\x00 not a wav at all")
    bad_rows = [
        {"audio_filepath": "audio/corrupt.wav", "text": sentences[0]},
        {"audio_filepath": "audio/missing.wav", "text": sentences[1]},
    ]

    def write(name, manifest_rows):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in manifest_rows))
        return str(root / name)

    text = read_texts(tiny_corpus / "raw" / "text_train.jsonl", 400)
    clean_text = root / "clean.txt"
    clean_text.write_text("\n".join(text) + "\n")
    with gzip.open(root / "unspoken.txt.gz", "wt") as f:
        f.write("\n".join(text[:20] + ["", UNTOKENISABLE] + text[20:40]) + "\n")
    return {
        "root": root,
        "paired": write("paired.jsonl", rows[:4] + bad_rows),
        "speech": write("speech.jsonl", [{"audio_filepath": r["audio_filepath"]} for r in rows + bad_rows]),
        "dev": write("dev.jsonl", rows[4:]),
        "text": str(root / "unspoken.txt.gz"),
        "clean_text": str(clean_text),
        "durations": durations,
    }


@pytest.fixture(scope="module")
def own_tokenizer(own_files):
    out = own_files["root"] / "spm"
    argv = ["tokenizer", "--text", own_files["clean_text"], "--manifest", own_files["paired"]]
    assert data_cli.main(argv + ["--vocab_size", str(VOCAB_SIZE), "--out", str(out)]) == 0
    return str(out / "spm.model")


def test_tokenizer_cli_keeps_the_id_conventions_and_reports_coverage(own_files, own_tokenizer):
    processor = sentencepiece.SentencePieceProcessor(model_file=own_tokenizer)
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.get_piece_size()) == (
        0,
        1,
        2,
        VOCAB_SIZE,
    )
    summary = json.loads((own_files["root"] / "spm" / "tokenizer_summary.json").read_text())
    assert summary["sentences_seen"] == 400 + 6 and summary["unk_rate"] == 0.0  # every manifest row has a text
    assert summary["character_coverage"] == 1.0


def test_streams_refuse_a_tokenizer_that_breaks_the_id_conventions(own_files, tmp_path):
    sentencepiece.SentencePieceTrainer.train(  # sentencepiece's defaults: unk 0, bos 1, eos 2
        input=own_files["clean_text"], model_prefix=str(tmp_path / "default"), vocab_size=64, minloglevel=2
    )
    with pytest.raises(ValueError, match="id 0 is the RNN-T/CTC blank.*maestro-data tokenizer"):
        pipeline.manifest_streams(0, 1, 0, tokenizer_path=str(tmp_path / "default.model"), paired=[own_files["paired"]])


def own_streams(own_files, tokenizer_path, **overrides):
    options = dict(
        tokenizer_path=tokenizer_path,
        paired=[own_files["paired"]],
        speech={own_files["speech"]: 1.0},
        text=[own_files["text"]],
        paired_batch_size=2,
        speech_batch_size=2,
        text_batch_size=4,
        max_seconds=10.0,
        max_tokens=64,
        prefetch=0,
    )
    return pipeline.manifest_streams(0, 1, 3, **{**options, **overrides})


def test_manifest_streams_read_any_rate_count_bad_rows_by_kind_and_resume_exactly(own_files, own_tokenizer):
    data = own_streams(own_files, own_tokenizer)
    batches = [next(data) for _ in range(12)]  # > 2 epochs of the paired stream (4 good rows), > 1 of the others
    # Audio at 22.05 kHz stereo and 8 kHz arrives as 16 kHz mono, as long as the file.
    expected = sorted(round(d * SAMPLE_RATE_HZ) for d in list(own_files["durations"].values())[:4])
    lengths = sorted({int(n) for b in batches for n in b["paired"]["waveform_length"]})
    assert np.allclose(lengths, expected, atol=2), (lengths, expected)
    counts = data.filter_stats.as_dict()
    assert counts["paired"][preprocessors.UNREADABLE_AUDIO] >= 2  # corrupt + missing, once per epoch
    assert counts["speech"][preprocessors.UNREADABLE_AUDIO] >= 2
    assert counts["text"] == {preprocessors.EMPTY_TRANSCRIPT: 1, preprocessors.UNK_TOKEN: 1}
    texts = {tuple(row[row > 0]) for b in batches for row in b["text"]["tokens"]}
    assert len(texts) == 40  # every good line of the gzip'ed file, and nothing else
    # Resume mid-epoch: a new batcher restored from the state after 5 batches yields batches 5..11.
    interrupted = own_streams(own_files, own_tokenizer)
    for _ in range(5):
        next(interrupted)
    resumed = own_streams(own_files, own_tokenizer)
    resumed.set_state(json.loads(json.dumps(interrupted.get_state())))
    for expected_batch in batches[5:]:
        got = next(resumed)
        for stream in ("paired", "speech", "text"):
            for key, value in expected_batch[stream].items():
                np.testing.assert_array_equal(got[stream][key], value, err_msg=f"{stream}/{key}")


def test_streams_name_the_binding_for_missing_sources_and_files(own_files, own_tokenizer):
    with pytest.raises(ValueError, match="manifest_streams.text names no file.*TEXT_FILES.*drop 'text' from STREAMS"):
        own_streams(own_files, own_tokenizer, text=[])
    with pytest.raises(FileNotFoundError, match="nothing-here-.*matches no file"):
        own_streams(own_files, own_tokenizer, text=[str(own_files["root"] / "nothing-here-*.txt")])
    with pytest.raises(ValueError, match="1 file\\(s\\) but the job reads 2 input shards"):
        pipeline.manifest_streams(
            0, 2, 0, tokenizer_path=own_tokenizer, streams=("text",), text=[own_files["text"]], prefetch=0
        )


def test_train_stops_before_compiling_on_a_tokenizer_of_another_size_than_the_model(own_files, own_tokenizer, tmp_path):
    from maestro_jax import train
    from maestro_jax.models.config import ModelConfig
    from maestro_jax.models.model import SpeechTextModel

    with pytest.raises(ValueError, match=f"{own_tokenizer} has {VOCAB_SIZE} pieces but ModelConfig.vocab_size = 256"):
        train.train(
            model_dir=str(tmp_path),
            model=SpeechTextModel(ModelConfig(vocab_size=256)),
            objective=lambda *args: pytest.fail("reached the objective"),
            make_data=lambda *args: own_streams(own_files, own_tokenizer),
            train_steps=1,
        )


def test_own_data_experiment_trains_a_tiny_maestro_and_scores_the_dev_manifest(own_files, own_tokenizer, tmp_path):
    model_dir = tmp_path / "run"
    argv = [
        "--gin_file=gin/experiments/own_data_maestro.gin",
        "--gin_file=gin/models/tiny.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.PAIRED_MANIFESTS=['{own_files['paired']}']",
        f"--gin.SPEECH_MANIFESTS=['{own_files['speech']}']",
        f"--gin.TEXT_FILES=['{own_files['text']}']",
        f"--gin.DEV_MANIFEST='{own_files['dev']}'",
        f"--gin.TOKENIZER='{own_tokenizer}'",
        f"--gin.ModelConfig.vocab_size={VOCAB_SIZE}",
        "--gin.TRAIN_STEPS=2",
        "--gin.WARMUP_STEPS=1",
        "--gin.TEXT_START_STEP=0",
        # Multiples of the 8 simulated devices (tests/conftest.py); the 4 good paired rows repeat across epochs.
        "--gin.PAIRED_BATCH_SIZE=8",
        "--gin.SPEECH_BATCH_SIZE=8",
        "--gin.TEXT_BATCH_SIZE=8",
        "--gin.manifest_streams.max_seconds=10.0",
        "--gin.manifest_streams.length_group_batches=1",
        "--gin.maestro.text_frames_per_token=4",
        "--gin.train.progress_bar=False",
        "--gin.split_error_rates.decoders=('rnnt_greedy',)",  # one decoder to compile
    ]
    try:
        assert train_cli.main(argv) == 0
        gin.clear_config()
        # maestro-eval's path: the run's operative config names its own tokenizer, not the synthetic corpus's.
        scored = evaluation.evaluate(model_dir=str(model_dir), manifests=[own_files["dev"]], progress=False)
        assert inference.tokenizer_of_config() == own_tokenizer
    finally:
        with gin.unlock_config():
            gin.clear_config()
    assert scored[own_files["dev"]]["num_utterances"] == 2
    rows = metrics.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
    final = [row for row in rows if "eval/dev/wer" in row]
    # An untrained model's WER (insertions make it exceed 1): only that the dev manifest was decoded and scored.
    assert final and final[-1]["step"] == 2 and np.isfinite(final[-1]["eval/dev/wer"]) and final[-1]["eval/dev/cer"] > 0
    assert any("text_rnnt_loss" in row for row in rows), rows[-1]  # the unspoken-text stream was trained on
