"""slurm_gpu.sbatch and xpk.sh with stand-in srun/scontrol/xpk/docker/gcloud, the launcher examples of both READMEs
(configured as written, after the quoting of the command each launcher builds), and the constants launchers repeat."""

import inspect
import json
import os
import re
import shlex
import subprocess
import sys

import gin
import pytest

from maestro_jax import train
from maestro_jax.gin_utils import configure_gin

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAND_IN = f"""#!{sys.executable}
# Records how it was called (arguments and the XLA environment); exits with $<NAME>_EXIT (default 0).
import json, os, sys
name = os.path.basename(sys.argv[0])
record = {{"args": sys.argv[1:], **{{k: os.environ.get(k) for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION")}}}}
with open(os.path.join(os.environ["STAND_IN_LOG"], name), "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.exit(int(os.environ.get(name.upper() + "_EXIT", "0")))
"""


@pytest.fixture
def stand_ins(tmp_path):
    """run(script, args, **env) -> (exit status, {command name: [calls]}) with srun, scontrol, xpk, docker and gcloud
    standing in for the real ones."""
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log_dir.mkdir()
    for name in ("srun", "scontrol", "xpk", "docker", "gcloud"):
        (bin_dir / name).write_text(STAND_IN)
        (bin_dir / name).chmod(0o755)

    def run(script, args, **env):
        environ = {
            **{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION")},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "STAND_IN_LOG": str(log_dir),
            **env,
        }
        result = subprocess.run(
            ["bash", os.path.join(REPO, script), *args], env=environ, capture_output=True, text=True
        )
        calls = {log.name: [json.loads(line) for line in log.read_text().splitlines()] for log in log_dir.iterdir()}
        for log in log_dir.iterdir():
            log.unlink()
        return result.returncode, calls, result.stderr

    return run


SLURM_ENV = {"SLURM_SUBMIT_DIR": REPO, "SLURM_JOB_ID": "77"}


@pytest.mark.parametrize("srun_exit,requeued", [(42, True), (0, False), (1, False)])
def test_slurm_requeues_the_job_on_the_preemption_code_only(stand_ins, srun_exit, requeued):
    status, calls, stderr = stand_ins(
        "launch/slurm_gpu.sbatch", ["--gin_file=a.gin"], SRUN_EXIT=str(srun_exit), **SLURM_ENV
    )
    assert status == srun_exit, stderr
    assert calls["srun"][0]["args"] == [
        "--kill-on-bad-exit=0",
        ".venv/bin/maestro-train",
        "--gin_file=a.gin",
        "--gin.preemption_exit_code.code=42",
    ]
    assert [call["args"] for call in calls.get("scontrol", [])] == ([["requeue", "77"]] if requeued else [])


def test_slurm_sets_gpu_xla_flags_and_keeps_the_users(stand_ins):
    _, calls, _ = stand_ins("launch/slurm_gpu.sbatch", [], XLA_FLAGS="--xla_dump_to=/tmp/d", **SLURM_ENV)
    srun = calls["srun"][0]
    assert srun["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/d", "--xla_gpu_enable_latency_hiding_scheduler=true"]
    assert srun["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
    _, calls, _ = stand_ins("launch/slurm_gpu.sbatch", [], XLA_PYTHON_CLIENT_MEM_FRACTION="0.5", **SLURM_ENV)
    assert calls["srun"][0]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"


XPK_ENV = {"CLUSTER": "c", "PROJECT": "p", "ZONE": "z", "TPU_TYPE": "v5p-256", "WORKLOAD": "w"}


def test_xpk_builds_the_tpu_image_and_asks_for_restarts_with_a_grace_period(stand_ins):
    status, calls, stderr = stand_ins("launch/xpk.sh", ["--gin_file=a.gin", "--gin.X='a b'"], **XPK_ENV)
    assert status == 0, stderr
    build, push = (call["args"] for call in calls["docker"])
    image = build[build.index("-t") + 1]
    assert image.startswith("gcr.io/p/maestro-jax:tpu-")
    assert build[:3] == ["build", "--build-arg", "ACCELERATOR=tpu"] and os.path.samefile(build[-1], REPO)
    assert push == ["push", image]
    args = calls["xpk"][0]["args"]
    assert {f"--docker-image={image}", "--max-restarts=20", "--termination-grace-period-seconds=300"} <= set(args)
    assert not any(a.startswith("--restart-on-exit-codes") for a in args)  # 42 is among xpk's defaults
    command = next(a for a in args if a.startswith("--command="))[len("--command=") :]
    assert shlex.split(command) == [
        "maestro-train",
        "--gin_file=a.gin",
        "--gin.X='a b'",
        "--gin.preemption_exit_code.code=42",
    ]

    _, calls, _ = stand_ins("launch/xpk.sh", [], IMAGE="gcr.io/p/mine:1", PREEMPTION_EXIT_CODE="43", **XPK_ENV)
    args = calls["xpk"][0]["args"]
    assert "docker" not in calls and "--docker-image=gcr.io/p/mine:1" in args
    assert "--restart-on-exit-codes=43" in args and args[-1].endswith("--gin.preemption_exit_code.code=43")


def launcher_examples():
    """(README, command) for every launcher row of README.md and launch/README.md."""
    examples = []
    for readme in ("README.md", "launch/README.md"):
        with open(os.path.join(REPO, readme)) as f:
            for line in f:
                spans = re.findall(r"`([^`]*(?:launch/|maestro-train)[^`]*)`", line) if line.startswith("|") else []
                examples += [(readme, span) for span in spans if "--gin_file" in span]
    return examples


def gin_args_after(tokens, marker):
    """The --gin_file/--gin. arguments after the token that ends with `marker`."""
    start = next(i for i, token in enumerate(tokens) if token.endswith(marker)) + 1
    return [token for token in tokens[start:] if token.startswith("--gin")]


def assert_configures(args, where):
    files = [a.split("=", 1)[1] for a in args if a.startswith("--gin_file=")]
    bindings = [a[len("--gin.") :].replace("=", " = ", 1) for a in args if a.startswith("--gin.")]
    gin.clear_config()
    try:
        configure_gin(files, bindings)  # finalize() stops on any %gin.REQUIRED left unbound
    except Exception as error:
        pytest.fail(f"{where}: {error}")
    finally:
        gin.clear_config()


def test_the_readme_launcher_examples_configure_as_written(stand_ins):
    examples = launcher_examples()
    assert len(examples) >= 10, examples  # five rows in each README at least
    for readme, example in examples:
        tokens = shlex.split(example)
        env = dict(t.split("=", 1) for t in tokens if re.fullmatch(r"[A-Z_]+=.*", t))
        script = next(t for t in tokens if t.startswith("launch/") or t.endswith("maestro-train"))
        assert script.endswith("maestro-train") or os.path.exists(os.path.join(REPO, script)), f"{readme}: {script}"
        assert_configures(gin_args_after(tokens, script), f"{readme}: {example}")
        if script in ("launch/xpk.sh", "launch/tpu_pod.sh"):  # the command it builds, quoted for a remote shell
            status, calls, stderr = stand_ins(script, tokens[tokens.index(script) + 1 :], **env)
            assert status == 0, stderr
            args = (calls["xpk"] if script == "launch/xpk.sh" else calls["gcloud"])[0]["args"]
            command = shlex.split(next(a for a in args if a.startswith("--command="))[len("--command=") :])
            marker = "maestro-train" if script == "launch/xpk.sh" else "tpu_worker_start.sh"
            assert_configures(gin_args_after(command, marker), f"{readme}: {script}'s command {command}")


def test_launchers_agree_with_the_code_on_the_preemption_code_and_the_image_extras():
    default = inspect.signature(train.preemption_exit_code.__wrapped__).parameters["code"].default
    for script in ("local_multiprocess.sh", "slurm_gpu.sbatch", "tpu_worker_start.sh", "xpk.sh"):
        with open(os.path.join(REPO, "launch", script)) as f:
            assert f"PREEMPTION_EXIT_CODE=${{PREEMPTION_EXIT_CODE:-{default}}}" in f.read(), script
    with open(os.path.join(REPO, "Dockerfile")) as f:
        accelerators = re.search(r"^\s+([\w |]+)\) extra=", f.read(), re.M).group(1)
    with open(os.path.join(REPO, "setup.py")) as f:
        extras_block = f.read().split("extras_require=")[1].split("}")[0]
    extras = set(re.findall(r'"(\w+)": \[', extras_block)) - {"test"}
    assert {a.strip() for a in accelerators.split("|")} == extras == {"tpu", "cuda12"}
