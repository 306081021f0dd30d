"""MultiStreamBatcher: CONTRACTS batch format, epochs, determinism, sharding, resumption, buckets; eval_batches."""

import dataclasses
import json

import numpy as np
import pytest
import sentencepiece
import seqio
import soundfile

from maestro_jax.data import batcher, preprocessors, tasks, tokenizer

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "we like green tea",
    "she sells sea shells",
    "birds fly over the hill",
    "red boats sail at dawn",
]
PAIRED_LENGTHS = [1000 + 137 * i for i in range(10)]  # distinct, so a row's length names its utterance
SPEECH_LENGTHS = [3000 + 11 * i for i in range(6)]
STEPS = 8


def audio(index: int, samples: int) -> np.ndarray:
    return (np.random.default_rng(index).uniform(-1, 1, samples) * 20000).astype(np.int16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Registers `bt_paired_files` (10 transcribed wavs), `bt_speech_files` (6 untranscribed) and mixtures `bt_*`."""
    root = tmp_path_factory.mktemp("batcher_corpus")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 5),
        model_prefix=str(root / "spm"),
        vocab_size=30,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    vocabulary = tokenizer.make_vocabulary(root / "spm.model")
    rows = []
    for i, samples in enumerate(PAIRED_LENGTHS):
        soundfile.write(root / f"p{i}.wav", audio(i, samples), 16000)
        rows.append({"id": f"p{i}", "audio": f"p{i}.wav", "text": SENTENCES[i % len(SENTENCES)]})
    (root / "paired.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "speech").mkdir()
    for i, samples in enumerate(SPEECH_LENGTHS):
        soundfile.write(root / "speech" / f"s{i}.wav", audio(100 + i, samples), 16000)
    tasks.register_audio_files_task("bt_paired_files", root / "paired.jsonl", vocabulary)
    tasks.register_audio_files_task("bt_speech_files", root / "speech", vocabulary)
    tasks.register_stream_mixtures(
        "bt",
        paired={"bt_paired_files": 1.0},
        speech={"bt_speech_files": 1.0, "bt_paired_files": 1.0},
        text={"bt_paired_files": 1.0},
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=str(root / "spm.model"))
    return {
        "waveforms": {samples: audio(i, samples) / 32768.0 for i, samples in enumerate(PAIRED_LENGTHS)}
        | {samples: audio(100 + i, samples) / 32768.0 for i, samples in enumerate(SPEECH_LENGTHS)},
        "token_rows": {tuple(processor.encode(s)) for s in SENTENCES},
        "texts": {samples: rows[i]["text"] for i, samples in enumerate(PAIRED_LENGTHS)},
        "processor": processor,
    }


SPECS = {
    "paired": batcher.StreamSpec("bt_paired", batch_size=3, max_samples=4000, max_tokens=32),
    "speech": batcher.StreamSpec("bt_speech", batch_size=2, max_samples=4000, bucket_boundaries=(2300, 3030)),
    "text": batcher.StreamSpec("bt_text", batch_size=4, max_tokens=32),
}


@pytest.fixture(scope="module")
def uninterrupted(corpus):
    """STEPS batches of one run with seed 7, and the JSON-round-tripped state before each of them."""
    run = batcher.MultiStreamBatcher(SPECS, seed=7)
    states, batches = [], []
    for _ in range(STEPS):
        states.append(json.loads(json.dumps(run.get_state())))
        batches.append(next(run))
    return states, batches


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for stream in a:
        assert a[stream].keys() == b[stream].keys()
        for key in a[stream]:
            np.testing.assert_array_equal(a[stream][key], b[stream][key], err_msg=f"{stream}/{key}")


def test_batches_follow_the_contract_and_hold_the_source_data(corpus, uninterrupted):
    _, batches = uninterrupted
    for batch in batches:
        assert batch["paired"].keys() == {"waveform", "waveform_length", "tokens", "token_length"}
        assert batch["speech"].keys() == {"waveform", "waveform_length"}
        assert batch["text"].keys() == {"tokens", "token_length"}
        assert batch["paired"]["waveform"].shape == (3, 4000) and batch["paired"]["waveform"].dtype == np.float32
        assert batch["paired"]["tokens"].shape == (3, 32) and batch["paired"]["tokens"].dtype == np.int32
        assert batch["text"]["tokens"].shape == (4, 32)
        for stream in ("paired", "speech"):
            for row, length in zip(batch[stream]["waveform"], batch[stream]["waveform_length"]):
                assert batch[stream]["waveform_length"].dtype == np.int32
                np.testing.assert_array_equal(row[:length], corpus["waveforms"][int(length)])
                assert not row[length:].any()
        for stream in ("paired", "text"):
            for row, length in zip(batch[stream]["tokens"], batch[stream]["token_length"]):
                assert tuple(row[:length]) in corpus["token_rows"]
                assert not row[length:].any()
        for length, tokens, count in zip(
            batch["paired"]["waveform_length"], batch["paired"]["tokens"], batch["paired"]["token_length"]
        ):
            assert tokens[:count].tolist() == corpus["processor"].encode(corpus["texts"][int(length)])


def test_each_epoch_is_a_fresh_permutation(uninterrupted):
    _, batches = uninterrupted
    drawn = np.concatenate([b["paired"]["waveform_length"] for b in batches]).tolist()
    first, second = drawn[:10], drawn[10:20]
    assert sorted(first) == sorted(second) == PAIRED_LENGTHS
    assert first != second


def test_buckets_pad_to_the_smallest_boundary_that_fits(uninterrupted):
    _, batches = uninterrupted
    widths = set()
    for batch in batches:
        longest = batch["speech"]["waveform_length"].max()
        expected = next((b for b in (2300, 3030) if longest <= b), 4000)
        assert batch["speech"]["waveform"].shape == (2, expected)
        widths.add(expected)
    assert len(widths) >= 2


@pytest.mark.parametrize("step", [2, 3, 6])  # step 3 crosses the paired stream's first epoch boundary
def test_resume_equals_uninterrupted_run(uninterrupted, step):
    states, batches = uninterrupted
    resumed = batcher.MultiStreamBatcher(SPECS, seed=7)
    resumed.set_state(states[step])
    assert_batches_equal(next(resumed), batches[step])
    assert resumed.get_state() == states[step + 1]


def test_fresh_batcher_is_deterministic_and_seed_matters(corpus, uninterrupted):
    _, batches = uninterrupted
    same_seed = batcher.MultiStreamBatcher(SPECS, seed=7)
    for step in range(3):
        assert_batches_equal(next(same_seed), batches[step])
    # The same streams with another seed: every stream draws other utterances or another order.
    other = batcher.MultiStreamBatcher(SPECS, seed=8)
    other_seed = [next(other) for _ in range(3)]
    for stream, key in (("paired", "waveform_length"), ("speech", "waveform_length"), ("text", "tokens")):
        assert not all(np.array_equal(a[stream][key], b[stream][key]) for a, b in zip(batches[:3], other_seed)), stream


def test_shards_partition_each_epoch(corpus):
    spec = batcher.StreamSpec("bt_paired_files", batch_size=1, max_samples=4000, max_tokens=32)
    seen = []
    for shard_index in range(2):
        shard = batcher.MultiStreamBatcher({"paired": spec}, seed=3, process_index=shard_index, process_count=2)
        seen.append({int(next(shard)["paired"]["waveform_length"][0]) for _ in range(5)})
    assert len(seen[0]) == len(seen[1]) == 5
    assert seen[0] | seen[1] == set(PAIRED_LENGTHS)


def test_mixture_sampling_follows_rates(corpus):
    tasks.register_stream_mixtures("rates", speech={"bt_speech_files": 3.0, "bt_paired_files": 1.0})
    spec = batcher.StreamSpec("rates_speech", batch_size=1, max_samples=4000)
    stream = batcher._StreamReader("speech", spec, seed=0, shard_info=seqio.ShardInfo(0, 1), strict=False)
    draws = 4000
    picks = []
    for draw in range(draws):
        stream.draws = draw
        picks.append(stream._choose_task())
    share = picks.count("bt_speech_files") / draws
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / draws)


def test_state_from_another_seed_or_layout_is_refused(uninterrupted):
    states, _ = uninterrupted
    with pytest.raises(ValueError, match="seed the state was saved with"):
        batcher.MultiStreamBatcher(SPECS, seed=8).set_state(states[1])
    with pytest.raises(ValueError, match="streams"):
        batcher.MultiStreamBatcher({"paired": SPECS["paired"]}, seed=7).set_state(states[1])


def test_eval_batches_cover_the_split_once_in_order(corpus):
    batches = list(batcher.eval_batches("bt_paired_files", batch_size=4, samples_multiple=500, tokens_multiple=8))
    assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True] * 4, [True, True, False, False]]
    ids = [i for b in batches for i, v in zip(b["id"], b["valid"]) if v]
    assert ids == [f"p{i}" for i in range(10)]
    for batch in batches:
        longest = batch["waveform_length"].max()
        assert batch["waveform"].shape[1] == 500 * int(np.ceil(longest / 500))
        assert batch["tokens"].shape[1] % 8 == 0
    last = batches[-1]
    assert not last["waveform"][2:].any() and not last["waveform_length"][2:].any()
    assert last["text"][2:].tolist() == ["", ""]
    lengths = [int(n) for b in batches for n, v in zip(b["waveform_length"], b["valid"]) if v]
    assert lengths == PAIRED_LENGTHS


def test_resume_exactly_at_an_epoch_end(corpus):
    spec = {"paired": batcher.StreamSpec("bt_paired_files", batch_size=5, max_samples=4000, max_tokens=32)}
    run = batcher.MultiStreamBatcher(spec, seed=5)
    next(run), next(run)
    state = run.get_state()
    assert state["shards"]["0"]["streams"]["paired"]["tasks"]["bt_paired_files"] == {"epoch": 0, "position": 10}
    resumed = batcher.MultiStreamBatcher(spec, seed=5)
    resumed.set_state(state)
    assert_batches_equal(next(resumed), next(run))


def test_prefetching_batcher_gives_the_same_batches_and_states(uninterrupted):
    states, batches = uninterrupted
    with batcher.MultiStreamBatcher(SPECS, seed=7, prefetch=2) as ahead:
        for step in range(3):
            assert_batches_equal(next(ahead), batches[step])
            assert ahead.get_state() == states[step + 1]
        ahead.close()  # discards prefetched batches; the next ones are produced again from the returned state
        assert_batches_equal(next(ahead), batches[3])
    with batcher.MultiStreamBatcher(SPECS, seed=7, prefetch=2) as resumed:
        resumed.set_state(states[5])
        assert_batches_equal(next(resumed), batches[5])


GROUPED = batcher.StreamSpec(
    "bt_paired", batch_size=2, max_samples=4000, max_tokens=32, bucket_boundaries=(1500, 2000), length_group_batches=3
)


def test_length_groups_sort_each_group_into_batches_and_resume_exactly(corpus):
    steps = 9
    run = batcher.MultiStreamBatcher({"paired": GROUPED}, seed=5)
    states, batches = [], []
    for _ in range(steps):
        states.append(json.loads(json.dumps(run.get_state())))
        batches.append(next(run))
    ungrouped = dataclasses.replace(GROUPED, length_group_batches=1, bucket_boundaries=())
    plain = batcher.MultiStreamBatcher({"paired": ungrouped}, seed=5)
    read_order = np.concatenate([next(plain)["paired"]["waveform_length"] for _ in range(steps)])
    shuffled = False
    for group in range(steps // 3):
        lengths = [batches[3 * group + i]["paired"]["waveform_length"] for i in range(3)]
        # The same six examples as three ungrouped batches, cut from their sorted order, in a shuffled order.
        assert sorted(np.concatenate(lengths).tolist()) == sorted(read_order[6 * group : 6 * group + 6].tolist())
        assert all(row.tolist() == sorted(row.tolist()) for row in lengths)
        spans = sorted((row.min(), row.max()) for row in lengths)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        shuffled |= [row.max() for row in lengths] != sorted(row.max() for row in lengths)
        for row, batch in zip(lengths, batches[3 * group : 3 * group + 3]):
            assert batch["paired"]["waveform"].shape[1] == next((b for b in (1500, 2000) if row.max() <= b), 4000)
    assert shuffled
    for step in (1, 2, 3, 4, 8):  # inside a group, at its end and at the start of the next
        resumed = batcher.MultiStreamBatcher({"paired": GROUPED}, seed=5)
        resumed.set_state(states[step])
        assert_batches_equal(next(resumed), batches[step])
        if step + 1 < steps:
            assert resumed.get_state() == states[step + 1]


# Global batch sizes; a process of P reads batch_size / P of each. "paired" sorts length groups of 2 batches, "speech"
# mixes two tasks and drops long files: all are done per input shard, so none may depend on the process count.
GLOBAL_SPECS = {
    "paired": batcher.StreamSpec("bt_paired", batch_size=4, max_samples=4000, max_tokens=32, length_group_batches=2),
    "speech": batcher.StreamSpec("bt_speech", batch_size=4, max_samples=3020),  # drops 4 of the 6 speech files
    "text": batcher.StreamSpec("bt_text", batch_size=2, max_tokens=32),
}
SHARDED_STEPS = 4  # crosses the first epoch of each paired shard (5 utterances, 2 per step)


def process_batchers(process_count, input_shards=2):
    specs = {
        name: dataclasses.replace(spec, batch_size=spec.batch_size // process_count)
        for name, spec in GLOBAL_SPECS.items()
    }
    return [
        batcher.MultiStreamBatcher(
            specs, seed=7, process_index=i, process_count=process_count, input_shards=input_shards
        )
        for i in range(process_count)
    ]


def global_batch(batchers):
    """The rows of every process in process order: the global batch that jax.make_array_from_process_local_data
    assembles."""
    local = [next(b) for b in batchers]
    return {
        stream: {key: np.concatenate([batch[stream][key] for batch in local]) for key in local[0][stream]}
        for stream in local[0]
    }


@pytest.fixture(scope="module")
def one_process_run(corpus):
    """SHARDED_STEPS global batches of one process reading 2 input shards, and the JSON state before each."""
    (run,) = process_batchers(1)
    states, batches = [], []
    for _ in range(SHARDED_STEPS):
        states.append(json.loads(json.dumps(run.get_state())))
        batches.append(next(run))
    return states, batches


def test_global_batches_are_the_same_on_one_and_two_processes(one_process_run):
    _, batches = one_process_run
    two = process_batchers(2)
    for step in range(SHARDED_STEPS):
        assert_batches_equal(global_batch(two), batches[step])
    # Rows 0-1 come from shard 0, rows 2-3 from shard 1, which split each epoch (5 utterances each) between them.
    shard_0 = {int(n) for b in batches[:2] for n in b["paired"]["waveform_length"][:2]}
    shard_1 = {int(n) for b in batches[:2] for n in b["paired"]["waveform_length"][2:]}
    assert len(shard_0) == len(shard_1) == 4 and shard_0.isdisjoint(shard_1)


@pytest.mark.parametrize("step", [1, 2])  # inside the first length group; at its end, before one that crosses an epoch
def test_state_saved_on_two_processes_resumes_on_one_and_back(one_process_run, step):
    states, batches = one_process_run
    two = process_batchers(2)
    for _ in range(step):
        global_batch(two)
    saved = [json.loads(json.dumps(b.get_state())) for b in two]
    assert [sorted(state["shards"]) for state in saved] == [["0"], ["1"]]
    (one,) = process_batchers(1, input_shards=None)  # input_shards=None takes the saved count
    one.set_state(batcher.MultiStreamBatcher.combine_states(saved))
    assert one.input_shards == 2
    assert_batches_equal(next(one), batches[step])
    # ... and from one process back onto two.
    again = process_batchers(2, input_shards=None)
    for b in again:
        b.set_state(batcher.MultiStreamBatcher.combine_states([json.loads(json.dumps(one.get_state()))]))
    for later in batches[step + 1 :]:
        assert_batches_equal(global_batch(again), later)
    assert [sorted(b.get_state()["shards"]) for b in again] == [["0"], ["1"]]


def test_filter_counts_follow_their_input_shards(one_process_run):
    states, _ = one_process_run
    (one,) = process_batchers(1)
    one.set_state(states[3])
    counts = one.filter_stats.count("speech", preprocessors.TOO_LONG_AUDIO)
    assert counts > 0
    two = process_batchers(2, input_shards=None)
    for b in two:
        b.set_state(states[3])
    assert sum(b.filter_stats.count("speech", preprocessors.TOO_LONG_AUDIO) for b in two) == counts


def test_a_state_without_this_process_shards_or_layouts_that_cannot_split_are_refused(one_process_run):
    states, _ = one_process_run
    two = process_batchers(2)
    own = two[0].get_state()
    with pytest.raises(ValueError, match=r"holds input shards \[0\] of 2, but process 1 of 2 reads \[1\].*combine"):
        two[1].set_state(own)
    with pytest.raises(ValueError, match=r"input shards \[0\] of 2"):
        batcher.MultiStreamBatcher.combine_states([own])
    with pytest.raises(ValueError, match="input shard 0 appears in the states of two processes"):
        batcher.MultiStreamBatcher.combine_states([own, own])
    with pytest.raises(ValueError, match=r"saved with input_shards=2, but this run binds input_shards=1"):
        process_batchers(1, input_shards=1)[0].set_state(states[1])
    with pytest.raises(ValueError, match=r"input_shards=3 cannot be split between 2 processes"):
        process_batchers(2, input_shards=3)
    with pytest.raises(ValueError, match=r"stream 'text' has a global batch of 2 examples .* 4 input shards do not"):
        process_batchers(2, input_shards=4)


def test_version_1_state_of_one_process_resumes_and_of_several_is_refused(uninterrupted):
    states, batches = uninterrupted
    shard = states[4]["shards"]["0"]
    v1 = {"version": 1, "seed": 7, "shard_index": 0, "num_shards": 1, **shard}
    resumed = batcher.MultiStreamBatcher(SPECS, seed=7)
    resumed.set_state(v1)
    assert_batches_equal(next(resumed), batches[4])
    with pytest.raises(ValueError, match="version 1 of a 2-process run cannot be resumed"):
        resumed.set_state({**v1, "num_shards": 2})


def test_resuming_inside_a_length_group_with_another_batch_size_is_refused(one_process_run):
    states, _ = one_process_run
    wider = {**GLOBAL_SPECS, "paired": dataclasses.replace(GLOBAL_SPECS["paired"], batch_size=8)}
    run = batcher.MultiStreamBatcher(wider, seed=7, input_shards=2)
    with pytest.raises(ValueError, match="inside a length group of batches of 2 examples per input shard"):
        run.set_state(states[1])
