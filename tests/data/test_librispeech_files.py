"""`maestro-data prepare librispeech` on a fake LibriSpeech tree: a tarball and an extracted folder, one transcript
line without its audio, and the LM text; the manifests it writes feed manifest_streams."""

import gzip
import json
import tarfile

import numpy as np
import soundfile

from maestro_jax.cli import data as data_cli
from maestro_jax.data import audio_files, librispeech_files, pipeline, synthetic


def write_chapter(split_dir, speaker, chapter, lines, *, missing=()):
    folder = split_dir / str(speaker) / str(chapter)
    folder.mkdir(parents=True)
    transcript = []
    for index, text in enumerate(lines):
        utterance = f"{speaker}-{chapter}-{index:04d}"
        if utterance not in missing:
            samples = 1600 * (index + 2)
            soundfile.write(folder / f"{utterance}.flac", np.full(samples, 0.1 * (index + 1), np.float32), 16000)
        transcript.append(f"{utterance} {text.upper()}")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(transcript) + "\n")


def fake_librispeech(root):
    """manual_dir with dev-clean.tar.gz (2 chapters, 3 utterances) and an extracted test-clean (1 line lacks audio)."""
    staging = root / "staging"
    write_chapter(staging / "LibriSpeech" / "dev-clean", 84, 121123, ["the cat sat", "a dog ran"])
    write_chapter(staging / "LibriSpeech" / "dev-clean", 174, 50561, ["we like green tea"])
    manual = root / "manual"
    manual.mkdir()
    with tarfile.open(manual / "dev-clean.tar.gz", "w:gz") as archive:
        archive.add(staging / "LibriSpeech", arcname="LibriSpeech")
    write_chapter(manual / "LibriSpeech" / "test-clean", 61, 70968, ["the park", "gone"], missing={"61-70968-0001"})
    with gzip.open(manual / "librispeech-lm-norm.txt.gz", "wt") as f:
        f.write("THE CAT RAN IN THE PARK\nA DOG LIKES TEA\n")
    return manual


def test_prepare_writes_manifests_from_tarballs_and_folders(tmp_path, capsys):
    manual, out = fake_librispeech(tmp_path), tmp_path / "out"
    assert data_cli.main(["prepare", "librispeech", "--manual_dir", str(manual), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dev_clean" in printed and "test_clean" in printed and "librispeech-lm-norm.txt.gz" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert {split: row["utterances"] for split, row in summary["splits"].items()} == {"dev_clean": 3, "test_clean": 1}
    assert summary["skipped"] == {"test_clean": {"missing_audio": 1}}
    entries = audio_files.list_manifest(out / "dev_clean.jsonl")
    assert [e.id for e in entries] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert [e.text for e in entries] == ["we like green tea", "the cat sat", "a dog ran"]
    assert len(audio_files.read_audio(entries[2].path)) == 1600 * 3  # the relative path resolves from the manifest
    rows = [json.loads(line) for line in (out / "dev_clean.jsonl").read_text().splitlines()]
    assert [row["duration"] for row in rows] == [0.2, 0.2, 0.3]
    assert not rows[0]["audio_filepath"].startswith("/")
    # A second run reuses the extraction (its marker) and writes the same manifests.
    before = (out / "dev_clean.jsonl").read_text()
    assert data_cli.main(["prepare", "librispeech", "--manual_dir", str(manual), "--out", str(out)]) == 0
    assert "extracting" not in capsys.readouterr().out and (out / "dev_clean.jsonl").read_text() == before
    # The manifests and the LM text are what manifest_streams reads.
    spm = synthetic.cached_corpus("tiny") / "spm" / "spm.model"
    with pipeline.manifest_streams(
        0,
        1,
        0,
        tokenizer_path=str(spm),
        paired=[str(out / "dev_clean.jsonl")],
        text=[summary["lm_text"]],
        streams=("paired", "text"),
        lowercase=True,
        paired_batch_size=3,
        text_batch_size=2,
        max_seconds=1.0,
        prefetch=0,
    ) as data:
        batch = next(data)
    assert sorted(batch["paired"]["waveform_length"].tolist()) == [3200, 3200, 4800]
    assert batch["text"]["token_length"].min() > 0


def test_prepare_names_what_it_expected(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert data_cli.main(["prepare", "librispeech", "--manual_dir", str(tmp_path / "empty"), "--out", "x"]) == 1
    assert "expected tarballs like train-clean-100.tar.gz" in capsys.readouterr().err
    assert librispeech_files.SPLIT_FOLDERS["train-clean-100"] == "train_clean100"
