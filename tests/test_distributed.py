"""initialize_distributed picks the cluster JAX would detect and calls jax.distributed.initialize the documented way.

jax.distributed.initialize is recorded, not run (it cannot run twice in one process, and these are not real clusters);
tests/trainer/test_trainer_processes.py starts two real processes through the explicit path.
"""

import jax
import pytest

from maestro_jax import distributed

SLURM_TASK = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_NODELIST": "gpu[001-004]",
    "SLURM_NTASKS": "32",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "5",
}
CLUSTER_VARS = (
    *SLURM_TASK,
    "OMPI_MCA_orte_hnp_uri",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "TPU_SKIP_MDS_QUERY",
)


@pytest.mark.parametrize(
    "environ,tpu_vm,expected",
    [
        ({}, True, "tpu_vm"),  # a TPU VM sets no variables: JAX reads its workers from the metadata server
        ({"TPU_WORKER_HOSTNAMES": "w-0,w-1"}, True, "gke"),
        ({"TPU_PROCESS_ADDRESSES": "w-0:8476,w-1:8476"}, True, "gke"),
        ({"TPU_SKIP_MDS_QUERY": "1"}, True, None),
        ({"TPU_WORKER_HOSTNAMES": "w-0,w-1"}, False, None),  # no TPU on this host: JAX would not detect GKE TPU
        (SLURM_TASK, False, "slurm"),
        ({**SLURM_TASK, "SLURM_NTASKS": "1"}, False, None),  # one task, e.g. an interactive allocation
        ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8"}, False, None),  # a batch step, not an srun task
        ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911"}, False, "mpi"),
        ({}, False, None),
    ],
)
def test_detect_cluster_matches_jax_detection(environ, tpu_vm, expected):
    assert distributed.detect_cluster(environ, tpu_vm) == expected


@pytest.fixture
def recorded(monkeypatch):
    """A clean environment, and the calls jax.distributed.initialize (and jax.config.update) would have received."""
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)
    return calls


def test_on_a_tpu_vm_initialize_is_called_without_addresses_or_ids(recorded, monkeypatch):
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
    assert distributed.initialize_distributed(initialization_timeout_s=60)
    assert recorded == [{"local_device_ids": None, "cluster_detection_method": None, "initialization_timeout": 60}]


def test_under_srun_initialize_leaves_slurm_to_jax(recorded, monkeypatch):
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    assert distributed.initialize_distributed()
    assert recorded[0]["cluster_detection_method"] is None and "coordinator_address" not in recorded[0]


def test_a_forced_cluster_pins_jax_detection_and_off_starts_nothing(recorded, monkeypatch):
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
    assert distributed.initialize_distributed(cluster="tpu_vm")
    assert recorded[-1]["cluster_detection_method"] == "gcetpu"
    assert not distributed.initialize_distributed(cluster="off")
    assert len(recorded) == 1


def test_a_forced_cluster_that_is_not_there_says_so(recorded, monkeypatch):
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
    with pytest.raises(ValueError, match=r"cluster='slurm', but .* sees a single process"):
        distributed.initialize_distributed(cluster="slurm")
    with pytest.raises(ValueError, match=r"cluster='tpu' is not one of auto, explicit, off, mpi, slurm, gke, tpu_vm"):
        distributed.initialize_distributed(cluster="tpu")
    with pytest.raises(ValueError, match=r"needs initialize_distributed.coordinator_address, num_processes"):
        distributed.initialize_distributed(cluster="explicit")
    assert not distributed.initialize_distributed() and recorded == []
