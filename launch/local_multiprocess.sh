#!/usr/bin/env bash
# Runs maestro-train as N processes on this machine (CPU, gloo collectives), each with DEVICES simulated devices.
# Usage: launch/local_multiprocess.sh N --gin_file=... [--gin.X=Y ...]
#   env: DEVICES=2, PORT=12355, PREEMPTION_EXIT_CODE=42 (passed to the trainer), PYTHON=.venv/bin/python
# SIGTERM or SIGINT (Ctrl-C) goes to every process; SIGTERM makes each save at the same step and exit
# PREEMPTION_EXIT_CODE, which this script then exits with; a second signal kills them all. When one process dies
# (any other non-zero exit) the rest are killed at once (they would hang on their dead peer) and this script exits
# with the dead one's status. Bash cannot trap a signal that was ignored when it started: started with `&` from a
# script (no job control), this launcher ignores SIGINT; SIGTERM still works.
set -euo pipefail
N=${1:?usage: $0 NUM_PROCESSES --gin_file=... [--gin.X=Y ...]}
shift
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "$0: NUM_PROCESSES must be a positive integer, got '$N'" >&2; exit 2; }
DEVICES=${DEVICES:-2}
PORT=${PORT:-12355}
PREEMPTION_EXIT_CODE=${PREEMPTION_EXIT_CODE:-42} # the default of preemption_exit_code.code (maestro_jax/train.py)
PYTHON=${PYTHON:-$(dirname "$0")/../.venv/bin/python}

set -m # each process in its own process group: a terminal's Ctrl-C reaches it once, through the trap below
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES}" JAX_PLATFORMS=cpu \
    "$PYTHON" -m maestro_jax.cli.train "$@" \
    --gin.initialize_distributed.coordinator_address="'localhost:${PORT}'" \
    --gin.initialize_distributed.num_processes="${N}" \
    --gin.initialize_distributed.process_id="${i}" \
    --gin.preemption_exit_code.code="${PREEMPTION_EXIT_CODE}" &
  pids+=($!)
done

signals=0
# shellcheck disable=SC2317  # called from the traps
forward() {
  signals=$((signals + 1))
  if ((signals == 1)); then
    echo "$0: $1 -> forwarded to ${pids[*]} (send it again to kill them)" >&2
    kill -s "$1" "${pids[@]}" 2>/dev/null || true
  else
    kill -s KILL "${pids[@]}" 2>/dev/null || true
  fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT

# Polled, not `wait -n`: with job control on (set -m), bash reports and forgets a job that ends while it runs other
# commands, and `wait -n` then waits for a job that no longer exists (seen: the launcher hung after killing the
# others). `wait PID` still returns a forgotten child's status.
status=0
live=("${pids[@]}")
while ((${#live[@]} > 0)); do
  still=()
  for pid in "${live[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    code=0
    wait "$pid" 2>/dev/null || code=$?
    ((code == 0 || status != 0)) || status=$code
    if ((code != 0 && code != PREEMPTION_EXIT_CODE && signals == 0)); then
      echo "$0: process ${pid} exited with status ${code}; killing the other $((${#live[@]} - 1))" >&2
      signals=1 # from here on, exits are expected
      kill -s KILL "${pids[@]}" 2>/dev/null || true
    fi
  done
  live=("${still[@]}")
  # A background sleep and the wait builtin, not a foreground sleep: a trapped signal interrupts `wait` and runs its
  # trap at once, where bash would run it only after a foreground command ended.
  if ((${#live[@]} > 0)); then
    sleep 0.1 &
    wait $! 2>/dev/null || true
  fi
done
exit "$status"
