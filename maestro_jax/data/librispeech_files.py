"""LibriSpeech from local files: manifests and a text file for `manifest_streams`, with nothing downloaded.

    maestro-data prepare librispeech --manual_dir DIR --out OUT

DIR holds the official tarballs (`train-clean-100.tar.gz`, `dev-clean.tar.gz`, ...; extracted once under
OUT/extracted) and/or their extracted `LibriSpeech/<split>/` folders, and optionally the LM corpus text
`librispeech-lm-norm.txt[.gz]`. OUT receives one NeMo-style manifest per split found (`<split>.jsonl`, split names as
in `tasks.LIBRISPEECH_SPLITS`: `train_clean100`, `dev_clean`, ...; rows `{"id", "audio_filepath", "text",
"duration"}` with audio paths relative to OUT and lower-cased transcripts) and `summary.json`.
"""

import json
import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import soundfile

# The official folder (and tarball) name of each split -> the split name used by the TFDS route and the manifests.
SPLIT_FOLDERS = {
    "train-clean-100": "train_clean100",
    "train-clean-360": "train_clean360",
    "train-other-500": "train_other500",
    "dev-clean": "dev_clean",
    "dev-other": "dev_other",
    "test-clean": "test_clean",
    "test-other": "test_other",
}
LM_TEXT_NAMES = ("librispeech-lm-norm.txt.gz", "librispeech-lm-norm.txt")
EXTRACTED_DIR = "extracted"

log = logging.getLogger(__name__)


def extract_tarballs(manual_dir: Path, out_dir: Path) -> list[Path]:
    """Extracts every `<split>.tar.gz` of `manual_dir` under OUT/extracted once (a marker file records it)."""
    extracted = []
    for folder in SPLIT_FOLDERS:
        tarball = manual_dir / f"{folder}.tar.gz"
        if not tarball.is_file():
            continue
        target = out_dir / EXTRACTED_DIR
        marker = target / f".{folder}.extracted"
        if not marker.exists():
            print(f"[prepare] extracting {tarball} into {target}", flush=True)
            target.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(tarball) as archive:
                    archive.extractall(target, filter="data")  # refuses absolute paths and links out of target
            except (tarfile.TarError, OSError, EOFError) as error:
                raise ValueError(f"cannot extract {tarball}: {error}; re-download it or extract it by hand") from error
            marker.touch()
        extracted.append(target)
    return extracted


def find_split_dirs(roots: list[Path]) -> dict[str, Path]:
    """{split name: folder} of the split folders under any root, as `<root>/LibriSpeech/<split>` or `<root>/<split>`
    (the first root that has a split wins)."""
    found = {}
    for root in roots:
        for folder, split in SPLIT_FOLDERS.items():
            for candidate in (root / "LibriSpeech" / folder, root / folder):
                if split not in found and candidate.is_dir():
                    found[split] = candidate
    return found


def split_rows(split_dir: Path, out_dir: Path, skipped: dict[str, int]) -> Iterator[dict]:
    """Manifest rows of one split folder (speaker/chapter/`<spk>-<chap>.trans.txt` + `<utt id>.flac`), sorted by id.

    Transcript lines without their .flac, and unreadable .flac files, are skipped, logged and counted in `skipped`.
    """
    for transcript in sorted(split_dir.glob("*/*/*.trans.txt")):
        with transcript.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                utterance_id, _, text = line.strip().partition(" ")
                audio = transcript.parent / f"{utterance_id}.flac"
                try:
                    info = soundfile.info(os.fspath(audio))
                except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
                    reason = "missing_audio" if not audio.exists() else "unreadable_audio"
                    skipped[reason] = skipped.get(reason, 0) + 1
                    log.warning("%s:%d: skipped %s (%s): %s", transcript, line_number, utterance_id, reason, error)
                    continue
                yield {
                    "id": utterance_id,
                    "audio_filepath": os.path.relpath(audio, out_dir),
                    "text": text.lower(),
                    "duration": round(info.frames / info.samplerate, 3),
                }


def prepare(manual_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Writes OUT/<split>.jsonl for every LibriSpeech split found in `manual_dir` and returns (and writes) a summary:
    {"splits": {split: {"utterances", "hours", "manifest"}}, "skipped": {split: {reason: count}}, "lm_text"}."""
    manual_dir, out_dir = Path(manual_dir).resolve(), Path(out_dir).resolve()
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"--manual_dir {manual_dir} is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    split_dirs = find_split_dirs([manual_dir, *extract_tarballs(manual_dir, out_dir)])
    if not split_dirs:
        raise FileNotFoundError(
            f"no LibriSpeech split under {manual_dir}: expected tarballs like train-clean-100.tar.gz or folders "
            f"LibriSpeech/<split>/ for splits {sorted(SPLIT_FOLDERS)}"
        )
    summary = {"splits": {}, "skipped": {}, "lm_text": None}
    for split, split_dir in sorted(split_dirs.items()):
        skipped: dict[str, int] = {}
        manifest = out_dir / f"{split}.jsonl"
        utterances, seconds = 0, 0.0
        with open(f"{manifest}.tmp", "w") as f:  # renamed when complete: a half-written manifest is never read
            for row in split_rows(split_dir, out_dir, skipped):
                f.write(json.dumps(row) + "\n")
                utterances, seconds = utterances + 1, seconds + row["duration"]
        os.replace(f"{manifest}.tmp", manifest)
        summary["splits"][split] = {
            "utterances": utterances,
            "hours": round(seconds / 3600, 3),
            "manifest": str(manifest),
        }
        if skipped:
            summary["skipped"][split] = skipped
    lm_text = next((manual_dir / name for name in LM_TEXT_NAMES if (manual_dir / name).is_file()), None)
    summary["lm_text"] = str(lm_text) if lm_text else None
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{'split':<16}{'utterances':>12}{'hours':>10}  manifest"]
    for split, row in summary["splits"].items():
        lines.append(f"{split:<16}{row['utterances']:>12}{row['hours']:>10.2f}  {row['manifest']}")
    for split, reasons in summary["skipped"].items():
        lines.append(f"skipped in {split}: " + ", ".join(f"{count} {reason}" for reason, count in reasons.items()))
    lines.append(
        f"LM text: {summary['lm_text']}"
        if summary["lm_text"]
        else "LM text: none found (librispeech-lm-norm.txt[.gz] in --manual_dir); give manifest_streams.text "
        "any text files"
    )
    return "\n".join(lines)
