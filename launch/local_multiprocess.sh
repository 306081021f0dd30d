#!/usr/bin/env bash
# Runs maestro-train as N processes on this machine (CPU, gloo collectives), each with DEVICES simulated devices.
# Usage: launch/local_multiprocess.sh N --gin_file=... [--gin.X=Y ...]   (env: DEVICES=2, PORT=12355)
set -euo pipefail
N=${1:?usage: $0 NUM_PROCESSES --gin_file=... [--gin.X=Y ...]}
shift
DEVICES=${DEVICES:-2}
PORT=${PORT:-12355}
PYTHON=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES}" JAX_PLATFORMS=cpu \
    "$PYTHON" -m maestro_jax.cli.train "$@" \
    --gin.initialize_distributed.coordinator_address="'localhost:${PORT}'" \
    --gin.initialize_distributed.num_processes="${N}" \
    --gin.initialize_distributed.process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
