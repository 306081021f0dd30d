"""Audio files on disk: list them from a directory or a JSONL manifest, read them as 16 kHz mono float32.

A directory is searched recursively for .wav and .flac files (Libri-Light style untranscribed speech). A manifest is a
JSONL file with either NeMo rows `{"audio_filepath", "text", "duration"}` or the synthetic corpus's raw rows
`{"id", "audio", "text"}` (`audio` relative to the manifest's directory); rows with an empty `audio` are skipped.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import soundfile
from scipy import signal

from maestro_jax.audio_constants import SAMPLE_RATE_HZ

AUDIO_SUFFIXES = (".wav", ".flac")


@dataclasses.dataclass(frozen=True)
class AudioEntry:
    """One utterance: a unique id, the absolute path of its audio file and its transcript ("" if untranscribed)."""

    id: str
    path: str
    text: str = ""


class AudioReadError(RuntimeError):
    """Raised when an audio file cannot be decoded; the message names the file."""


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Averages channels: f32[N, C] or f32[N] -> f32[N]."""
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def resample(audio: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Polyphase resampling f32[N] at `sample_rate` Hz -> f32[ceil(N * target_rate / sample_rate)] at `target_rate`."""
    if sample_rate == target_rate or audio.size == 0:
        return audio
    common = math.gcd(sample_rate, target_rate)
    return signal.resample_poly(audio, target_rate // common, sample_rate // common).astype(np.float32)


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """Reads a wav/flac file of any sample rate and channel count as f32[N] mono at 16 kHz, clipped to [-1, 1].

    Raises AudioReadError naming the file when it is missing or cannot be decoded.
    """
    try:
        audio, sample_rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=False)
    except (OSError, RuntimeError, ValueError, soundfile.LibsndfileError) as error:
        raise AudioReadError(f"cannot read audio file '{path}': {error}") from error
    audio = resample(to_mono(audio), sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def list_directory(directory: str | os.PathLike) -> list[AudioEntry]:
    """All .wav/.flac files under `directory`, sorted; the id is the path relative to it without the suffix."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"audio directory '{root}' does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    return [AudioEntry(id=str(p.relative_to(root).with_suffix("")), path=str(p.resolve())) for p in paths]


def _entry_from_row(row: dict, manifest: Path, line_number: int) -> AudioEntry | None:
    if "audio_filepath" in row:
        audio = row["audio_filepath"]
    elif "audio" in row:
        audio = row["audio"]
    else:
        raise ValueError(
            f"{manifest}:{line_number} has neither 'audio_filepath' (NeMo manifest) nor 'audio' (raw corpus rows); "
            f"keys seen: {sorted(row)}"
        )
    if not audio:
        return None
    path = Path(audio) if os.path.isabs(audio) else manifest.parent / audio
    entry_id = row.get("id") or str(Path(audio).with_suffix(""))
    return AudioEntry(id=str(entry_id), path=str(path), text=row.get("text") or "")


def list_manifest(manifest: str | os.PathLike) -> list[AudioEntry]:
    """Rows of a JSONL manifest (NeMo or raw-corpus style) in file order, skipping rows without audio."""
    manifest = Path(manifest)
    entries = []
    with manifest.open() as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{manifest}:{line_number} is not valid JSON: {error}") from error
            entry = _entry_from_row(row, manifest, line_number)
            if entry is not None:
                entries.append(entry)
    return entries


def list_audio(source: str | os.PathLike) -> list[AudioEntry]:
    """Entries of a directory of audio files or of a .jsonl manifest."""
    if Path(source).is_dir():
        return list_directory(source)
    if Path(source).is_file():
        return list_manifest(source)
    raise FileNotFoundError(f"audio source '{source}' is neither a directory nor a JSONL manifest")
