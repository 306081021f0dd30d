"""Audio files on disk: list them from a directory or a JSONL manifest, read them as 16 kHz mono float32.

A directory is searched recursively for .wav and .flac files (Libri-Light style untranscribed speech). A manifest is a
JSONL file with either NeMo rows `{"audio_filepath", "text", "duration"}` or the synthetic corpus's raw rows
`{"id", "audio", "text"}` (`audio` relative to the manifest's directory); rows with an empty `audio` are skipped.

Bad input is named, never silent: `scan_manifest` / `read_manifest_audio` turn each unusable row into a `BadRow`
(manifest, line, file, reason, value seen), and `read_audio_with_levels` reports audio whose decoded samples leave
[-1, 1] or sit at full scale (`AudioLevels`). Out-of-range audio (a float WAV can hold |x| > 1; integer PCM cannot)
is scaled by 1/peak rather than clipped or kept: the package's contract is [-1, 1] (audio_constants), clipping
would add distortion that clean training data never has, while recordings differ in gain anyway.
"""

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
from scipy import signal

from maestro_jax.audio_constants import SAMPLE_RATE_HZ

AUDIO_SUFFIXES = (".wav", ".flac")

# Why a manifest row or an audio file cannot be used (preprocessors.REASONS reuses the audio ones).
BAD_JSON = "bad_json"
MISSING_KEY = "missing_key"
UNREADABLE_AUDIO = "unreadable_audio"
EMPTY_AUDIO = "empty_audio"
NON_FINITE_AUDIO = "non_finite_audio"
TOO_LONG_AUDIO = "too_long_audio"
# Level reports: the audio is still used (out-of-range audio scaled to peak 1, clipped audio as is).
OUT_OF_RANGE_AUDIO = "out_of_range_audio"
CLIPPED_AUDIO = "clipped_audio"

# 16-bit full scale; 24- and 32-bit PCM full scale lie above it, so it serves every sample format.
FULL_SCALE = 32767 / 32768
# Audio is clipped when more than this fraction of its samples are clipped: at or beyond full scale right after a
# sample at or beyond it of the same sign. A lone sample at full scale is a peak (a peak-normalised tone has many);
# a clipped recording sits there for whole stretches.
CLIPPED_FRACTION = 1e-3


@dataclasses.dataclass(frozen=True)
class AudioEntry:
    """One utterance: a unique id, the absolute path of its audio file and its transcript ("" if untranscribed)."""

    id: str
    path: str
    text: str = ""
    line: int = 0  # 1-based line in its manifest (0 for a directory listing), for messages


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A manifest row that cannot be used: where it is (manifest, 1-based line), the audio file it names ("" if
    none), why (one of the reasons above) and the value seen."""

    manifest: str
    line: int
    file: str
    reason: str
    value: str

    def describe(self) -> str:
        file = f" (audio file '{self.file}')" if self.file else ""
        return f"{self.manifest}:{self.line}{file}: {self.reason}: {self.value}"


@dataclasses.dataclass(frozen=True)
class AudioLevels:
    """Levels of a file's samples as decoded (all channels, before scaling and resampling): `peak` the largest
    |x| among finite samples (1 = full scale) and `clipped_fraction` the fraction of clipped samples (CLIPPED_FRACTION
    says which)."""

    peak: float
    clipped_fraction: float

    @property
    def report(self) -> str | None:
        """OUT_OF_RANGE_AUDIO (peak > 1), CLIPPED_AUDIO (clipped_fraction > CLIPPED_FRACTION) or None."""
        if self.peak > 1.0:
            return OUT_OF_RANGE_AUDIO
        if self.clipped_fraction > CLIPPED_FRACTION:
            return CLIPPED_AUDIO
        return None

    def describe(self) -> str:
        """What was seen and done, for a warning that also names the file."""
        clipped = f"{100 * self.clipped_fraction:.2f} % of samples clipped"
        if self.report == OUT_OF_RANGE_AUDIO:
            return (
                f"peaks at {self.peak:.4g} (> 1 after decoding; {clipped} at full scale); scaled by 1/{self.peak:.4g} "
                "to peak 1; write the file within [-1, 1] to keep its own gain"
            )
        return (
            f"is clipped: {clipped} (more than audio_files.CLIPPED_FRACTION = {100 * CLIPPED_FRACTION:.2f} %), "
            f"peak {self.peak:.4g}; used as is: re-record or drop the file if its clipping hurts"
        )


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


def read_audio_with_levels(path: str | os.PathLike) -> tuple[np.ndarray, AudioLevels]:
    """Reads a wav/flac file of any sample rate and channel count as f32[N] mono at 16 kHz in [-1, 1], and the
    levels of its decoded samples. Audio peaking above 1 is scaled to peak 1 (module docstring); NaN/Inf samples are
    kept so that callers can reject the file (`audio_defect`).

    Raises AudioReadError naming the file when it is missing or cannot be decoded.
    """
    if not os.path.isfile(path):
        raise AudioReadError(f"audio file '{path}' does not exist")
    try:
        audio, sample_rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=False)
    except (OSError, RuntimeError, ValueError, soundfile.LibsndfileError) as error:
        raise AudioReadError(f"cannot read audio file '{path}': {error}") from error
    full = np.sign(audio) * (np.abs(audio) >= FULL_SCALE)  # f32[N] or f32[N, C]: +-1 at full scale, else 0
    clipped = np.count_nonzero((full[1:] != 0) & (full[1:] == full[:-1]))
    levels = AudioLevels(
        peak=float(np.abs(audio[np.isfinite(audio)]).max(initial=0.0)),
        clipped_fraction=float(clipped / max(audio.size, 1)),
    )
    if levels.peak > 1.0:
        audio = audio / np.float32(levels.peak)
    audio = resample(to_mono(audio), sample_rate)
    # Only the resampler's ringing near full scale is clipped here; NaN/Inf stay visible to the callers' checks.
    audio = np.where(np.isfinite(audio), np.clip(audio, -1.0, 1.0), audio)
    return audio.astype(np.float32), levels


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """`read_audio_with_levels` without the levels: f32[N] mono at 16 kHz in [-1, 1]."""
    return read_audio_with_levels(path)[0]


def audio_defect(waveform: np.ndarray, max_samples: int | None = None) -> str | None:
    """EMPTY_AUDIO, NON_FINITE_AUDIO or TOO_LONG_AUDIO (more than `max_samples`) for f32[N], or None if usable."""
    if waveform.shape[0] == 0:
        return EMPTY_AUDIO
    if not np.isfinite(waveform).all():
        return NON_FINITE_AUDIO
    if max_samples is not None and waveform.shape[0] > max_samples:
        return TOO_LONG_AUDIO
    return None


def describe_audio_defect(reason: str, waveform: np.ndarray, limit: str = "") -> str:
    """The value seen for an `audio_defect` reason ("has 0 samples", "has 3 NaN/Inf samples of 1600", "has 4001
    samples (0.25 s), more than <limit>"), for messages that also name the utterance and the option to change."""
    samples = waveform.shape[0]
    if reason == EMPTY_AUDIO:
        return "has 0 samples"
    if reason == NON_FINITE_AUDIO:
        return f"has {int(np.count_nonzero(~np.isfinite(waveform)))} NaN/Inf samples of {samples}"
    if reason == TOO_LONG_AUDIO:
        return f"has {samples} samples ({samples / SAMPLE_RATE_HZ:.2f} s), more than {limit}"
    raise ValueError(
        f"'{reason}' is not an audio defect; expected {EMPTY_AUDIO}, {NON_FINITE_AUDIO} or {TOO_LONG_AUDIO}"
    )


def list_directory(directory: str | os.PathLike) -> list[AudioEntry]:
    """All .wav/.flac files under `directory`, sorted; the id is the path relative to it without the suffix."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"audio directory '{root}' does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    return [AudioEntry(id=str(p.relative_to(root).with_suffix("")), path=str(p.resolve())) for p in paths]


def _entry_from_row(row, manifest: Path, line_number: int, *, needs_text: bool) -> AudioEntry | BadRow | None:
    def bad(reason: str, value: str, file: str = "") -> BadRow:
        return BadRow(str(manifest), line_number, file, reason, value)

    if not isinstance(row, dict):
        return bad(BAD_JSON, f"a JSON {type(row).__name__}, not an object with 'audio_filepath' and 'text'")
    key = "audio_filepath" if "audio_filepath" in row else "audio" if "audio" in row else None
    if key is None:
        return bad(
            MISSING_KEY,
            f"neither 'audio_filepath' (NeMo manifest) nor 'audio' (raw corpus rows); keys seen: {sorted(row)}",
        )
    audio = row[key]
    if not audio:
        return None
    if not isinstance(audio, str):
        return bad(MISSING_KEY, f"'{key}' holds {audio!r}, not a file path")
    path = Path(audio) if os.path.isabs(audio) else manifest.parent / audio
    if needs_text and row.get("text") is None:
        return bad(
            MISSING_KEY, f"no 'text' (the reference transcript to score against); keys seen: {sorted(row)}", str(path)
        )
    entry_id = row.get("id") or str(Path(audio).with_suffix(""))
    return AudioEntry(id=str(entry_id), path=str(path), text=row.get("text") or "", line=line_number)


def scan_manifest(manifest: str | os.PathLike, *, needs_text: bool = False) -> list[AudioEntry | BadRow]:
    """Rows of a JSONL manifest (NeMo or raw-corpus style) in file order: an AudioEntry per row with audio, a BadRow
    per line that is not a JSON object, names no audio file or (with `needs_text`) has no 'text'. Blank lines and
    rows with an empty audio field (text-only raw-corpus rows) are left out."""
    manifest = Path(manifest)
    rows = []
    with manifest.open() as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append(BadRow(str(manifest), line_number, "", BAD_JSON, f"not valid JSON: {error}"))
                continue
            entry = _entry_from_row(row, manifest, line_number, needs_text=needs_text)
            if entry is not None:
                rows.append(entry)
    return rows


def list_manifest(manifest: str | os.PathLike) -> list[AudioEntry]:
    """Rows of a JSONL manifest (NeMo or raw-corpus style) in file order, skipping rows without audio.

    Raises ValueError naming the manifest and line of the first row that `scan_manifest` finds bad.
    """
    entries = scan_manifest(manifest)
    bad = next((row for row in entries if isinstance(row, BadRow)), None)
    if bad is not None:
        raise ValueError(f"{bad.describe()}; fix or remove that line")
    return entries


def read_manifest_audio(
    manifest: str | os.PathLike, *, needs_text: bool = False, max_samples: int | None = None, limit: str = ""
) -> Iterator[tuple[AudioEntry, np.ndarray, AudioLevels] | BadRow]:
    """Each row of `scan_manifest` in order, its audio read: (entry, waveform f32[N], levels) when usable, else a
    BadRow (the scan's, or an unreadable file, or an `audio_defect`; `limit` names `max_samples` in messages)."""
    for row in scan_manifest(manifest, needs_text=needs_text):
        if isinstance(row, BadRow):
            yield row
            continue
        try:
            waveform, levels = read_audio_with_levels(row.path)
        except AudioReadError as error:
            yield BadRow(str(manifest), row.line, row.path, UNREADABLE_AUDIO, str(error.__cause__ or error))
            continue
        reason = audio_defect(waveform, max_samples)
        if reason is None:
            yield row, waveform, levels
        else:
            value = describe_audio_defect(reason, waveform, limit)
            yield BadRow(str(manifest), row.line, row.path, reason, value)


def list_audio(source: str | os.PathLike) -> list[AudioEntry]:
    """Entries of a directory of audio files or of a .jsonl manifest."""
    if Path(source).is_dir():
        return list_directory(source)
    if Path(source).is_file():
        return list_manifest(source)
    raise FileNotFoundError(f"audio source '{source}' is neither a directory nor a JSONL manifest")
