"""Synthetic speech-text corpus: espeak-ng speech for generated sentences, resampled to 16 kHz, laid out as
docs/CONTRACTS.md says (raw wavs + jsonl, manifests, sentencepiece model, TFDS data_dir, summary.json, vocab.json).

    build_corpus(Path("corpora/tiny"), "tiny", seed=0)

TensorFlow is imported only for the TFDS step, so synthesis workers (spawned processes) start quickly.
"""

import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile
import tqdm

from maestro_jax.audio_constants import SAMPLE_RATE_HZ
from maestro_jax.data import sentences, tokenizer
from maestro_jax.data.corpus_layout import (
    AUDIO_SPLITS,
    MANIFESTS_DIR,
    RAW_DIR,
    SPLITS,
    SUMMARY_FILE,
    TFDS_DIR,
    TOKENIZER_DIR,
    TOKENIZER_FILE,
    TRAIN_SPLITS,
    VOCAB_FILE,
)

# Bump when the layout or summary.json changes, so that cached corpora of older builds are rebuilt.
CORPUS_FORMAT = 1
# Speakers are espeak-ng voice+variant pairs; the last two voices are held out of training, heard only in dev/test.
SPEAKERS = (
    "en-us+m1 en-us+f2 en+m3 en+f4 en-gb-x-rp+m2 en-gb-x-rp+f1 en-gb-scotland+m4 en-gb-scotland+f3 en-gb-x-gbclan+m5 "
    "en-gb-x-gbclan+f5 en-us-nyc+m6 en-us-nyc+f2 en-029+m1 en-029+f3 en-gb-x-gbcwmd+m2 en-gb-x-gbcwmd+f4"
).split()
HELD_OUT_VOICES = ("en-029", "en-gb-x-gbcwmd")
SPEAKING_RATE_WPM = (145, 195)
PITCH = (30, 70)


@dataclasses.dataclass(frozen=True)
class CorpusSize:
    """Examples per split and sentence length bounds (words) of one corpus size."""

    counts: Mapping[str, int]
    min_words: int
    max_words: int


SIZES = {
    "tiny": CorpusSize(
        counts={
            "paired_train": 48,
            "speech_train": 48,
            "text_train": 600,
            "dev": 16,
            "test_in_vocab": 16,
            "test_text_only_vocab": 16,
        },
        min_words=3,
        max_words=8,
    ),
    "small": CorpusSize(
        counts={
            "paired_train": 1000,
            "speech_train": 3000,
            "text_train": 30000,
            "dev": 200,
            "test_in_vocab": 200,
            "test_text_only_vocab": 200,
        },
        min_words=4,
        max_words=12,
    ),
    # Enough paired speech for a supervised model to generalise to the held-out voices at CPU budgets (1,000 paired
    # utterances are not: train and test differ by 33 WER points even for a model that listens). The evaluation
    # splits are drawn first with the same per-split seeds and counts as `small`, so their sentences are the same.
    "medium": CorpusSize(
        counts={
            "paired_train": 8000,
            "speech_train": 8000,
            "text_train": 100000,
            "dev": 200,
            "test_in_vocab": 200,
            "test_text_only_vocab": 200,
        },
        min_words=4,
        max_words=12,
    ),
}


class SynthesisError(RuntimeError):
    """espeak-ng failed or produced unusable audio for one utterance."""


def voice_of(speaker: str) -> str:
    """'en-029+f3' -> 'en-029'."""
    return speaker.split("+")[0]


def speakers_for(split: str) -> list[str]:
    if split in TRAIN_SPLITS:
        return [speaker for speaker in SPEAKERS if voice_of(speaker) not in HELD_OUT_VOICES]
    return list(SPEAKERS)


def resample(
    waveform: np.ndarray, orig_rate: int, new_rate: int, zero_crossings: int = 16, rolloff: float = 0.94
) -> np.ndarray:
    """Band-limited polyphase resampling with a Kaiser-windowed sinc (beta 8.6, ~80 dB stopband).

    Args:
      waveform: f32[N] samples at `orig_rate` Hz.
      orig_rate, new_rate: sample rates in Hz (integers; the ratio is reduced by their gcd).
      zero_crossings: sinc half-width in zero crossings of the low-pass filter; longer = sharper.
      rolloff: cutoff as a fraction of the lower Nyquist frequency, leaving room for the transition band.
    Returns:
      f32[ceil(N * new_rate / orig_rate)] samples at `new_rate` Hz; output sample n sits at input time n*orig/new.
    """
    waveform = np.asarray(waveform, np.float32)
    if orig_rate == new_rate:
        return waveform.copy()
    common = math.gcd(orig_rate, new_rate)
    up, down = new_rate // common, orig_rate // common
    cutoff = rolloff * min(1.0, up / down)  # cycles per input sample, times 2
    half_width = zero_crossings / cutoff  # input samples
    taps = math.ceil(half_width) + 1
    offsets = np.arange(-taps + 1, taps + 1)
    # bank[p, j] = h(p/up - offsets[j]): the filter seen by an output that lies p/up input samples past an input.
    t = np.arange(up)[:, None] / up - offsets[None, :]
    window = np.i0(8.6 * np.sqrt(np.clip(1.0 - (t / half_width) ** 2, 0.0, None))) / np.i0(8.6)
    bank = cutoff * np.sinc(cutoff * t) * np.where(np.abs(t) <= half_width, window, 0.0)
    bank = (bank / bank.sum(axis=1, keepdims=True)).astype(np.float32)
    # Outputs r, r+up, r+2up, ... share the phase of output r and step `down` inputs apart: one [B, up] block grid.
    num_out = -(-len(waveform) * up // down)
    num_blocks = -(-num_out // up)
    first_base, phase = np.divmod(np.arange(up) * down, up)
    bank = bank[phase]
    padded = np.pad(waveform, (taps - 1, num_blocks * down - len(waveform) + 2 * taps))
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * taps)
    output = np.empty([num_blocks, up], np.float32)
    blocks_per_chunk = max(1, (1 << 16) // up)
    for start in range(0, num_blocks, blocks_per_chunk):
        blocks = np.arange(start, min(start + blocks_per_chunk, num_blocks))
        starts = blocks[:, None] * down + first_base[None, :]
        output[blocks] = np.einsum("brj,rj->br", windows[starts], bank)
    return output.reshape(-1)[:num_out]


def parse_espeak_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decodes espeak-ng's --stdout WAV (16-bit mono PCM; its data size field is a streaming placeholder).

    Returns (f32[N] in [-1, 1], sample rate in Hz).
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SynthesisError(f"espeak-ng did not write a WAV stream (first bytes {data[:12]!r})")
    offset, sample_rate = 12, None
    while offset + 8 <= len(data):
        chunk_id, chunk_size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"fmt ":
            audio_format, channels, sample_rate = struct.unpack("<HHI", data[offset + 8 : offset + 16])
            bits = struct.unpack("<H", data[offset + 22 : offset + 24])[0]
            if (audio_format, channels, bits) != (1, 1, 16):
                raise SynthesisError(
                    f"expected 16-bit mono PCM from espeak-ng, got {audio_format=} {channels=} {bits=}"
                )
        elif chunk_id == b"data":
            if sample_rate is None:
                raise SynthesisError("espeak-ng WAV stream has no fmt chunk before its data")
            pcm = data[offset + 8 :]
            pcm = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
            return pcm.astype(np.float32) / 32768.0, sample_rate
        offset += 8 + chunk_size + (chunk_size & 1)
    raise SynthesisError("espeak-ng WAV stream has no data chunk")


def check_espeak_installed() -> None:
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError(
            "espeak-ng is not on PATH; the synthetic corpus needs it. Install it with `apt-get install -y espeak-ng` "
            "(or `sudo apt-get install -y espeak-ng`), or run scripts/bootstrap.sh."
        )


@dataclasses.dataclass(frozen=True)
class SynthesisJob:
    """One utterance to speak: `rate_wpm` is espeak-ng -s (words per minute), `pitch` is -p (0-99)."""

    utterance_id: str
    text: str
    speaker: str
    rate_wpm: int
    pitch: int
    wav_path: str


def speak(text: str, speaker: str, rate_wpm: int, pitch: int, *, utterance_id: str = "") -> tuple[np.ndarray, int]:
    """espeak-ng's native output for `text`: (f32[N] in [-1, 1], sample rate in Hz). Raises SynthesisError."""
    command = ["espeak-ng", "-v", speaker, "-s", str(rate_wpm), "-p", str(pitch), "--stdout", text]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise SynthesisError(
            f"espeak-ng failed for utterance {utterance_id} ({text!r}, speaker {speaker}): "
            f"exit {result.returncode}: {result.stderr.decode(errors='replace').strip()}"
        )
    waveform, rate = parse_espeak_wav(result.stdout)
    if waveform.size == 0:
        raise SynthesisError(
            f"espeak-ng produced 0 samples for utterance {utterance_id} ({text!r}, speaker {speaker}); "
            "check that the voice exists (`espeak-ng --voices=en`)"
        )
    return waveform, rate


def synthesize(job: SynthesisJob) -> int:
    """Speaks `job.text`, resamples to 16 kHz and writes int16 mono `job.wav_path`. Returns the number of samples."""
    waveform, rate = speak(job.text, job.speaker, job.rate_wpm, job.pitch, utterance_id=job.utterance_id)
    waveform = resample(waveform, rate, SAMPLE_RATE_HZ)
    pcm = np.round(np.clip(waveform, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    soundfile.write(job.wav_path, pcm, SAMPLE_RATE_HZ, subtype="PCM_16")
    return int(pcm.size)


def plan_jobs(texts: Mapping[str, Sequence[str]], raw_dir: Path, seed: int) -> dict[str, list[SynthesisJob]]:
    """Assigns speakers (balanced: a reshuffled cycle over the split's speakers), speaking rate and pitch."""
    jobs = {}
    for split in AUDIO_SPLITS:
        rng = random.Random(f"voices-{seed}-{split}")
        pool: list[str] = []
        split_jobs = []
        for index, text in enumerate(texts[split]):
            if not pool:
                pool = speakers_for(split)
                rng.shuffle(pool)
            utterance_id = f"{split}-{index:06d}"
            split_jobs.append(
                SynthesisJob(
                    utterance_id=utterance_id,
                    text=text,
                    speaker=pool.pop(),
                    rate_wpm=rng.randint(*SPEAKING_RATE_WPM),
                    pitch=rng.randint(*PITCH),
                    wav_path=str(raw_dir / split / f"{utterance_id}.wav"),
                )
            )
        jobs[split] = split_jobs
    return jobs


def run_synthesis(jobs: Sequence[SynthesisJob], workers: int) -> list[int]:
    """Runs `synthesize` over `jobs` in `workers` spawned processes; returns sample counts in job order."""
    if workers <= 1:
        return [synthesize(job) for job in tqdm.tqdm(jobs, desc="espeak-ng", unit="utt")]
    # spawn, not fork: the caller may already hold TensorFlow/JAX threads.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.imap(synthesize, jobs, chunksize=8)
        return list(tqdm.tqdm(results, total=len(jobs), desc="espeak-ng", unit="utt"))


def check_vocabulary_rules(texts: Mapping[str, Sequence[str]], vocabulary: sentences.VocabularySplit) -> dict:
    """Counts rule violations per split; raises if any split breaks its SPLIT_VOCABULARY rule."""
    b_words_in_a_only = {
        split: sorted({word for text in texts[split] for word in text.split()} & vocabulary.b)
        for split, rule in sentences.SPLIT_VOCABULARY.items()
        if rule == "A"
    }
    missing_b = [t for t in texts["test_text_only_vocab"] if not vocabulary.b.intersection(t.split())]
    if any(b_words_in_a_only.values()) or missing_b:
        raise RuntimeError(
            f"vocabulary rules broken: B words in A-only splits {b_words_in_a_only}; "
            f"test_text_only_vocab sentences without a B word: {missing_b[:5]}"
        )
    return {"b_words_in_paired_train": len(b_words_in_a_only["paired_train"])}


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_split_files(
    out_dir: Path,
    jobs: Mapping[str, Sequence[SynthesisJob]],
    texts: Mapping[str, Sequence[str]],
    sample_counts: Mapping[str, int],
) -> dict[str, dict]:
    """Writes DIR/raw/<split>.jsonl and DIR/manifests/<split>.jsonl; returns per-split statistics for the summary."""
    split_stats = {}
    (out_dir / MANIFESTS_DIR).mkdir()
    for split in SPLITS:
        rows, manifest = [], []
        for job in jobs.get(split, []):
            text = "" if split == "speech_train" else job.text
            rows.append(
                {
                    "id": job.utterance_id,
                    "speaker": job.speaker,
                    "text": text,
                    "audio": f"{split}/{Path(job.wav_path).name}",
                }
            )
            duration = sample_counts[job.utterance_id] / SAMPLE_RATE_HZ
            manifest.append({"audio_filepath": job.wav_path, "text": text, "duration": duration})
        if split == "text_train":
            rows = [
                {"id": f"{split}-{i:06d}", "speaker": "", "text": t, "audio": ""} for i, t in enumerate(texts[split])
            ]
        write_jsonl(out_dir / RAW_DIR / f"{split}.jsonl", rows)
        if manifest:
            write_jsonl(out_dir / MANIFESTS_DIR / f"{split}.jsonl", manifest)
        speakers = sorted({row["speaker"] for row in rows if row["speaker"]})
        split_stats[split] = {
            "examples": len(rows),
            "hours": sum(entry["duration"] for entry in manifest) / 3600,
            "speakers": len(speakers),
            "voices": len({voice_of(speaker) for speaker in speakers}),
            "held_out_speakers": sorted(s for s in speakers if voice_of(s) in HELD_OUT_VOICES),
        }
    return split_stats


def train_corpus_tokenizer(spm_path: Path, texts: Mapping[str, Sequence[str]], vocab_size: int) -> dict:
    """Trains the tokenizer on paired_train + text_train text and checks that no split encodes to unk."""
    all_text = [text for split in SPLITS for text in texts[split]]
    tokenizer.train_sentencepiece(
        [*texts["paired_train"], *texts["text_train"]],
        spm_path,
        vocab_size=vocab_size,
        required_chars="".join(sorted(set("".join(all_text)) - {" "})),
    )
    unknown = tokenizer.count_unknown_pieces(spm_path, all_text)
    if unknown:
        raise RuntimeError(f"{spm_path} encodes {unknown} pieces of the corpus as unk; raise --vocab_size")
    return {
        "unk_pieces_in_all_splits": unknown,
        "character_coverage": tokenizer.measured_character_coverage(spm_path, all_text),
    }


def cached_summary(out_dir: Path, size: str, seed: int, vocab_size: int) -> dict | None:
    """The summary of a finished build in `out_dir` with these settings, or None (summary.json is written last)."""
    summary_path = Path(out_dir) / SUMMARY_FILE
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    wanted = {"format": CORPUS_FORMAT, "size": size, "seed": seed, "vocab_size": vocab_size}
    return summary if all(summary.get(key) == value for key, value in wanted.items()) else None


def build_corpus(
    out_dir: Path, size: str, *, seed: int = 0, workers: int | None = None, vocab_size: int = 256, force: bool = False
) -> dict:
    """Builds (or reuses, when DIR/summary.json matches size/seed/vocab_size) the corpus; returns the summary."""
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r}; choose one of {sorted(SIZES)}")
    out_dir = Path(out_dir).absolute()
    if not force and (summary := cached_summary(out_dir, size, seed, vocab_size)):
        return summary
    check_espeak_installed()
    started = time.time()
    for stale in (RAW_DIR, TFDS_DIR, MANIFESTS_DIR, TOKENIZER_DIR, SUMMARY_FILE, VOCAB_FILE):
        path = out_dir / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    raw_dir = out_dir / RAW_DIR
    for split in AUDIO_SPLITS:
        (raw_dir / split).mkdir(parents=True)

    config = SIZES[size]
    vocabulary = sentences.split_vocabulary(seed)
    texts = sentences.plan_texts(config.counts, vocabulary, seed, config.min_words, config.max_words)
    checks = check_vocabulary_rules(texts, vocabulary)

    jobs = plan_jobs(texts, raw_dir, seed)
    flat_jobs = [job for split in AUDIO_SPLITS for job in jobs[split]]
    sample_counts = dict(
        zip([job.utterance_id for job in flat_jobs], run_synthesis(flat_jobs, workers or os.cpu_count() or 1))
    )

    split_stats = write_split_files(out_dir, jobs, texts, sample_counts)
    if split_stats["paired_train"]["held_out_speakers"]:
        raise RuntimeError(
            f"held-out voices leaked into paired_train: {split_stats['paired_train']['held_out_speakers']}"
        )
    checks.update(train_corpus_tokenizer(out_dir / TOKENIZER_FILE, texts, vocab_size))

    # Imported here so synthesis workers never import TensorFlow.
    from maestro_jax.data import tfds_synthetic

    tfds_synthetic.prepare(raw_dir, out_dir / TFDS_DIR, size)

    (out_dir / VOCAB_FILE).write_text(json.dumps(vocabulary.to_json(), indent=1))
    content_words = len(vocabulary.a) - len(sentences.FUNCTION_WORDS) + len(vocabulary.b)
    summary = {
        "format": CORPUS_FORMAT,
        "size": size,
        "seed": seed,
        "vocab_size": vocab_size,
        "splits": split_stats,
        "vocabulary": {
            "A": len(vocabulary.a),
            "B": len(vocabulary.b),
            "total": len(vocabulary.a) + len(vocabulary.b),
            "B_fraction_of_content_words": round(len(vocabulary.b) / content_words, 4),
            "tokenizer": vocab_size,
        },
        "held_out_voices": list(HELD_OUT_VOICES),
        "checks": checks,
        "build_seconds": round(time.time() - started, 1),
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a printable table."""
    lines = [
        f"maestro synthetic corpus: size={summary['size']} seed={summary['seed']} "
        f"(built in {summary['build_seconds']} s)",
        f"{'split':<22}{'examples':>9}{'hours':>9}{'speakers':>10}{'voices':>8}  held-out speakers",
    ]
    for split, stats in summary["splits"].items():
        held_out = " ".join(stats["held_out_speakers"]) or "-"
        lines.append(
            f"{split:<22}{stats['examples']:>9}{stats['hours']:>9.3f}{stats['speakers']:>10}{stats['voices']:>8}  "
            f"{held_out}"
        )
    vocab = summary["vocabulary"]
    lines.append(
        f"vocabulary: |A|={vocab['A']} |B|={vocab['B']} total={vocab['total']} "
        f"(B = {100 * vocab['B_fraction_of_content_words']:.1f}% of content words), "
        f"tokenizer={vocab['tokenizer']} pieces"
    )
    checks = summary["checks"]
    verdict = "OK" if checks["b_words_in_paired_train"] == 0 else "FAILED"
    lines.append(f"check: B words in paired_train = {checks['b_words_in_paired_train']} ({verdict})")
    lines.append(
        f"check: unk pieces over all splits = {checks['unk_pieces_in_all_splits']}, "
        f"character coverage = {100 * checks['character_coverage']:.2f}%"
    )
    return "\n".join(lines)


def source_fingerprint() -> str:
    """Hash of the generator sources: a cached corpus is reused only while these files are unchanged."""
    package_dir = Path(__file__).parent.parent
    digest = hashlib.sha1()
    for module in (
        "data/sentences.py",
        "data/synthetic.py",
        "data/tokenizer.py",
        "data/tfds_synthetic.py",
        "data/corpus_layout.py",
        "audio_constants.py",
    ):
        digest.update((package_dir / module).read_bytes())
    return digest.hexdigest()[:12]


def cached_corpus(size: str = "tiny", seed: int = 0, cache_root: Path | None = None, workers: int = 2) -> Path:
    """Builds the corpus once per source version under `cache_root` (default /tmp/maestro_jax_corpora) and returns
    its directory; concurrent callers (pytest-xdist workers) wait on a file lock instead of building twice.
    """
    cache_root = Path(cache_root or os.environ.get("MAESTRO_CORPUS_CACHE", "/tmp/maestro_jax_corpora"))
    corpus_dir = cache_root / f"{size}-seed{seed}-{source_fingerprint()}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{corpus_dir.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is building {corpus_dir}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        build_corpus(corpus_dir, size, seed=seed, workers=workers)
    return corpus_dir
