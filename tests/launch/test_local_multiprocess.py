"""launch/local_multiprocess.sh with stand-in trainers: signals reach every process, and one death stops them all.

The launcher runs `$PYTHON -m maestro_jax.cli.train ARGS`; PYTHON here is a tiny script that logs what happens to it
(the real trainer's SIGTERM -> save -> exit 42 is tested in tests/trainer/test_trainer_processes.py).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.sh")

STAND_IN = """#!{python}
# Stands in for `python -m maestro_jax.cli.train ...`: logs its pid and the signals it gets; exits like the trainer.
import os, signal, sys, time
flags = dict(arg.split("=", 1) for arg in sys.argv[1:] if "=" in arg)
rank = flags["--gin.initialize_distributed.process_id"]
log = open(os.path.join(flags["--log_dir"], rank), "w", buffering=1)
def on_signal(signum, frame):
    log.write(f"signal {{signum}}\\n")
    sys.exit(int(flags.get("--gin.preemption_exit_code.code", "42")) if signum == signal.SIGTERM else 130)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
log.write(f"pid {{os.getpid()}}\\n")
if flags.get("--die") == rank:
    time.sleep(0.5)
    sys.exit(3)
time.sleep(float(flags.get("--run_s", "60")))
log.write("finished\\n")
"""


@pytest.fixture
def log_dir(tmp_path):
    """The log directory; stand-ins still alive when a test ends (a launcher that lost them) are killed."""
    yield tmp_path
    for log in tmp_path.glob("[0-9]*"):
        rows = log.read_text().splitlines()
        try:
            os.kill(int(rows[0].split()[1]), signal.SIGKILL)
        except (IndexError, ProcessLookupError):
            pass


def start(log_dir, num_processes, *flags):
    stand_in = log_dir / "python"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stand_in)}
    args = ["bash", LAUNCHER, str(num_processes), f"--log_dir={log_dir}", *flags]
    # The launcher starts with SIGINT and SIGTERM at their defaults, as from a terminal: bash cannot trap a signal
    # that was ignored when it started, and a library in this test process may ignore SIGINT (the full suite saw the
    # launcher never forward a SIGINT and its processes run to the end).
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)


def default_signals():
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def ignored_signals() -> set[int]:
    """Signals this process ignores (SigIgn of /proc/self/status), for failure messages."""
    with open("/proc/self/status") as f:
        mask = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    return {signum for signum in range(1, 65) if mask >> (signum - 1) & 1}


def logs(log_dir, num_processes, *, wait_for="pid", timeout_s=120):
    """Each stand-in's log lines once every log has a line starting with `wait_for`."""
    deadline = time.time() + timeout_s
    while True:
        lines = [
            (log_dir / str(i)).read_text().splitlines() if (log_dir / str(i)).exists() else []
            for i in range(num_processes)
        ]
        if all(any(line.startswith(wait_for) for line in rows) for rows in lines):
            return lines
        assert time.time() < deadline, f"no '{wait_for}' in every log within {timeout_s}s: {lines}"
        time.sleep(0.05)


def assert_gone(pid_lines):
    for rows in pid_lines:
        with pytest.raises(ProcessLookupError):  # exited and reaped, not orphaned
            os.kill(int(rows[0].split()[1]), 0)


@pytest.mark.parametrize("signum,expected_status", [(signal.SIGTERM, 42), (signal.SIGINT, 130)])
def test_a_signal_to_the_launcher_reaches_every_process(log_dir, signum, expected_status):
    launcher = start(log_dir, 3)
    started = logs(log_dir, 3)
    launcher.send_signal(signum)
    status = launcher.wait(timeout=120)
    assert status == expected_status, (launcher.stderr.read(), f"this process ignores signals {ignored_signals()}")
    assert [rows[1:] for rows in logs(log_dir, 3, wait_for="signal")] == [[f"signal {int(signum)}"]] * 3
    assert_gone(started)


def test_one_process_dying_stops_the_others_and_fails(log_dir):
    launcher = start(log_dir, 3, "--die=1", "--run_s=600")
    started = logs(log_dir, 3)
    assert launcher.wait(timeout=120) == 3  # well before the others' 600 s (120: a loaded 2-core CI machine)
    assert "exited with status 3; killing the other 2" in launcher.stderr.read()
    assert all("finished" not in rows for rows in logs(log_dir, 3))
    assert_gone(started)


def test_processes_that_finish_exit_zero(log_dir):
    launcher = start(log_dir, 2, "--run_s=0.2")
    assert launcher.wait(timeout=120) == 0, launcher.stderr.read()
    assert [rows[1:] for rows in logs(log_dir, 2, wait_for="finished")] == [["finished"]] * 2
