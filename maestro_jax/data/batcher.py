"""The multi-stream batcher: one process's input shards of every seqio stream, padded to static shapes, resumable.

Input shards make the data independent of the process count. Every stream's data is cut into S input shards (seqio
`ShardInfo(v, S)`; S = `input_shards`, by default the process count of the run's first start), each a deterministic
stream of its own. Global batch b of a stream is the concatenation, in shard order, of batch b of every shard (each
global_batch_size / S examples), and process i of P reads shards [i * S / P, (i + 1) * S / P). So the global batches
are the same for every P that divides S, and a run saved on P processes resumes on any such P': the state is kept per
input shard (`combine_states` joins the processes' states; each process restores its own shards).

State is skip-based. Each task of a shard is read one epoch at a time from `Task.get_dataset(num_epochs=1)` with a
seed derived from (seed, stream, task, epoch), so epoch e's order is a pure function of those four values (and the same
for every shard, so that the shards partition it); the state records, per task, the epoch and the number of examples
already taken from it. Restoring rebuilds that epoch's dataset and skips that many examples: at most one epoch of one
shard is re-read, and the state stays a few integers (tf.data iterator checkpoints would hold shuffle buffers full of
audio). Mixtures are sampled here, with one uniform draw per example from a counter-based generator, rather than by
`Mixture.get_dataset`, so that each task keeps its own resumable epoch and the mixing decisions resume exactly too.

Cost of a shard: seqio gives a shard whole files when the source has at least S files (TFDS shards, text files), so
each process reads only its share; a source with fewer files (the bundled synthetic corpus has one per split) is read
whole by every shard reader, which keeps every S-th record. Directories and manifests of audio files
are sharded as a list of paths, so each process decodes only its own files.
"""

import collections
import copy
import dataclasses
import hashlib
import math
import queue
import threading
from collections.abc import Iterator, Mapping

import numpy as np
import seqio

from maestro_jax.data import preprocessors, tasks

# Version 2 keeps the state per input shard; a version-1 state of a single-process run is the same as one of 1 shard.
STATE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One stream of the batcher.

    Attributes:
      task: a registered seqio task or mixture name.
      batch_size: examples per step on this process (B); the global batch is B x the process count, and each input
        shard gives it global_batch / input_shards examples.
      max_samples: padded waveform length N in samples at 16 kHz; None for a stream without audio (text).
      max_tokens: padded token length U; None for a stream without text (untranscribed speech).
      split: the split to read; None takes each task's only split (every task in `tasks` has one).
      bucket_boundaries: optional increasing padded lengths (samples for streams with audio, else tokens) below the
        maximum; each batch is padded to the smallest boundary that holds its longest example, so the step sees at
        most len(bucket_boundaries) + 1 shapes. Example order is not changed by bucketing.
      length_group_batches: with K > 1, examples are read K batches at a time, sorted by length (samples for streams
        with audio, else tokens) and cut into K batches of similar lengths, returned in a seeded random order; with
        bucket_boundaries this cuts the padding of each batch (icefall's bucketing sampler does the same). Groups form
        within one input shard: a process reading several shards pads their sorted batches side by side.
    """

    task: str
    batch_size: int
    max_samples: int | None = None
    max_tokens: int | None = None
    split: str | None = None
    bucket_boundaries: tuple[int, ...] = ()
    length_group_batches: int = 1

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"StreamSpec for '{self.task}' has batch_size={self.batch_size}; it must be >= 1")
        if self.length_group_batches < 1:
            raise ValueError(
                f"StreamSpec for '{self.task}' has length_group_batches={self.length_group_batches}; it must be >= 1"
            )
        if self.max_samples is None and self.max_tokens is None:
            raise ValueError(f"StreamSpec for '{self.task}' sets neither max_samples nor max_tokens; set at least one")
        limit = self.max_samples if self.max_samples is not None else self.max_tokens
        bounds = tuple(self.bucket_boundaries)
        if list(bounds) != sorted(set(bounds)) or (bounds and (bounds[0] < 1 or bounds[-1] >= limit)):
            raise ValueError(
                f"StreamSpec for '{self.task}' has bucket_boundaries={bounds}; they must increase strictly and lie "
                f"in [1, {limit}) (the stream's max_samples, or max_tokens without audio)"
            )

    @property
    def needs_audio(self) -> bool:
        return self.max_samples is not None

    @property
    def needs_text(self) -> bool:
        return self.max_tokens is not None


def _derived_seed(*parts) -> int:
    """A stable 31-bit seed from a tuple of values (Python's hash() changes between processes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _bucket_length(longest: int, boundaries: tuple[int, ...], limit: int) -> int:
    for boundary in boundaries:
        if longest <= boundary:
            return boundary
    return limit


def pad_stream_batch(examples: list[dict], spec: StreamSpec) -> dict[str, np.ndarray]:
    """`pad_examples` at the spec's static lengths, or at the smallest bucket boundary that holds the longest example
    (samples for a stream with audio, else tokens)."""
    max_samples, max_tokens = spec.max_samples, spec.max_tokens
    if spec.bucket_boundaries and spec.needs_audio:
        longest = max(e["waveform"].shape[0] for e in examples)
        max_samples = _bucket_length(longest, spec.bucket_boundaries, spec.max_samples)
    elif spec.bucket_boundaries:
        longest = max(e["tokens"].shape[0] for e in examples)
        max_tokens = _bucket_length(longest, spec.bucket_boundaries, spec.max_tokens)
    return pad_examples(examples, spec.batch_size, max_samples=max_samples, max_tokens=max_tokens)


def pad_examples(
    examples: list[dict], batch_size: int, *, max_samples: int | None, max_tokens: int | None
) -> dict[str, np.ndarray]:
    """Stacks up to `batch_size` examples into zero-padded arrays; missing rows are all padding (length 0).

    Returns `waveform` f32[B, N], `waveform_length` i32[B] when `max_samples` is set and `tokens` i32[B, U],
    `token_length` i32[B] when `max_tokens` is set, with N = max_samples and U = max_tokens.
    """
    batch = {}
    if max_samples is not None:
        batch["waveform"] = np.zeros([batch_size, max_samples], np.float32)
        batch["waveform_length"] = np.zeros([batch_size], np.int32)
        for row, example in enumerate(examples):
            samples = example["waveform"].shape[0]
            batch["waveform"][row, :samples] = example["waveform"]
            batch["waveform_length"][row] = samples
    if max_tokens is not None:
        batch["tokens"] = np.zeros([batch_size, max_tokens], np.int32)
        batch["token_length"] = np.zeros([batch_size], np.int32)
        for row, example in enumerate(examples):
            count = example["tokens"].shape[0]
            batch["tokens"][row, :count] = example["tokens"]
            batch["token_length"][row] = count
    return batch


class _TaskReader:
    """Reads one task's split for one stream, epoch after epoch, remembering (epoch, position) for resumption."""

    def __init__(self, stream: str, task: str, split: str, *, seed: int, shard_info: seqio.ShardInfo):
        self.stream, self.task, self.split = stream, task, split
        self._seed, self._shard_info = seed, shard_info
        self.epoch, self.position = 0, 0
        self._iterator = None

    def _open(self) -> Iterator[dict]:
        dataset = seqio.get_mixture_or_task(self.task).get_dataset(
            sequence_length=None,
            split=self.split,
            shuffle=True,
            seed=_derived_seed(self._seed, self.stream, self.task, self.epoch),
            # One shard is the whole split; seqio would still list the source's files to shard it.
            shard_info=self._shard_info if self._shard_info.num_shards > 1 else None,
            num_epochs=1,
            trim_output_features=False,
            try_in_mem_cache=False,  # a fresh dataset per epoch would refill the cache every epoch
        )
        return dataset.skip(self.position).as_numpy_iterator()

    def next_example(self) -> dict:
        """The next example, rolling over to a freshly shuffled epoch at the end of one."""
        for _ in range(2):
            if self._iterator is None:
                self._iterator = self._open()
            example = next(self._iterator, None)
            if example is not None:
                self.position += 1
                return example
            if self.position == 0:
                break
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        raise ValueError(
            f"split '{self.split}' of task '{self.task}' (stream '{self.stream}') yields no examples on shard "
            f"{self._shard_info.index} of {self._shard_info.num_shards}; give it data or use fewer input shards "
            "(the data function's input_shards, e.g. synthetic_streams.input_shards)"
        )

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: Mapping) -> None:
        self.epoch, self.position, self._iterator = int(state["epoch"]), int(state["position"]), None


class _StreamReader:
    """One stream of one input shard: picks a task per example by mixture rate, drops (or rejects) bad examples, and
    returns `spec.batch_size` examples at a time (unpadded)."""

    # Give up when this many consecutive examples were dropped: the limits or the data are wrong, not a few outliers.
    MAX_CONSECUTIVE_DROPS = 10_000

    def __init__(self, name: str, spec: StreamSpec, *, seed: int, shard_info: seqio.ShardInfo, strict: bool):
        self.name, self.spec, self._seed, self._strict = name, spec, seed, strict
        # Each shard draws its own mixing decisions; one shard keeps the key of state version 1.
        shard_key = () if shard_info.num_shards == 1 else ("input_shard", shard_info.index)
        self._mixture_key = _derived_seed(seed, name, *shard_key)
        rates = tasks.resolve_tasks(spec.task)
        self._task_names = sorted(rates)
        self._cumulative_rates = np.cumsum([rates[task] for task in self._task_names])
        self._readers = {
            task: _TaskReader(name, task, spec.split or tasks.only_split(task), seed=seed, shard_info=shard_info)
            for task in self._task_names
        }
        self.draws = 0
        self._group: list[list[dict]] = []  # the length group being returned (length_group_batches > 1)
        self._group_start: dict = {}
        self._group_returned = 0

    def _choose_task(self) -> str:
        if len(self._task_names) == 1:
            return self._task_names[0]
        # Philox is counter-based: draw k depends only on (seed, stream, k), which makes resumption exact.
        generator = np.random.Generator(np.random.Philox(key=self._mixture_key, counter=self.draws))
        index = int(np.searchsorted(self._cumulative_rates, generator.random() * self._cumulative_rates[-1], "right"))
        return self._task_names[min(index, len(self._task_names) - 1)]

    def _next_valid_example(self, stats: preprocessors.FilterStats) -> dict:
        spec = self.spec
        for _ in range(self.MAX_CONSECUTIVE_DROPS):
            reader = self._readers[self._choose_task()]
            self.draws += 1
            example = reader.next_example()
            reason = preprocessors.find_defect(
                example,
                needs_audio=spec.needs_audio,
                needs_text=spec.needs_text,
                max_samples=spec.max_samples,
                max_tokens=spec.max_tokens,
            )
            if reason is None:
                return example
            if self._strict:
                raise ValueError(
                    preprocessors.describe_defect(
                        reason,
                        example,
                        source=f"{reader.task}:{reader.split}",
                        stream=self.name,
                        max_samples=spec.max_samples,
                        max_tokens=spec.max_tokens,
                    )
                )
            stats.record(self.name, reason, example["id"])
        raise ValueError(
            f"stream '{self.name}' dropped {self.MAX_CONSECUTIVE_DROPS} examples in a row of '{spec.task}' "
            f"(counts so far: {stats.as_dict().get(self.name)}); check max_samples={spec.max_samples}, "
            f"max_tokens={spec.max_tokens} and the tokenizer against the data"
        )

    def _example_length(self, example: dict) -> int:
        return example["waveform"].shape[0] if self.spec.needs_audio else example["tokens"].shape[0]

    def _read_length_group(self, stats: preprocessors.FilterStats) -> list[list[dict]]:
        """K batches of examples read in order, sorted by length, cut into batches, shuffled by a seeded draw."""
        spec = self.spec
        self._group_start = self._reader_state()
        examples = [self._next_valid_example(stats) for _ in range(spec.batch_size * spec.length_group_batches)]
        examples.sort(key=self._example_length)  # stable: equal lengths keep their read order
        batches = [examples[i : i + spec.batch_size] for i in range(0, len(examples), spec.batch_size)]
        order_key = _derived_seed(self._seed, self.name, "length_groups", self._group_start["draws"])
        order = np.random.Generator(np.random.Philox(key=order_key)).permutation(len(batches))
        return [batches[i] for i in order]

    def next_examples(self, stats: preprocessors.FilterStats) -> list[dict]:
        """The next `spec.batch_size` examples; drops are counted in `stats`."""
        if self.spec.length_group_batches == 1:
            return [self._next_valid_example(stats) for _ in range(self.spec.batch_size)]
        if not self._group:
            self._group, self._group_returned = self._read_length_group(stats), 0
        examples = self._group[self._group_returned]
        self._group_returned += 1
        if self._group_returned == len(self._group):
            self._group = []
        return examples

    def _reader_state(self) -> dict:
        return {"draws": self.draws, "tasks": {task: reader.get_state() for task, reader in self._readers.items()}}

    def get_state(self) -> dict:
        """Where the readers are; inside a length group, where they were at its start and how many batches of it
        were returned (restoring re-reads the group and skips those)."""
        if self._group:
            group = {"group_returned": self._group_returned, "group_batch_size": self.spec.batch_size}
            return {**self._group_start, **group}
        return self._reader_state()

    def set_state(self, state: Mapping) -> None:
        if sorted(state["tasks"]) != self._task_names:
            raise ValueError(
                f"saved state of stream '{self.name}' covers tasks {sorted(state['tasks'])}, but '{self.spec.task}' "
                f"now has {self._task_names}; resume with the mixture the state was saved with"
            )
        self.draws = int(state["draws"])
        for task, reader in self._readers.items():
            reader.set_state(state["tasks"][task])
        self._group, self._group_returned = [], 0
        returned = int(state.get("group_returned", 0))
        group_batch_size = int(state.get("group_batch_size", self.spec.batch_size))
        if returned and group_batch_size != self.spec.batch_size:
            # The group's remaining examples were cut for the old batch size; re-cutting them would lose or repeat some.
            raise ValueError(
                f"saved state of stream '{self.name}' stops inside a length group of batches of {group_batch_size} "
                f"examples per input shard, but this run takes {self.spec.batch_size}; resume with the global batch "
                "size it was saved with (the per-process batch size x the process count)"
            )
        if returned:
            # The saved filter counts already include this group's drops: count the re-read into a scratch object.
            self._group = self._read_length_group(preprocessors.FilterStats())
            self._group_returned = returned


class MultiStreamBatcher:
    """Yields `{stream: batch}` forever, e.g. {"paired": {...}, "speech": {...}, "text": {...}}, as process-local numpy.

    Each stream's batch follows docs/CONTRACTS.md: `waveform` f32[B, N], `waveform_length` i32[B] (streams with
    max_samples) and `tokens` i32[B, U], `token_length` i32[B] (streams with max_tokens), zero-padded to the spec's
    static lengths (or bucket lengths); B = the spec's batch_size. Process `process_index` of `process_count` reads
    its input shards of `input_shards` (None: the process count, or the count a restored state was saved with; see
    the module docstring): its B rows are those shards' examples, in shard order. Bad examples are dropped and
    counted in `filter_stats`, or raise a ValueError naming the example when `strict`. With `prefetch` > 0 a
    background thread prepares that many batches ahead; `get_state` still describes the batches returned so far.
    Call `close()` (or use the batcher as a context manager) to stop that thread.
    """

    def __init__(
        self,
        streams: Mapping[str, StreamSpec],
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        input_shards: int | None = None,
        strict: bool = False,
        prefetch: int = 0,
    ):
        if not streams:
            raise ValueError("MultiStreamBatcher needs at least one stream, e.g. {'paired': StreamSpec(...)}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
        self.seed, self.process_index, self.process_count, self.prefetch = seed, process_index, process_count, prefetch
        self._specs, self._strict, self._bound_input_shards = dict(streams), strict, input_shards
        self._thread, self._queue, self._stop = None, None, None
        self._open_shards(process_count if input_shards is None else input_shards)

    def _open_shards(self, input_shards: int) -> None:
        """Readers for this process's shards of `input_shards`, each stream at global batch / input_shards."""
        if input_shards < 1 or input_shards % self.process_count:
            raise ValueError(
                f"input_shards={input_shards} cannot be split between {self.process_count} processes; it must be a "
                "multiple of the process count (bind the data function's input_shards, e.g. "
                "synthetic_streams.input_shards, to a multiple of every process count the run will use)"
            )
        shard_specs = {}
        for name, spec in self._specs.items():
            global_batch = spec.batch_size * self.process_count
            if global_batch % input_shards:
                raise ValueError(
                    f"stream '{name}' has a global batch of {global_batch} examples ({spec.batch_size} per process x "
                    f"{self.process_count} processes), which {input_shards} input shards do not divide; make the "
                    "global batch a multiple of input_shards"
                )
            shard_specs[name] = dataclasses.replace(spec, batch_size=global_batch // input_shards)
        per_process = input_shards // self.process_count
        self.input_shards = input_shards
        self.shards = tuple(range(self.process_index * per_process, (self.process_index + 1) * per_process))
        self._readers = {
            shard: {
                name: _StreamReader(
                    name,
                    spec,
                    seed=self.seed,
                    shard_info=seqio.ShardInfo(index=shard, num_shards=input_shards),
                    strict=self._strict,
                )
                for name, spec in shard_specs.items()
            }
            for shard in self.shards
        }
        self._shard_stats = {shard: preprocessors.FilterStats() for shard in self.shards}
        self._returned_state = self._producer_state()

    @property
    def filter_stats(self) -> preprocessors.FilterStats:
        """Dropped examples per stream and reason in this process's shards, up to the last batch returned."""
        total = collections.defaultdict(collections.Counter)
        for shard in self._returned_state["shards"].values():
            for stream, reasons in shard["filter_stats"].items():
                total[stream].update(reasons)
        return preprocessors.FilterStats.from_dict(total)

    @property
    def tokenizer_files(self) -> dict[str, str]:
        """{stream: sentencepiece model file} of each stream that reads tokens (`train` checks their vocab_size)."""
        return {name: tasks.tokenizer_file(spec.task) for name, spec in self._specs.items() if spec.needs_text}

    def _producer_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "input_shards": self.input_shards,
            "shards": {
                str(shard): {
                    "streams": {name: reader.get_state() for name, reader in readers.items()},
                    "filter_stats": self._shard_stats[shard].as_dict(),
                }
                for shard, readers in self._readers.items()
            },
        }

    def _produce(self) -> tuple[dict, dict]:
        examples = {name: [] for name in self._specs}
        for shard, readers in self._readers.items():
            for name, reader in readers.items():
                examples[name] += reader.next_examples(self._shard_stats[shard])
        batch = {name: pad_stream_batch(examples[name], spec) for name, spec in self._specs.items()}
        return batch, self._producer_state()

    def _produce_ahead(self, stop: threading.Event, out: queue.Queue) -> None:
        while not stop.is_set():
            try:
                item = self._produce()
            except Exception as error:  # handed to the consumer, which raises it at the batch that failed
                out.put(error)
                return
            out.put(item)

    def __iter__(self) -> "MultiStreamBatcher":
        return self

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        if self.prefetch == 0:
            batch, self._returned_state = self._produce()
            return batch
        if self._thread is None:
            self._stop, self._queue = threading.Event(), queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(
                target=self._produce_ahead, args=(self._stop, self._queue), name="MultiStreamBatcher", daemon=True
            )
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, Exception):
            self._thread.join()
            self._thread = None
            raise item
        batch, self._returned_state = item
        return batch

    def close(self) -> None:
        """Stops the prefetch thread; batches it prepared are discarded and will be produced again if needed."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblocks a producer waiting on a full queue
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread = None
        self._restore(self._returned_state)

    def __enter__(self) -> "MultiStreamBatcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def get_state(self) -> dict:
        """A small JSON-serialisable dict: per input shard of this process, per stream and task the epoch and examples
        taken, plus filter counts."""
        return copy.deepcopy(self._returned_state)

    @staticmethod
    def combine_states(states: list[Mapping]) -> dict:
        """One state holding every input shard, from the `get_state()` of every process of a run (in any order); any
        process count that divides its input_shards can `set_state` it."""
        states = [_upgrade_state(state) for state in states]
        headers = {(state["version"], state["seed"], state["input_shards"]) for state in states}
        if len(headers) != 1:
            raise ValueError(f"the process states come from different runs: (version, seed, input_shards) {headers}")
        shards: dict[str, dict] = {}
        for state in states:
            for key, shard in state["shards"].items():
                if key in shards:
                    raise ValueError(f"input shard {key} appears in the states of two processes")
                shards[key] = shard
        input_shards = states[0]["input_shards"]
        if sorted(map(int, shards)) != list(range(input_shards)):
            raise ValueError(f"the process states hold input shards {sorted(map(int, shards))} of {input_shards}")
        return {**states[0], "shards": shards}

    def set_state(self, state: Mapping) -> None:
        """Restores a state holding this process's input shards: its own `get_state()`, or `combine_states` of every
        process's, saved with any process count; the next batches equal those an uninterrupted batcher would give."""
        state = _upgrade_state(state)
        saved, current = (state.get("version"), state.get("seed")), (STATE_VERSION, self.seed)
        if saved != current:
            raise ValueError(
                f"batcher state (version, seed)={saved} does not match this batcher's {current}; resume with the "
                "seed the state was saved with"
            )
        input_shards = int(state["input_shards"])
        if self._bound_input_shards not in (None, input_shards):
            raise ValueError(
                f"batcher state was saved with input_shards={input_shards}, but this run binds input_shards="
                f"{self._bound_input_shards}; drop that binding (the saved value is then used) or bind "
                f"{input_shards}: the example order is defined by it"
            )
        for key, shard in state["shards"].items():
            if sorted(shard["streams"]) != sorted(self._specs):
                raise ValueError(
                    f"batcher state has streams {sorted(shard['streams'])} (input shard {key}) but this batcher has "
                    f"{sorted(self._specs)}"
                )
        self.close()
        if input_shards != self.input_shards:
            self._open_shards(input_shards)
        missing = [shard for shard in self.shards if str(shard) not in state["shards"]]
        if missing:
            raise ValueError(
                f"batcher state holds input shards {sorted(map(int, state['shards']))} of {input_shards}, but process "
                f"{self.process_index} of {self.process_count} reads {list(self.shards)}; restore "
                "MultiStreamBatcher.combine_states of every process's state"
            )
        self._restore(state)

    def _restore(self, state: Mapping) -> None:
        for shard, readers in self._readers.items():
            saved = state["shards"][str(shard)]
            for name, reader in readers.items():
                reader.set_state(saved["streams"][name])
            self._shard_stats[shard] = preprocessors.FilterStats.from_dict(saved["filter_stats"])
        self._returned_state = self._producer_state()


def _upgrade_state(state: Mapping) -> Mapping:
    """A version-1 state (one per process, without input shards) of a single-process run as the version-2 state of
    one input shard, which reads the same examples."""
    if state.get("version") != 1:
        return state
    if state.get("num_shards") != 1:
        raise ValueError(
            f"batcher state version 1 of a {state.get('num_shards')}-process run cannot be resumed by this version, "
            "whose input shards draw their mixing decisions independently; finish the run with the version that "
            "started it, or start afresh (a new MODEL_DIR)"
        )
    shard = {"streams": state["streams"], "filter_stats": state["filter_stats"]}
    return {"version": STATE_VERSION, "seed": state.get("seed"), "input_shards": 1, "shards": {"0": shard}}


def eval_batches(
    task: str,
    *,
    batch_size: int,
    split: str | None = None,
    max_samples: int | None = None,
    max_tokens: int | None = None,
    needs_audio: bool = True,
    needs_text: bool = True,
    samples_multiple: int = 1600,
    tokens_multiple: int = 8,
    shard_index: int = 0,
    num_shards: int = 1,
    drop_invalid: bool = False,
    filter_stats: preprocessors.FilterStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterates a task's split once, in order, in batches of `batch_size`; the last partial batch is padded.

    Each batch has the CONTRACTS features of the requested modalities plus `valid` bool[B] (False for padding rows),
    `id` and `text` object[B] (str; "" for padding rows). With max_samples / max_tokens None, each batch is padded to
    its longest example rounded up to `samples_multiple` / `tokens_multiple`, which bounds the number of shapes. Bad
    examples raise a ValueError naming them, or with `drop_invalid` are skipped and counted in `filter_stats` (stream
    "eval") when one is given.
    """
    split = split or tasks.only_split(task)
    dataset = seqio.get_mixture_or_task(task).get_dataset(
        sequence_length=None,
        split=split,
        shuffle=False,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        num_epochs=1,
        trim_output_features=False,
        try_in_mem_cache=False,
    )

    def valid_examples() -> Iterator[dict]:
        for example in dataset.as_numpy_iterator():
            reason = preprocessors.find_defect(
                example,
                needs_audio=needs_audio,
                needs_text=needs_text,
                max_samples=max_samples,
                max_tokens=max_tokens,
            )
            if reason is None:
                yield example
            elif drop_invalid and filter_stats is not None:
                filter_stats.record("eval", reason, example["id"])
            elif not drop_invalid:
                raise ValueError(
                    preprocessors.describe_defect(
                        reason,
                        example,
                        source=f"{task}:{split}",
                        stream="eval",
                        max_samples=max_samples,
                        max_tokens=max_tokens,
                        drop_option="pass drop_invalid=True to eval_batches",
                    )
                )

    def round_up(length: int, multiple: int) -> int:
        return max(multiple, multiple * math.ceil(length / multiple))

    examples = valid_examples()
    while chunk := [example for _, example in zip(range(batch_size), examples)]:
        samples = tokens = None
        if needs_audio:
            samples = max_samples or round_up(max(e["waveform"].shape[0] for e in chunk), samples_multiple)
        if needs_text:
            tokens = max_tokens or round_up(max(e["tokens"].shape[0] for e in chunk), tokens_multiple)
        batch = pad_examples(chunk, batch_size, max_samples=samples, max_tokens=tokens)
        batch["valid"] = np.arange(batch_size) < len(chunk)
        for key in ("id", "text"):
            values = [preprocessors.to_str(e[key]) for e in chunk] + [""] * (batch_size - len(chunk))
            batch[key] = np.array(values, dtype=object)
        yield batch
