"""Multi-process start-up: jax.distributed.initialize with auto-detection, an explicit CPU path and a timeout."""

import os
import socket
import time

import gin
import jax

# Environment variables whose presence means a cluster JAX can auto-detect (TPU pod, SLURM, Open MPI, GKE).
_CLUSTER_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri")


def _cluster_detected() -> bool:
    if any(os.environ.get(name) for name in _CLUSTER_ENV_VARS):
        # A single-task SLURM allocation (e.g. an interactive shell) is still one process.
        return os.environ.get("SLURM_NTASKS", "2") != "1"
    return False


def _coordinator_unreachable_error(address: str, process_id, timeout_s, detail: str) -> RuntimeError:
    return RuntimeError(
        f"process {process_id} could not join the JAX coordinator at {address} within {timeout_s}s ({detail}). "
        "Check that process 0 is running and reachable at that address and port, or raise "
        "initialize_distributed.initialization_timeout_s."
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


@gin.configurable
def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
    initialization_timeout_s: int = 300,
    cpu_collectives: str = "gloo",
) -> bool:
    """Starts JAX's multi-process runtime when the run spans several processes; returns whether it did.

    Explicit (CPU, local multi-process): coordinator_address "host:port", num_processes and process_id, with CPU
    collectives over `cpu_collectives` (gloo). Automatic: on TPU pods and SLURM/MPI jobs with nothing given.
    initialization_timeout_s: seconds to wait for every process to reach the coordinator.
    Must run before anything touches a JAX device.
    """
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if not explicit and not _cluster_detected():
        return False
    if explicit and (coordinator_address is None or num_processes is None or process_id is None):
        raise ValueError(
            "a multi-process run needs initialize_distributed.coordinator_address, num_processes and process_id "
            f"together; got {coordinator_address=}, {num_processes=}, {process_id=}."
        )
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address is not None and process_id != 0:
        wait_for_coordinator(coordinator_address, initialization_timeout_s, process_id)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout_s,
        )
    except Exception as error:  # the runtime raises a bare XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE, ...)
        where = coordinator_address or "the auto-detected coordinator"
        detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise _coordinator_unreachable_error(where, process_id, initialization_timeout_s, detail) from error
    return True
