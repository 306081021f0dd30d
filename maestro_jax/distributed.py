"""Multi-process start-up: jax.distributed.initialize for TPU VMs, GKE, SLURM, Open MPI and explicit coordinators.

One switch, `initialize_distributed.cluster`, says how; "auto" (the default) picks the first of these that applies:
- explicit: `coordinator_address` (with `num_processes` and `process_id`) was given, e.g. local CPU runs with gloo;
- mpi, slurm, gke, tpu_vm: the environment JAX's own cluster detection (jax/_src/clusters, same order) recognises;
  on them `jax.distributed.initialize()` is called with no arguments, the documented way: JAX reads SLURM/Open MPI
  variables, GKE's TPU_WORKER_HOSTNAMES, or a TPU VM's workers from the GCE metadata server;
- none of them: one process, nothing to start.
"""

import os
import socket
import time
from collections.abc import Mapping

import gin
import jax
from jax._src import cloud_tpu_init

# Our cluster names -> JAX's `cluster_detection_method` names, for a forced (non-auto) choice.
JAX_DETECTION_METHODS = {"mpi": "ompi", "slurm": "slurm", "gke": "gketpu", "tpu_vm": "gcetpu"}
CLUSTERS = ("auto", "explicit", "off", *JAX_DETECTION_METHODS)
# What JAX's SlurmCluster needs; srun sets them for every task (a bare sbatch batch step is not a multi-task step).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def on_cloud_tpu_vm() -> bool:
    """Whether `import jax` found TPU chips and libtpu on this host (a Cloud TPU VM or a GKE TPU node); JAX's own
    TPU cluster detection asks the same flag."""
    return cloud_tpu_init.running_in_cloud_tpu_vm


def detect_cluster(environ: Mapping[str, str], tpu_vm: bool) -> str | None:
    """The cluster `jax.distributed.initialize()` would detect ("mpi", "slurm", "gke", "tpu_vm"; JAX's order), or None
    for a single process. A one-task SLURM allocation (e.g. an interactive shell) is one process."""
    if "OMPI_MCA_orte_hnp_uri" in environ:
        return "mpi"
    if all(name in environ for name in _SLURM_VARS) and environ["SLURM_NTASKS"] != "1":
        return "slurm"
    if tpu_vm and (environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES")):
        return "gke"
    if tpu_vm and "TPU_SKIP_MDS_QUERY" not in environ:
        return "tpu_vm"  # even a single-host TPU VM: the runtime then also delivers TPU maintenance notices
    return None


def _coordinator_unreachable_error(address: str, process_id, timeout_s, detail: str) -> RuntimeError:
    who = "this process" if process_id is None else f"process {process_id}"
    return RuntimeError(
        f"{who} could not join the JAX coordinator at {address} within {timeout_s}s ({detail}). "
        "Check that process 0 is running and reachable at that address and port, or raise "
        "initialize_distributed.initialization_timeout_s (initialize_distributed.cluster='off' runs one process)."
    )


def wait_for_coordinator(address: str, timeout_s: float, process_id=None) -> None:
    """Polls the coordinator's TCP port until it accepts a connection; raises a clear error after `timeout_s`.

    The runtime aborts the whole process (no Python exception) when it cannot register, so we check first.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise _coordinator_unreachable_error(address, process_id, timeout_s, str(error)) from error
            time.sleep(0.25)


def _resolve_cluster(cluster: str, explicit: bool) -> str | None:
    """The cluster to start ("explicit", one of JAX_DETECTION_METHODS) or None; checks a forced choice applies."""
    if cluster not in CLUSTERS:
        raise ValueError(f"initialize_distributed.cluster={cluster!r} is not one of {', '.join(CLUSTERS)}.")
    if cluster == "off":
        return None
    if explicit or cluster == "explicit":
        return "explicit"
    detected = detect_cluster(os.environ, on_cloud_tpu_vm())
    if cluster != "auto" and detected != cluster:
        raise ValueError(
            f"initialize_distributed.cluster={cluster!r}, but this process does not run in that environment "
            f"(auto-detection sees {detected or 'a single process'}). Start it under that launcher (launch/README.md)"
            ", or set initialize_distributed.cluster='auto'."
        )
    return detected


@gin.configurable
def initialize_distributed(
    *,
    cluster: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
    initialization_timeout_s: int = 300,
    cpu_collectives: str = "gloo",
) -> bool:
    """Starts JAX's multi-process runtime when the run spans several processes; returns whether it did.

    cluster: "auto" (module docstring), or force one of "explicit", "mpi", "slurm", "gke", "tpu_vm", or "off" (one
    process, whatever the environment says).
    Explicit (local multi-process): coordinator_address "host:port", num_processes and process_id together, with
    CPU collectives over `cpu_collectives` (gloo). local_device_ids: devices this process uses (default: JAX's).
    initialization_timeout_s: seconds to wait for every process to reach the coordinator.
    Must run before anything touches a JAX device.
    """
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    chosen = _resolve_cluster(cluster, explicit)
    if chosen is None:
        return False
    if chosen == "explicit" and (coordinator_address is None or num_processes is None or process_id is None):
        raise ValueError(
            "a multi-process run needs initialize_distributed.coordinator_address, num_processes and process_id "
            f"together; got {coordinator_address=}, {num_processes=}, {process_id=}."
        )
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if chosen == "explicit" and process_id != 0:
        wait_for_coordinator(coordinator_address, initialization_timeout_s, process_id)
    try:
        if chosen == "explicit":
            jax.distributed.initialize(
                coordinator_address=coordinator_address,
                num_processes=num_processes,
                process_id=process_id,
                local_device_ids=local_device_ids,
                initialization_timeout=initialization_timeout_s,
            )
        else:
            # The documented call: no addresses or ids; a forced cluster only pins JAX to that one detector.
            method = None if cluster == "auto" else JAX_DETECTION_METHODS[chosen]
            jax.distributed.initialize(
                local_device_ids=local_device_ids,
                cluster_detection_method=method,
                initialization_timeout=initialization_timeout_s,
            )
    except Exception as error:  # the runtime raises a bare XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE, ...)
        where = coordinator_address if chosen == "explicit" else f"the coordinator JAX detected on {chosen}"
        detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise _coordinator_unreachable_error(where, process_id, initialization_timeout_s, detail) from error
    return True
