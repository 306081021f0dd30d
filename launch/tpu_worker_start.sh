#!/usr/bin/env bash
# One TPU VM worker's part of launch/tpu_pod.sh, run from the repository root: stop what a previous launch left on
# the TPU, then start maestro-train in a session of its own, so that it outlives the ssh session that started it.
# Usage: launch/tpu_worker_start.sh RUN_NAME --gin_file=... [--gin.X=Y ...]
#   env: LOG_DIR=~/maestro_logs (the log is LOG_DIR/RUN_NAME.HOSTNAME.log), TRAIN=.venv/bin/maestro-train,
#        STOP_TIMEOUT_S=180, TPU_DEVICES='/dev/accel* /dev/vfio/[0-9]*', LIBTPU_LOCKFILE=/tmp/libtpu_lockfile,
#        PREEMPTION_EXIT_CODE=42 (passed to the trainer)
set -euo pipefail
RUN=${1:?usage: $0 RUN_NAME --gin_file=... [--gin.X=Y ...]}
shift
LOG_DIR=${LOG_DIR:-$HOME/maestro_logs}
TRAIN=${TRAIN:-.venv/bin/maestro-train}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-180}
TPU_DEVICES=${TPU_DEVICES:-/dev/accel* /dev/vfio/[0-9]*}
LIBTPU_LOCKFILE=${LIBTPU_LOCKFILE:-/tmp/libtpu_lockfile}
PREEMPTION_EXIT_CODE=${PREEMPTION_EXIT_CODE:-42} # the default of preemption_exit_code.code (maestro_jax/train.py)
PIDFILE=${LOG_DIR}/maestro-train.pid
mkdir -p "$LOG_DIR"

# Whether any of the targets (pids, or -pgid for a process group) still runs; a zombie (exited, not yet reaped by
# its parent) holds no TPU and does not count.
running() {
  ps -e -o pid=,pgid=,stat= | awk -v targets=" $* " '$3 !~ /^Z/ && (index(targets, " " $1 " ") ||
    index(targets, " -" $2 " ")) { found = 1 } END { exit !found }'
}

# Sends SIGTERM to the given targets (pids, or -pgid for a process group), then SIGKILL to what is left after
# STOP_TIMEOUT_S (a trainer saves on SIGTERM first: a relaunch does not lose the steps since the last checkpoint).
stop() {
  kill -s TERM -- "$@" 2>/dev/null || return 0
  for ((waited = 0; waited < STOP_TIMEOUT_S * 10; waited++)); do
    running "$@" || return 0
    sleep 0.1
  done
  echo "$(hostname): still running after ${STOP_TIMEOUT_S}s; killing $*" >&2
  kill -s KILL -- "$@" 2>/dev/null || true
}

# The processes that hold a TPU device open (libtpu allows one process per host).
tpu_holders() {
  local patterns=() pattern
  for pattern in $TPU_DEVICES; do patterns+=(-o -lname "$pattern"); done
  find /proc/[0-9]*/fd -maxdepth 1 \( "${patterns[@]:1}" \) 2>/dev/null | cut -d/ -f3 | sort -un
}

if [[ -s $PIDFILE ]] && running "-$(<"$PIDFILE")"; then
  echo "$(hostname): stopping the previous launch's maestro-train (process group $(<"$PIDFILE"))" >&2
  stop "-$(<"$PIDFILE")"
fi
mapfile -t holders < <(tpu_holders)
if ((${#holders[@]})); then
  echo "$(hostname): stopping stale processes that hold the TPU: ${holders[*]}" >&2
  stop "${holders[@]}"
fi
# A lock left behind (a killed run's, or another user's) can make libtpu report the TPU as in use; no holder is left.
if [[ -e $LIBTPU_LOCKFILE ]]; then
  rm -f "$LIBTPU_LOCKFILE" 2>/dev/null || sudo -n rm -f "$LIBTPU_LOCKFILE"
fi

log=${LOG_DIR}/${RUN}.$(hostname).log
# setsid: a session of its own (the ssh session's end does not reach it); nohup: SIGHUP ignored; stdin/stdout off
# the ssh channel. The trap lets the wrapper outlive a SIGTERM to the group and log the trainer's exit status.
export PREEMPTION_EXIT_CODE
# shellcheck disable=SC2016  # the single-quoted script expands its own variables
setsid nohup bash -c 'trap : TERM; "$@"; status=$?
  [[ $status != "$PREEMPTION_EXIT_CODE" ]] || hint=" (preempted after saving: run launch/tpu_pod.sh again to resume)"
  echo "maestro-train exited with status ${status}${hint:-} at $(date)"' maestro-train \
  "$TRAIN" "$@" --gin.preemption_exit_code.code="${PREEMPTION_EXIT_CODE}" >>"$log" 2>&1 </dev/null &
echo $! >"$PIDFILE"
echo "$(hostname): maestro-train started (process group $!); log ${log}"
