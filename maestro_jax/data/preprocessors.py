"""seqio preprocessors that map every source onto one example layout, and the checks that filter bad examples.

Every task's examples carry the same features, so any task can feed any stream:
  id          string   utterance or line id (used in messages)
  text        string   normalised transcript ("" when untranscribed)
  waveform    f32[N]   samples in [-1, 1] at 16 kHz (N = 0 for text-only sources)
  tokens      i32[U]   sentencepiece ids of `text`, no EOS
  audio_error string   why the audio file could not be read ("" when it could)

Bad examples are not removed inside tf.data: the batcher calls `find_defect` on each one, so it can count them per
stream and reason (`FilterStats`), or stop with `describe_defect`'s message when strict.

Audio files whose decoded samples leave [-1, 1] (scaled to peak 1) or are clipped (kept) are still used; each such
read is counted per report in `audio_level_counts` and logged at the first and every power-of-two count, naming the
file (see audio_files for why out-of-range audio is scaled).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import collections
import logging
import threading

import numpy as np
import seqio
import tensorflow as tf

from maestro_jax.data import audio_files

UNK_ID = 2
INT16_SCALE = 32768.0

UNREADABLE_AUDIO = audio_files.UNREADABLE_AUDIO
EMPTY_AUDIO = audio_files.EMPTY_AUDIO
NON_FINITE_AUDIO = audio_files.NON_FINITE_AUDIO
TOO_LONG_AUDIO = audio_files.TOO_LONG_AUDIO
EMPTY_TRANSCRIPT = "empty_transcript"
UNK_TOKEN = "unk_token"
TOO_MANY_TOKENS = "too_many_tokens"
REASONS = (
    UNREADABLE_AUDIO,
    EMPTY_AUDIO,
    NON_FINITE_AUDIO,
    TOO_LONG_AUDIO,
    EMPTY_TRANSCRIPT,
    UNK_TOKEN,
    TOO_MANY_TOKENS,
)

_log = logging.getLogger(__name__)

# Audio is decoded inside tf.data (possibly on several threads), before the batcher assigns examples to streams, so
# these reports are counted per process rather than per stream in FilterStats.
_level_counts: collections.Counter = collections.Counter()
_level_lock = threading.Lock()


def audio_level_counts() -> dict[str, int]:
    """Audio-file reads by this process whose samples were out of range (audio_files.OUT_OF_RANGE_AUDIO, scaled to
    peak 1) or clipped (audio_files.CLIPPED_AUDIO, kept); a file read in two epochs counts twice."""
    with _level_lock:
        return dict(_level_counts)


def _record_levels(example_id: bytes, path: str, levels: audio_files.AudioLevels) -> None:
    if levels.report is None:
        return
    with _level_lock:
        _level_counts[levels.report] += 1
        count = _level_counts[levels.report]
    if count & (count - 1) == 0:
        _log.warning(
            "%s: audio file '%s' (utterance '%s') %s [%d such read(s) so far]",
            levels.report,
            path,
            to_str(example_id),
            levels.describe(),
            count,
        )


def _text_id(text: tf.Tensor) -> tf.Tensor:
    """Text-only corpora have no ids; the first 48 bytes of the line identify it in messages."""
    return tf.strings.substr(text, 0, 48)


def from_tfds_features(
    dataset: tf.data.Dataset, *, audio_key: str | None, text_key: str | None, id_key: str | None
) -> tf.data.Dataset:
    """Maps TFDS examples (int16 `audio_key`, string `text_key`, `id_key`) to the common layout before tokenising."""

    def convert(example):
        text = example[text_key] if text_key else tf.constant("")
        if audio_key:
            waveform = tf.cast(example[audio_key], tf.float32) / INT16_SCALE
        else:
            waveform = tf.zeros([0], tf.float32)
        return {
            "id": example[id_key] if id_key else _text_id(text),
            "text": text,
            "waveform": tf.reshape(waveform, [-1]),
            "audio_error": tf.constant(""),
        }

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def _read_audio_or_error(path: bytes, example_id: bytes) -> tuple[np.ndarray, bytes]:
    try:
        waveform, levels = audio_files.read_audio_with_levels(path.decode())
    except audio_files.AudioReadError as error:
        return np.zeros([0], np.float32), str(error).encode()
    _record_levels(example_id, path.decode(), levels)
    return waveform, b""


def read_audio_files(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Reads `path` (from an audio-file source) into `waveform`; unreadable files give N = 0 and an `audio_error`,
    out-of-range or clipped ones are counted in `audio_level_counts`."""

    def read(example):
        waveform, error = tf.numpy_function(
            _read_audio_or_error, [example["path"], example["id"]], (tf.float32, tf.string)
        )
        return {
            "id": example["id"],
            "text": example["text"],
            "waveform": tf.ensure_shape(waveform, [None]),
            "audio_error": tf.ensure_shape(error, []),
        }

    return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def normalise_text(dataset: tf.data.Dataset, *, lowercase: bool) -> tf.data.Dataset:
    """Strips surrounding whitespace and optionally lower-cases (UTF-8 aware) the `text` feature."""

    def normalise(example):
        text = tf.strings.strip(example["text"])
        if lowercase:
            text = tf.strings.lower(text, encoding="utf-8")
        return {**example, "text": text}

    return dataset.map(normalise, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_text(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """Adds `tokens` i32[U]: `text` encoded with the `tokens` feature's vocabulary (no EOS)."""
    vocabulary = output_features["tokens"].vocabulary

    def tokenize(example):
        return {**example, "tokens": tf.cast(vocabulary.encode_tf(example["text"]), tf.int32)}

    return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """The two model features every task declares; `id`, `text` and `audio_error` ride along undeclared."""
    return {
        "waveform": seqio.Feature(
            seqio.PassThroughVocabulary(size=0), add_eos=False, required=False, dtype=tf.float32, rank=1
        ),
        "tokens": seqio.Feature(vocabulary, add_eos=False, required=False, dtype=tf.int32, rank=1),
    }


def find_defect(
    example: dict,
    *,
    needs_audio: bool,
    needs_text: bool,
    max_samples: int | None = None,
    max_tokens: int | None = None,
) -> str | None:
    """The first reason (one of REASONS) that makes a numpy `example` unusable for a stream, or None if it is fine.

    Args:
      example: numpy example in the common layout (see module docstring).
      needs_audio / needs_text: whether the stream consumes `waveform` / `tokens`.
      max_samples / max_tokens: the stream's padded lengths (samples at 16 kHz / tokens); None means unlimited.
    """
    if needs_audio:
        if example["audio_error"]:
            return UNREADABLE_AUDIO
        reason = audio_files.audio_defect(example["waveform"], max_samples)
        if reason is not None:
            return reason
    if needs_text:
        if example["tokens"].shape[0] == 0:
            return EMPTY_TRANSCRIPT
        if np.any(example["tokens"] == UNK_ID):
            return UNK_TOKEN
        if max_tokens is not None and example["tokens"].shape[0] > max_tokens:
            return TOO_MANY_TOKENS
    return None


def to_str(value) -> str:
    """A numpy/tf.data string (bytes) as str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def describe_defect(
    reason: str,
    example: dict,
    *,
    source: str,
    stream: str,
    max_samples: int | None,
    max_tokens: int | None,
    drop_option: str = "set strict=False on the batcher",
) -> str:
    """A message for the user: the example, the value seen, and the option that changes the outcome."""
    name = f"utterance '{to_str(example['id'])}' in {source}"
    drop = f"or {drop_option} to drop and count such examples"
    if reason == UNREADABLE_AUDIO:
        return f"{name}: {to_str(example['audio_error'])}; fix or remove the file, {drop}"
    if reason in (EMPTY_AUDIO, NON_FINITE_AUDIO, TOO_LONG_AUDIO):
        limit = f"max_samples={max_samples} of stream '{stream}'"
        seen = f"{name} {audio_files.describe_audio_defect(reason, example['waveform'], limit)}"
        if reason == EMPTY_AUDIO:
            return f"{seen}; fix the data {drop}"
        if reason == NON_FINITE_AUDIO:
            return f"{seen}; fix or remove the file, {drop}"
        return f"{seen}; raise StreamSpec.max_samples {drop}"
    if reason == EMPTY_TRANSCRIPT:
        return f"{name} has an empty transcript but stream '{stream}' needs text; fix the transcript {drop}"
    if reason == UNK_TOKEN:
        positions = np.flatnonzero(example["tokens"] == UNK_ID).tolist()
        return (
            f"{name} tokenises to unk (id {UNK_ID}) at token positions {positions} of text "
            f"'{to_str(example['text'])}'; the sentencepiece model lacks these characters: normalise the text or "
            f"retrain the tokenizer, {drop}"
        )
    if reason == TOO_MANY_TOKENS:
        return (
            f"{name} has {example['tokens'].shape[0]} tokens, more than max_tokens={max_tokens} of stream "
            f"'{stream}'; raise StreamSpec.max_tokens {drop}"
        )
    raise ValueError(f"unknown defect reason '{reason}'; expected one of {REASONS}")


class FilterStats:
    """Counts of dropped examples per stream and reason; JSON-friendly via as_dict / from_dict.

    The first drop of each (stream, reason) and every power-of-two count after it is logged as a warning.
    """

    def __init__(self, counts: dict[str, dict[str, int]] | None = None):
        self._counts = collections.defaultdict(collections.Counter)
        for stream, reasons in (counts or {}).items():
            self._counts[stream].update(reasons)

    def record(self, stream: str, reason: str, example_id) -> None:
        self._counts[stream][reason] += 1
        count = self._counts[stream][reason]
        if count & (count - 1) == 0:
            _log.warning(
                "stream '%s' dropped %d example(s) for %s (latest: '%s')", stream, count, reason, to_str(example_id)
            )

    def count(self, stream: str, reason: str | None = None) -> int:
        """Drops in `stream` for `reason`, or for all reasons when None."""
        reasons = self._counts.get(stream, {})
        return sum(reasons.values()) if reason is None else reasons.get(reason, 0)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {stream: dict(sorted(reasons.items())) for stream, reasons in sorted(self._counts.items()) if reasons}

    @classmethod
    def from_dict(cls, counts: dict[str, dict[str, int]]) -> "FilterStats":
        return cls(counts)

    def __repr__(self) -> str:
        return f"FilterStats({self.as_dict()})"
