"""Gin-configurable data entry points for training: the synthetic corpus, LibriSpeech (TFDS) and the user's own files.

`synthetic_streams`, `librispeech_streams` and `manifest_streams` are what `train.make_data` binds to:
fn(process_index, process_count, seed) -> MultiStreamBatcher. Each takes `input_shards`: how many input shards the data
is cut into (default: the process count of the run's first start, kept on resume), which fixes the example order; a
run resumes on any process count that divides it (`batcher`).
"""

import fcntl
import os
from pathlib import Path

import gin

from maestro_jax.audio_constants import SAMPLE_RATE_HZ
from maestro_jax.data import synthetic, tasks, tokenizer
from maestro_jax.data.batcher import MultiStreamBatcher, StreamSpec

# Which corpus split feeds each training stream.
STREAM_SPLITS = {"paired": "paired_train", "speech": "speech_train", "text": "text_train"}


@gin.configurable
def synthetic_corpus(
    *, corpus_dir: str | None = None, size: str = "tiny", seed: int = 0, vocab_size: int = 256
) -> tuple[Path, str]:
    """(corpus directory, size) of the synthetic corpus, built once (under a file lock) if missing, with its seqio
    tasks registered.

    corpus_dir: where the corpus lives (default corpora/synthetic_<size> under the working directory);
    size: "tiny" | "small" | "medium"; seed: the corpus seed; vocab_size: sentencepiece vocabulary size.
    """
    corpus_dir = Path(corpus_dir or os.path.join("corpora", f"synthetic_{size}"))
    corpus_dir.parent.mkdir(parents=True, exist_ok=True)
    if synthetic.cached_summary(corpus_dir, size, seed, vocab_size) is None:
        with open(f"{corpus_dir}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            synthetic.build_corpus(corpus_dir, size, seed=seed, vocab_size=vocab_size)
    tasks.register_synthetic_tasks(corpus_dir, size)
    return corpus_dir, size


def make_stream_batcher(
    stream_tasks: dict[str, str],
    process_index: int,
    process_count: int,
    seed: int,
    *,
    input_shards: int | None,
    batch_sizes: dict[str, int],
    max_seconds: float,
    max_tokens: int,
    prefetch: int,
    strict: bool,
    bucket_seconds: tuple[float, ...] = (),
    length_group_batches: int = 1,
) -> MultiStreamBatcher:
    """A MultiStreamBatcher feeding stream name ("paired" | "speech" | "text") from a seqio task or mixture each.

    bucket_seconds: padded audio lengths below max_seconds for the streams with audio; each batch is padded to the
    shortest that holds its longest utterance (one compiled step per length). Single-process only: every host of a
    multi-host job must feed the same global shape, and hosts bucket independently (a run saved on several processes
    may resume on one with buckets: they change the padding, not the examples).
    length_group_batches: K > 1 sorts each K batches' worth of examples of an audio stream by length before cutting
    them into batches, so that the buckets hold similar lengths (see `StreamSpec`).
    """
    unknown = set(stream_tasks) - set(STREAM_SPLITS)
    if unknown:
        raise ValueError(f"unknown streams {sorted(unknown)}; the streams are {sorted(STREAM_SPLITS)}")
    if bucket_seconds and process_count > 1:
        raise ValueError(
            f"bucket_seconds={tuple(bucket_seconds)} with {process_count} processes: hosts would pad to different "
            "lengths and the global batch needs one shape; set bucket_seconds=() for multi-host jobs"
        )
    max_samples = int(max_seconds * SAMPLE_RATE_HZ)
    bucket_samples = tuple(int(seconds * SAMPLE_RATE_HZ) for seconds in bucket_seconds)
    specs = {
        name: StreamSpec(
            task=task,
            batch_size=batch_sizes[name],
            max_samples=max_samples if name != "text" else None,
            max_tokens=max_tokens if name != "speech" else None,
            bucket_boundaries=bucket_samples if name != "text" else (),
            length_group_batches=length_group_batches if name != "text" else 1,
        )
        for name, task in stream_tasks.items()
    }
    return MultiStreamBatcher(
        specs,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        input_shards=input_shards,
        strict=strict,
        prefetch=prefetch,
    )


@gin.configurable
def synthetic_streams(
    process_index: int,
    process_count: int,
    seed: int,
    *,
    streams: tuple[str, ...] = ("paired", "speech", "text"),
    paired_batch_size: int = 8,
    speech_batch_size: int = 8,
    text_batch_size: int = 16,
    max_seconds: float = 6.0,
    max_tokens: int = 64,
    bucket_seconds: tuple[float, ...] = (),
    length_group_batches: int = 1,
    prefetch: int = 2,
    strict: bool = False,
    input_shards: int | None = None,
) -> MultiStreamBatcher:
    """A MultiStreamBatcher over the synthetic corpus's training splits (paired_train, speech_train, text_train).

    streams: which of "paired", "speech", "text" to feed. *_batch_size: per-process examples per step of each stream.
    max_seconds: padded audio length (longer utterances are dropped and counted); max_tokens: padded token length.
    bucket_seconds: shorter padded audio lengths a batch may use; length_group_batches: how many batches of audio are
    sorted by length together before batching (both: see `make_stream_batcher`).
    prefetch: batches prepared ahead by a background thread. strict: stop on the first bad example.
    input_shards: how many input shards the data is cut into (None: the process count, or the saved count on
    resume); the run can resume on any process count that divides it, so bind it to a multiple of every process
    count the run may use (e.g. 2 to start on 1 process and resume on 2). Each stream's global batch must be a
    multiple of it.
    """
    _, size = synthetic_corpus()
    return make_stream_batcher(
        {name: tasks.synthetic_task_name(size, STREAM_SPLITS.get(name, name)) for name in streams},
        process_index,
        process_count,
        seed,
        input_shards=input_shards,
        batch_sizes={"paired": paired_batch_size, "speech": speech_batch_size, "text": text_batch_size},
        max_seconds=max_seconds,
        max_tokens=max_tokens,
        bucket_seconds=tuple(bucket_seconds),
        length_group_batches=length_group_batches,
        prefetch=prefetch,
        strict=strict,
    )


@gin.configurable
def librispeech_streams(
    process_index: int,
    process_count: int,
    seed: int,
    *,
    tokenizer_path: str = gin.REQUIRED,
    tfds_data_dir: str | None = None,
    paired_splits: tuple[str, ...] = ("train_clean100",),
    speech_splits: tuple[str, ...] = ("train_clean360", "train_other500"),
    streams: tuple[str, ...] = ("paired", "speech", "text"),
    paired_batch_size: int = 8,
    speech_batch_size: int = 8,
    text_batch_size: int = 16,
    max_seconds: float = 16.0,
    max_tokens: int = 128,
    bucket_seconds: tuple[float, ...] = (),
    length_group_batches: int = 1,
    prefetch: int = 2,
    strict: bool = False,
    input_shards: int | None = None,
) -> MultiStreamBatcher:
    """LibriSpeech (TFDS `librispeech`, prepared beforehand: see data/README.md) as the paired stream, its other
    training splits as untranscribed speech, and LibriSpeech-LM text (TFDS `librispeech_lm`) as unspoken text.

    tokenizer_path: a sentencepiece model with 0 = pad/blank; tfds_data_dir: where the TFDS datasets were prepared.
    Other arguments as in `synthetic_streams`.
    """
    vocabulary = tokenizer.make_vocabulary(tokenizer_path)
    tasks.register_librispeech_tasks(vocabulary, data_dir=tfds_data_dir)
    lm_task = tasks.register_librispeech_lm_task(vocabulary, data_dir=tfds_data_dir)
    mixtures = tasks.register_stream_mixtures(
        "librispeech",
        paired={f"librispeech_{split}": 1.0 for split in paired_splits},
        speech={f"librispeech_{split}": 1.0 for split in speech_splits},
        text={lm_task: 1.0},
    )
    for name in streams:
        missing = tasks.unprepared_tfds_datasets(mixtures[name]) if name in mixtures else []
        if missing:
            raise ValueError(
                f"stream '{name}' is requested (librispeech_streams.streams={tuple(streams)}, i.e. STREAMS) but TFDS "
                f"{', '.join(missing)} is not prepared; build it (data/README.md) and point "
                f"librispeech_streams.tfds_data_dir (TFDS_DATA_DIR) at its data_dir, or drop '{name}' from STREAMS"
            )
    return make_stream_batcher(
        {name: mixtures.get(name, name) for name in streams},
        process_index,
        process_count,
        seed,
        input_shards=input_shards,
        batch_sizes={"paired": paired_batch_size, "speech": speech_batch_size, "text": text_batch_size},
        max_seconds=max_seconds,
        max_tokens=max_tokens,
        bucket_seconds=tuple(bucket_seconds),
        length_group_batches=length_group_batches,
        prefetch=prefetch,
        strict=strict,
    )


def _rated_sources(sources, binding: str) -> dict[str, float]:
    """{source: mixing rate} from a sequence (rate 1 each) or a {source: rate} mapping, as gin passes either."""
    if isinstance(sources, (str, os.PathLike)):
        raise ValueError(f"{binding} takes a list or a {{path: rate}} dict of paths, not the single string {sources!r}")
    rated = dict(sources) if hasattr(sources, "items") else {source: 1.0 for source in sources}
    return {os.fspath(source): float(rate) for source, rate in rated.items()}


# The macros gin/experiments/own_data_maestro.gin binds manifest_streams.paired / .speech / .text to.
_OWN_DATA_MACROS = {"paired": "PAIRED_MANIFESTS", "speech": "SPEECH_MANIFESTS", "text": "TEXT_FILES"}


@gin.configurable
def manifest_streams(
    process_index: int,
    process_count: int,
    seed: int,
    *,
    tokenizer_path: str = gin.REQUIRED,
    paired: tuple | dict = (),
    speech: tuple | dict = (),
    text: tuple | dict = (),
    streams: tuple[str, ...] = ("paired", "speech", "text"),
    lowercase: bool = False,
    paired_batch_size: int = 8,
    speech_batch_size: int = 8,
    text_batch_size: int = 16,
    max_seconds: float = 16.0,
    max_tokens: int = 128,
    bucket_seconds: tuple[float, ...] = (),
    length_group_batches: int = 1,
    prefetch: int = 2,
    strict: bool = False,
    input_shards: int | None = None,
) -> MultiStreamBatcher:
    """The user's own files as the three streams (docs: README "Train on your own data").

    paired: JSONL manifests with `audio_filepath` and `text` (NeMo style; relative paths resolve against the
    manifest). speech: manifests without text, or directories of .wav/.flac files. text: plain-text files or glob
    patterns, one sentence per line, .gz read as gzip. Each is a list (every source at rate 1) or a {source: rate} dict
    of mixing rates. Audio of any sample rate and channel count is read as 16 kHz mono. tokenizer_path: a
    sentencepiece model with the project's ids (`maestro-data tokenizer` trains one). lowercase: lower-case every
    transcript and line before tokenising. Other arguments as in `synthetic_streams`; bad rows (unreadable, empty,
    non-finite or too long audio, empty or untokenisable text) are dropped and counted per stream and reason.
    """
    tokenizer.check_id_conventions(tokenizer_path)
    vocabulary = tokenizer.make_vocabulary(tokenizer_path)
    sources = {
        name: _rated_sources(value, f"manifest_streams.{name}")
        for name, value in (("paired", paired), ("speech", speech), ("text", text))
    }
    rates = {}
    for name in streams:
        if name not in sources:
            raise ValueError(f"unknown stream '{name}' in manifest_streams.streams; the streams are {sorted(sources)}")
        if not sources[name]:
            raise ValueError(
                f"stream '{name}' is requested (manifest_streams.streams={tuple(streams)}, i.e. STREAMS) but "
                f"manifest_streams.{name} names no file; give it sources ({_OWN_DATA_MACROS[name]} in "
                f"gin/experiments/own_data_maestro.gin) or drop '{name}' from STREAMS"
            )
        rates[name] = {}
        for index, (source, rate) in enumerate(sources[name].items()):
            task = f"own_data_{name}_{index}"
            if name == "text":
                files = tasks.expand_text_files(source)
                shards = input_shards or process_count
                if len(files) < shards:
                    raise ValueError(
                        f"text source '{source}' has {len(files)} file(s) but the job reads {shards} input "
                        "shards, and the shards split the text files between them; split it into at least that many "
                        "files (e.g. `split -n l/N`) or give a glob"
                    )
                tasks.register_text_files_task(task, files, vocabulary, lowercase=lowercase)
            else:
                tasks.register_audio_files_task(task, source, vocabulary, lowercase=lowercase)
            rates[name][task] = rate
    mixtures = tasks.register_stream_mixtures("own_data", **rates)
    return make_stream_batcher(
        mixtures,
        process_index,
        process_count,
        seed,
        input_shards=input_shards,
        batch_sizes={"paired": paired_batch_size, "speech": speech_batch_size, "text": text_batch_size},
        max_seconds=max_seconds,
        max_tokens=max_tokens,
        bucket_seconds=tuple(bucket_seconds),
        length_group_batches=length_group_batches,
        prefetch=prefetch,
        strict=strict,
    )
