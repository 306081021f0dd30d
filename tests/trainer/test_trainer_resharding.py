"""maestro-train saved on 2 processes resumes on 1, and saved on 1 resumes on 2 (jax.distributed on localhost), with
the real data pipeline (synthetic_streams, speech stream) feeding the toy model: every step's loss and the final
params equal those of an uninterrupted run, because the global batches do not depend on the process count."""

import functools
import os

import gin
import jax
import numpy as np
import pytest
import trainer_toy as toy
from test_trainer_processes import final_params, free_port

from maestro_jax import metrics, partitioning, train, trainer
from maestro_jax.data import pipeline, synthetic

GLOBAL_BATCH = 4  # speech utterances per step, over all processes
SAVED_AT, STEPS = 3, 6


STREAM_SETTINGS = {"streams": ("speech",), "prefetch": 0}  # synthetic_streams bindings of every run here


@pytest.fixture(scope="module")
def corpus_dir():
    return str(synthetic.cached_corpus("tiny", seed=0))


@pytest.fixture(scope="module")
def uninterrupted(corpus_dir, tmp_path_factory):
    """6 steps in this process on 4 devices, reading the 2 input shards that the resumed runs use."""
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    make_streams = functools.partial(
        pipeline.synthetic_streams, speech_batch_size=GLOBAL_BATCH, input_shards=2, **STREAM_SETTINGS
    )
    try:
        with gin.unlock_config():
            gin.bind_parameter("synthetic_corpus.corpus_dir", corpus_dir)
        train.train(
            model_dir=str(model_dir),
            model=toy.ToyMLP(),
            objective=toy.toy_objective,
            make_data=functools.partial(toy.StreamFeatures, make_streams=make_streams),
            train_steps=STEPS,
            learning_rate_schedule=trainer.make_learning_rate_schedule(peak_learning_rate=0.01, warmup_steps=2),
            log_every_steps=1,
            progress_bar=False,
            tensorboard=False,
            mesh=partitioning.make_mesh(fsdp=2, devices=jax.devices()[:4]),
        )
    finally:
        gin.clear_config()
    return model_dir


def run_cli(model_dir, corpus_dir, *, processes, train_steps, extra=""):
    """maestro-train on `processes` processes of 4 / processes devices each, the global batch kept at GLOBAL_BATCH."""
    lines = [
        "train.make_data = @StreamFeatures",
        "StreamFeatures.make_streams = @synthetic_streams",
        f"synthetic_corpus.corpus_dir = '{corpus_dir}'",
        *(f"synthetic_streams.{name} = {value!r}" for name, value in STREAM_SETTINGS.items()),
        f"synthetic_streams.speech_batch_size = {GLOBAL_BATCH // processes}",
        "make_mesh.fsdp = 2",
        extra,
    ]
    bindings = []
    if processes > 1:
        lines += [
            f"initialize_distributed.coordinator_address = 'localhost:{free_port()}'",
            f"initialize_distributed.num_processes = {processes}",
            "initialize_distributed.initialization_timeout_s = 60",
        ]
        bindings = [[f"--gin.initialize_distributed.process_id={i}"] for i in range(processes)]
    gin_file = toy.write_gin(
        str(model_dir / f"run_{train_steps}.gin"), str(model_dir), train_steps=train_steps, extra="\n".join(lines)
    )
    running = [toy.start_cli(gin_file, num_devices=4 // processes, bindings=flags) for flags in (bindings or [[]])]
    assert [p.wait(timeout=300) for p in running] == [0] * processes, toy.read_log(gin_file)
    return toy.read_log(gin_file)


@pytest.mark.parametrize(
    "before, after, extra",
    [
        # input_shards unbound: the first start takes its process count (2), the resumed run the saved count.
        pytest.param(2, 1, "", id="2_to_1"),
        # A run that starts on 1 process and may grow binds input_shards to a multiple of the counts it will use.
        pytest.param(1, 2, "synthetic_streams.input_shards = 2", id="1_to_2"),
    ],
)
def test_resume_on_another_process_count_equals_the_uninterrupted_run(
    uninterrupted, corpus_dir, tmp_path, before, after, extra
):
    run_cli(tmp_path, corpus_dir, processes=before, train_steps=SAVED_AT, extra=extra)
    log = run_cli(tmp_path, corpus_dir, processes=after, train_steps=STEPS, extra=extra)
    assert f"restored step {SAVED_AT}" in log
    losses = [row["loss"] for row in metrics.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))]
    reference = [row["loss"] for row in metrics.read_jsonl(os.path.join(uninterrupted, "metrics.jsonl"))]
    assert len(losses) == len(reference) == STEPS
    np.testing.assert_allclose(losses, reference, rtol=1e-6, atol=1e-7)
    step, params = final_params(tmp_path)
    assert step == STEPS
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(final_params(uninterrupted)[1])):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
