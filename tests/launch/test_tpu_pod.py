"""launch/tpu_pod.sh through a stand-in `gcloud` that runs the worker command here, with a stand-in trainer:
the trainer is detached from the ssh session, logs per worker, and a relaunch clears what the last one left."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GCLOUD = """#!/usr/bin/env bash
# Stands in for gcloud: records its arguments, then runs the --command as one TPU VM worker would.
printf '%s\\n' "$@" >"$GCLOUD_ARGS"
for arg in "$@"; do [[ $arg == --command=* ]] && exec bash -c "${arg#--command=}"; done
exit 1
"""
TRAINER = f"""#!{sys.executable}
# Stands in for maestro-train: prints its pid and arguments; SIGTERM "saves" and exits with the preemption code.
import json, os, signal, sys, time
print("pid", os.getpid(), flush=True)
print("args", json.dumps(sys.argv[1:]), flush=True)
def on_term(signum, frame):
    print("signal", signum, flush=True)
    sys.exit(42)
signal.signal(signal.SIGTERM, on_term)
time.sleep(60)
"""


@pytest.fixture
def pod(tmp_path):
    """Environment for launch/tpu_pod.sh with stand-ins; kills every stand-in trainer that is still up at the end."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", GCLOUD), ("maestro-train", TRAINER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "TPU_NAME": "my-v5p-16",
        "ZONE": "us-east5-a",
        "REPO_DIR": REPO,
        "LOG_DIR": str(tmp_path / "logs"),
        "TRAIN": str(bin_dir / "maestro-train"),
        "GCLOUD_ARGS": str(tmp_path / "gcloud_args"),
        "TPU_DEVICES": str(tmp_path / "accel*"),
        "LIBTPU_LOCKFILE": str(tmp_path / "libtpu_lockfile"),
        "STOP_TIMEOUT_S": "20",
    }
    yield tmp_path, env
    for log in (tmp_path / "logs").glob("*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("pid "):
                try:
                    os.kill(int(line.split()[1]), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def launch(env, run):
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), "--gin_file=gin/experiments/x.gin", "--gin.A='b c'"],
        env={**env, "RUN": run},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


def trainer_line(log_path, prefix, timeout_s=20):
    deadline = time.time() + timeout_s
    while True:
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[0]
        assert time.time() < deadline, f"no line starting with {prefix!r} in {log_path}: {lines}"
        time.sleep(0.05)


def test_the_trainer_outlives_the_ssh_session_and_logs_per_worker(pod):
    tmp_path, env = pod
    launch(env, "run1")
    log = tmp_path / "logs" / f"run1.{socket.gethostname()}.log"
    pid = int(trainer_line(log, "pid ").split()[1])
    assert json.loads(trainer_line(log, "args ")[len("args ") :]) == [
        "--gin_file=gin/experiments/x.gin",
        "--gin.A='b c'",
        "--gin.preemption_exit_code.code=42",
    ]
    leader = int((tmp_path / "logs" / "maestro-train.pid").read_text())  # the wrapper that logs the exit status
    assert os.getsid(pid) == os.getpgid(pid) == leader != os.getsid(0)  # the ssh session's end does not reach it
    with open(f"/proc/{pid}/status") as f:
        ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGHUP - 1)), "SIGHUP is not ignored"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(log)
    args = (tmp_path / "gcloud_args").read_text().splitlines()
    assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-v5p-16"] and "--worker=all" in args


def test_a_relaunch_stops_the_last_trainer_and_stale_tpu_users_and_clears_the_lock(pod):
    tmp_path, env = pod
    launch(env, "run1")
    first_log = tmp_path / "logs" / f"run1.{socket.gethostname()}.log"
    first = int(trainer_line(first_log, "pid ").split()[1])
    device = tmp_path / "accel0"
    device.write_text("")
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(device)!r}); import time; time.sleep(60)"])
    (tmp_path / "libtpu_lockfile").write_text("")
    time.sleep(0.5)  # the holder has opened the device

    launch(env, "run2")
    assert trainer_line(first_log, "signal") == "signal 15"  # asked to save, not killed
    assert "exited with status 42 (preempted after saving" in trainer_line(first_log, "maestro-train exited")
    assert holder.wait(timeout=20) == -signal.SIGTERM
    assert not (tmp_path / "libtpu_lockfile").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)
    second = int(trainer_line(tmp_path / "logs" / f"run2.{socket.gethostname()}.log", "pid ").split()[1])
    assert os.getpgid(second) == int((tmp_path / "logs" / "maestro-train.pid").read_text())
