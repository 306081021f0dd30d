"""seqio Tasks (synthetic corpus, LibriSpeech, LibriSpeech-LM, directories/manifests of audio files, plain-text files)
and the mixtures that feed the three training streams.

Each task covers one split and yields the common example layout of `preprocessors` (`waveform` f32[N] in [-1, 1] at
16 kHz, `tokens` i32[U] without EOS, plus `id`, `text`, `audio_error`). Registering a name again replaces the old task
or mixture, so registration is idempotent and can point a name at a new corpus directory.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools
import glob
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf

from maestro_jax.data import audio_files, corpus_layout, preprocessors, tokenizer
from maestro_jax.data.corpus_layout import SPLITS as SYNTHETIC_SPLITS

LIBRISPEECH_SPLITS = (
    "train_clean100",
    "train_clean360",
    "train_other500",
    "dev_clean",
    "dev_other",
    "test_clean",
    "test_other",
)
DEFAULT_SHUFFLE_BUFFER = 1000


def keep_tensorflow_off_accelerators() -> None:
    """Hides GPUs from TensorFlow so tf.data never allocates accelerator memory that JAX needs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow already initialised its devices; nothing more can be hidden now.


keep_tensorflow_off_accelerators()


class _DropFunctionSourceShuffleWarning(logging.Filter):
    """seqio warns on every shuffled read of a FunctionDataSource that its shuffling is weak; ours permutes the whole
    file list per epoch seed, so the warning (repeated each epoch) would only bury real ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropFunctionSourceShuffleWarning())


def _register_task(
    name: str,
    source: seqio.DataSource,
    source_preprocessors: list,
    vocabulary: seqio.Vocabulary,
    *,
    lowercase: bool,
    shuffle_buffer_size: int,
) -> str:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            *source_preprocessors,
            functools.partial(preprocessors.normalise_text, lowercase=lowercase),
            preprocessors.tokenize_text,
        ],
        output_features=preprocessors.output_features(vocabulary),
        shuffle_buffer_size=shuffle_buffer_size,
    )
    return name


def synthetic_task_name(size: str, split: str) -> str:
    return f"maestro_synth_{size}_{split}"


def _newest_tfds_version(config_dir: Path) -> str:
    """The highest prepared version ("1.0.0") under a TFDS `<data_dir>/<name>/<config>` directory."""
    versions = [p.name for p in config_dir.glob("*.*.*") if (p / "dataset_info.json").is_file()]
    if not versions:
        raise FileNotFoundError(f"no prepared TFDS version under '{config_dir}'; build the corpus first")
    return max(versions, key=lambda v: tuple(int(part) for part in v.split(".")))


def register_synthetic_tasks(
    corpus_dir: str | os.PathLike,
    size: str,
    *,
    vocabulary: seqio.Vocabulary | None = None,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
) -> list[str]:
    """Registers `maestro_synth_<size>_<split>` for every split of the corpus built in `corpus_dir`.

    Reads the TFDS builder `maestro_synthetic/<size>` from `corpus_dir/tfds` and tokenises with
    `corpus_dir/spm/spm.model` unless `vocabulary` is given. Returns the task names in SYNTHETIC_SPLITS order.
    """
    corpus_dir = Path(corpus_dir)
    tfds_dir = corpus_dir / corpus_layout.TFDS_DIR
    if not tfds_dir.is_dir():
        raise FileNotFoundError(
            f"no TFDS data in '{tfds_dir}'; build the corpus with `maestro-data synth --size {size} --out {corpus_dir}`"
        )
    vocabulary = vocabulary or tokenizer.make_vocabulary(corpus_dir / corpus_layout.TOKENIZER_FILE)
    version = _newest_tfds_version(tfds_dir / "maestro_synthetic" / size)
    names = []
    for split in SYNTHETIC_SPLITS:
        source = seqio.TfdsDataSource(
            tfds_name=f"maestro_synthetic/{size}:{version}", tfds_data_dir=os.fspath(tfds_dir), splits={split: split}
        )
        to_layout = functools.partial(preprocessors.from_tfds_features, audio_key="audio", text_key="text", id_key="id")
        names.append(
            _register_task(
                synthetic_task_name(size, split),
                source,
                [to_layout],
                vocabulary,
                lowercase=False,
                shuffle_buffer_size=shuffle_buffer_size,
            )
        )
    return names


def register_librispeech_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    data_dir: str | None = None,
    splits: tuple[str, ...] = LIBRISPEECH_SPLITS,
    version: str = "2.*.*",
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
) -> list[str]:
    """Registers `librispeech_<split>` over TFDS `librispeech` (int16 `speech` -> waveform, lower-cased `text`)."""
    to_layout = functools.partial(preprocessors.from_tfds_features, audio_key="speech", text_key="text", id_key="id")
    return [
        _register_task(
            f"librispeech_{split}",
            seqio.TfdsDataSource(
                tfds_name=f"librispeech/default:{version}", tfds_data_dir=data_dir, splits={split: split}
            ),
            [to_layout],
            vocabulary,
            lowercase=True,
            shuffle_buffer_size=shuffle_buffer_size,
        )
        for split in splits
    ]


def register_librispeech_lm_task(
    vocabulary: seqio.Vocabulary,
    *,
    data_dir: str | None = None,
    version: str = "0.*.*",
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
) -> str:
    """Registers `librispeech_lm_train`: the LibriSpeech LM corpus (TFDS `librispeech_lm`, `text`), lower-cased."""
    to_layout = functools.partial(preprocessors.from_tfds_features, audio_key=None, text_key="text", id_key=None)
    return _register_task(
        "librispeech_lm_train",
        seqio.TfdsDataSource(tfds_name=f"librispeech_lm:{version}", tfds_data_dir=data_dir, splits={"train": "train"}),
        [to_layout],
        vocabulary,
        lowercase=True,
        shuffle_buffer_size=shuffle_buffer_size,
    )


def audio_file_source(source: str | os.PathLike, split: str) -> seqio.FunctionDataSource:
    """A seqio source over the files of a directory or JSONL manifest, yielding `id`, `path`, `text` (no audio yet).

    Audio is read by the `read_audio_files` preprocessor, which runs after seqio shards the list, so every host reads
    only its own files. With shuffling the whole list is permuted by the seed, which costs no memory.
    """
    entries = audio_files.list_audio(source)
    if not entries:
        raise ValueError(f"audio source '{source}' holds no .wav/.flac files or manifest rows with audio")
    columns = {
        "id": np.array([e.id for e in entries], dtype=object),
        "path": np.array([e.path for e in entries], dtype=object),
        "text": np.array([e.text for e in entries], dtype=object),
    }

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        order = np.arange(len(entries))
        if shuffle_files:
            order = np.random.default_rng(seed).permutation(len(entries))
        return tf.data.Dataset.from_tensor_slices({key: list(values[order]) for key, values in columns.items()})

    return seqio.FunctionDataSource(dataset_fn, splits=[split], num_input_examples={split: len(entries)})


def register_audio_files_task(
    name: str,
    source: str | os.PathLike,
    vocabulary: seqio.Vocabulary,
    *,
    split: str = "train",
    lowercase: bool = False,
    shuffle_buffer_size: int = 16,
) -> str:
    """Registers task `name` over a directory of wav/flac files (untranscribed, Libri-Light style) or a JSONL manifest.

    Any sample rate is resampled to 16 kHz and multi-channel audio averaged to mono. The file list is fully permuted
    per seed, so the post-read `shuffle_buffer_size` (in utterances held in memory) can stay small.
    """
    return _register_task(
        name,
        audio_file_source(source, split),
        [preprocessors.read_audio_files],
        vocabulary,
        lowercase=lowercase,
        shuffle_buffer_size=shuffle_buffer_size,
    )


def expand_text_files(patterns: str | os.PathLike | tuple | list) -> list[str]:
    """The files matched by each path or glob pattern (sorted per pattern, in pattern order, duplicates once).

    Raises FileNotFoundError naming a pattern that matches no file.
    """
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    files = []
    for pattern in map(os.fspath, patterns):
        matched = sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
        if not matched:
            raise FileNotFoundError(f"text file pattern '{pattern}' matches no file")
        files += [os.path.abspath(path) for path in matched if os.path.abspath(path) not in files]
    return files


def _read_text_lines(path: tf.Tensor) -> tf.data.Dataset:
    """The lines of one plain-text file, gzip'ed when its name ends in .gz, streamed."""
    compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
    return tf.data.TextLineDataset(path, compression_type=compression)


def register_text_files_task(
    name: str,
    patterns: str | os.PathLike | tuple | list,
    vocabulary: seqio.Vocabulary,
    *,
    split: str = "train",
    lowercase: bool = False,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
) -> str:
    """Registers task `name` over plain-text files (paths or glob patterns; one sentence per line, .gz read as gzip).

    Lines stream from disk (files interleaved, never loaded whole); hosts split the files between them, so a job of N
    input shards needs at least N files. Empty lines and lines the tokenizer cannot encode are dropped and counted by
    the batcher (`empty_transcript`, `unk_token`).
    """
    files = expand_text_files(patterns)
    to_layout = functools.partial(preprocessors.from_tfds_features, audio_key=None, text_key="text", id_key=None)
    source = seqio.FileDataSource(
        read_file_fn=lambda path: _read_text_lines(path).map(lambda line: {"text": line}),
        split_to_filepattern={split: files},
    )
    return _register_task(
        name, source, [to_layout], vocabulary, lowercase=lowercase, shuffle_buffer_size=shuffle_buffer_size
    )


def register_stream_mixtures(
    name: str,
    *,
    paired: Mapping[str, float] | None = None,
    speech: Mapping[str, float] | None = None,
    text: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """Registers `<name>_paired`, `<name>_speech`, `<name>_text` seqio Mixtures from {task name: sampling rate}.

    A stream left as None gets no mixture. Returns {stream: mixture name} for the streams registered.
    """
    rates_per_stream = {"paired": paired, "speech": speech, "text": text}
    mixtures = {}
    for stream, rates in rates_per_stream.items():
        if rates is None:
            continue
        for task, rate in rates.items():
            if task not in seqio.TaskRegistry.names():
                raise ValueError(f"mixture '{name}_{stream}' names task '{task}', which is not registered")
            if rate <= 0:
                raise ValueError(f"mixture '{name}_{stream}' gives task '{task}' rate {rate}; rates must be > 0")
        mixture_name = f"{name}_{stream}"
        seqio.MixtureRegistry.remove(mixture_name)
        seqio.MixtureRegistry.add(mixture_name, [(task, float(rate)) for task, rate in rates.items()])
        mixtures[stream] = mixture_name
    return mixtures


def resolve_tasks(name: str) -> dict[str, float]:
    """{task name: normalised sampling rate} of a seqio task (rate 1) or mixture (nested mixtures flattened)."""
    if name in seqio.TaskRegistry.names():
        return {name: 1.0}
    if name in seqio.MixtureRegistry.names():
        mixture = seqio.get_mixture_or_task(name)
        rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
        total = sum(rates.values())
        return {task: rate / total for task, rate in rates.items()}
    raise ValueError(
        f"'{name}' is neither a registered seqio task nor mixture; register it first (e.g. register_synthetic_tasks)"
    )


def tokenizer_file(name: str) -> str:
    """The sentencepiece model file that a task, or every task of a mixture, tokenises with."""
    files = {
        os.fspath(seqio.get_mixture_or_task(task).output_features["tokens"].vocabulary.sentencepiece_model_file)
        for task in resolve_tasks(name)
    }
    if len(files) != 1:
        raise ValueError(f"the tasks of mixture '{name}' tokenise with {sorted(files)}; give them one tokenizer")
    return files.pop()


def unprepared_tfds_datasets(name: str) -> list[str]:
    """The TFDS datasets ("name:version" under their data_dir) behind a task or mixture that are not prepared.

    seqio would try to download and prepare them on first read, on every host (for LibriSpeech-LM a 4 GB download).
    """
    missing = []
    for task in resolve_tasks(name):
        source = seqio.get_mixture_or_task(task).source
        if isinstance(source, seqio.TfdsDataSource) and not source.tfds_dataset.builder.is_prepared():
            missing.append(f"'{source.tfds_dataset.name}' under {source.tfds_dataset.builder.data_dir_root}")
    return sorted(set(missing))


def only_split(task_name: str) -> str:
    """The split of a single-split task (every task registered here has exactly one)."""
    splits = list(seqio.get_mixture_or_task(task_name).splits)
    if len(splits) != 1:
        raise ValueError(f"task '{task_name}' has splits {splits}; name one with StreamSpec.split")
    return splits[0]
