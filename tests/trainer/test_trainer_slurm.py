"""launch/slurm_cpu.sbatch on a real one-node SLURM cluster: Debian's slurm-wlm (munged, slurmctld and slurmd on
localhost, every file in a temporary directory), 2 tasks of the toy trainer (jax.distributed from SLURM's variables,
gloo), `scancel --signal=TERM` mid-run; the job saves, is requeued, resumes and ends with the parameters of an
uninterrupted run. Slow (MAESTRO_SLOW_TESTS=1, about 2 min) and needs root and `apt-get install slurm-wlm munge`."""

import contextlib
import getpass
import os
import re
import shutil
import subprocess
import time

import jax
import numpy as np
import pytest
import trainer_toy as toy
from test_trainer_processes import final_params, free_port, in_process_reference

from maestro_jax import checkpoints

STEPS = 40  # JAX's preemption sync lands a few steps after the signal
# No cgroups, systemd or accounting database: Linux process tracking, no task plugin, jobs kept in slurmctld's memory
# (`scontrol show job`, MinJobAge) instead of sacct. cred_expire is also the wait before a requeued job may start again
# (120 s by default), and the schedulers look for it every 30 and 60 s by default.
SLURM_CONF = """ClusterName=maestro-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock,cred_expire=15
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
JobRequeue=1
MinJobAge=600
KillWait=5
ReturnToService=2
SchedulerParameters=bf_interval=2,sched_interval=5
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
DAEMONS = ("munged", "slurmctld", "slurmd")


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        time.sleep(0.5)


def logs(root):
    """Every log under `root` (daemons, the job's slurm-JOBID.out), for a failure's report."""
    names = sorted(n for n in os.listdir(root) if n.endswith((".log", ".out")))
    texts = [open(os.path.join(root, name), errors="replace").read()[-6000:] for name in names]
    return "\n".join(f"===== {name}\n{text}" for name, text in zip(names, texts))


@contextlib.contextmanager
def one_node_cluster(root):
    """munged, slurmctld and slurmd in the foreground, with their state, sockets and logs under `root`; yields the
    environment the SLURM clients (sbatch, scontrol, scancel) need. Prints every log if the body fails."""
    os.makedirs(f"{root}/state")
    os.makedirs(f"{root}/spool")
    with open(f"{root}/munge.key", "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(f"{root}/munge.key", 0o600)
    conf = f"{root}/slurm.conf"
    with open(conf, "w") as f:
        f.write(SLURM_CONF.format(root=root, ctld_port=free_port(), slurmd_port=free_port()))
    env = {**os.environ, "SLURM_CONF": conf}
    munge = [f"--key-file={root}/munge.key", f"--socket={root}/munge.sock", f"--pid-file={root}/munged.pid"]
    munge += [f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed", "--force"]
    commands = [["munged", "-F", *munge], ["slurmctld", "-D", "-f", conf]]
    commands.append(["slurmd", "-D", "-f", conf, "-N", "localhost"])
    daemons = []
    try:
        for command in commands:
            log = open(f"{root}/{command[0]}.stdout.log", "ab")
            daemons.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root))
            if command[0] == "munged":
                wait_until(lambda: os.path.exists(f"{root}/munge.sock"), 30, "munge socket")
        wait_until(lambda: slurm(env, "sinfo", "-h", "-o", "%t", check=False) == "idle", 60, "idle node")
        yield env
    except BaseException:
        print(logs(root))
        raise
    finally:
        slurm(env, "scancel", "--full", "--signal=KILL", f"--user={getpass.getuser()}", check=False)
        slurm(env, "scontrol", "shutdown", check=False)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def slurm(env, *args, check=True):
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def job_fields(env, job_id):
    """`scontrol show job`'s KEY=VALUE pairs (JobState, Restarts, ExitCode, ...)."""
    return dict(re.findall(r"(\w+)=(\S*)", slurm(env, "scontrol", "show", "job", job_id)))


@pytest.mark.slow
@pytest.mark.skipif(
    not all(shutil.which(daemon) for daemon in DAEMONS) or os.geteuid() != 0,
    reason="needs root and SLURM: apt-get install slurm-wlm munge",
)
def test_scancel_sigterm_saves_requeues_and_resumes_to_the_uninterrupted_params(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slurm"))  # short: the munge socket's path must fit in 108 bytes
    model_dir = os.path.join(root, "run")
    extra = "ToyBatcher.delay_s = 0.3\ntrain.checkpoint_every_steps = 1000\nmake_mesh.fsdp = 2\n"
    extra += "initialize_distributed.initialization_timeout_s = 60"
    gin_file = toy.write_gin(os.path.join(root, "run.gin"), model_dir, train_steps=STEPS, extra=extra)
    with one_node_cluster(root) as env:
        submit = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"]
        submit += [f"--output={root}/slurm-%j.out", "launch/slurm_cpu.sbatch", f"--gin_file={gin_file}"]
        # sbatch exports this environment to the tasks: one CPU device each and the toy on PYTHONPATH.
        job = subprocess.run(
            submit, env={**env, **toy.cli_env(1)}, cwd=toy.REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        assert job.returncode == 0, job.stderr
        job_id = job.stdout.strip()
        wait_until(lambda: toy.last_logged_step(model_dir) >= 3, 300, "step 3 of the first run")
        assert job_fields(env, job_id)["Restarts"] == "0"
        # To the tasks only, as --signal=TERM@120 does: with --full srun gets it too and SIGKILLs them (srun(1)).
        slurm(env, "scancel", "--signal=TERM", job_id)
        wait_until(lambda: job_fields(env, job_id)["Restarts"] == "1", 120, "requeue")
        wait_until(lambda: job_fields(env, job_id)["JobState"] in ("COMPLETED", "FAILED"), 400, "end of the job")
        fields, out = job_fields(env, job_id), logs(root)
        assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), out
        saved = re.findall(r"preemption requested: saved step (\d+), stopping", out)
        assert len(saved) == 2 and len(set(saved)) == 1 and 3 <= int(saved[0]) < STEPS, out
        assert f"job {job_id}: preempted and saved; requeueing it to resume" in out
        assert f"job {job_id}: start 1 (requeues so far)" in out and "restored step" in out
    assert checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints")).latest_step() == STEPS
    step, params = final_params(model_dir)
    reference_step, reference = final_params(in_process_reference(os.path.join(root, "ref"), jax.devices()[:2], STEPS))
    assert step == reference_step == STEPS
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_the_cpu_twin_runs_the_gpu_script_with_its_preemption_directives():
    """sbatch reads #SBATCH lines from the file it is given, so slurm_cpu.sbatch repeats slurm_gpu.sbatch's."""
    directives = {}
    for name in ("slurm_gpu.sbatch", "slurm_cpu.sbatch"):
        with open(os.path.join(toy.REPO_ROOT, "launch", name)) as f:
            directives[name] = re.findall(r"^#SBATCH (--(?:time|signal|requeue|open-mode)\S*)", f.read(), re.M)
    assert directives["slurm_cpu.sbatch"] == directives["slurm_gpu.sbatch"] and len(directives["slurm_gpu.sbatch"]) == 4
    env = {**os.environ, "SLURM_SUBMIT_DIR": toy.REPO_ROOT, "SLURM_JOB_ID": "7", "MAESTRO_PLATFORM": "tpu"}
    result = subprocess.run(["bash", "launch/slurm_gpu.sbatch"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "MAESTRO_PLATFORM=tpu is neither gpu nor cpu" in result.stderr
