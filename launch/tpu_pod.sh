#!/usr/bin/env bash
# Starts maestro-train on every worker of a Cloud TPU VM pod slice and returns; jax.distributed finds the workers
# from the TPU VM metadata. Each worker runs launch/tpu_worker_start.sh: it stops what a previous launch left on the
# TPU (stale trainer, python processes holding the TPU, /tmp/libtpu_lockfile), then starts the trainer detached from
# this ssh session (setsid + nohup), logging to ~/maestro_logs/RUN.HOSTNAME.log on that worker.
# Usage: TPU_NAME=my-v5p-128 ZONE=us-east5-a [PROJECT=...] [RUN=name] launch/tpu_pod.sh --gin_file=... [--gin.X=Y ...]
# The repo must be at REPO_DIR (default ~/maestro_jax) on every worker, with `pip install -e '.[tpu]'` in its .venv.
# After a preemption or maintenance event every worker saves and exits 42; run this again with the same arguments
# (once the slice is READY) and it resumes from that checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-'~/maestro_jax'}
RUN=${RUN:-maestro-$(date +%Y%m%d-%H%M%S)}
LOG_DIR=${LOG_DIR:-'~/maestro_logs'}
ARGS=$(printf " %q" "$RUN" "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT:+--project="${PROJECT}"} --worker=all \
  --command="cd ${REPO_DIR} && LOG_DIR=${LOG_DIR} PREEMPTION_EXIT_CODE=${PREEMPTION_EXIT_CODE:-42} \
bash launch/tpu_worker_start.sh${ARGS}"
echo "Started ${RUN}. Follow worker 0 with: gcloud compute tpus tpu-vm ssh ${TPU_NAME} --zone=${ZONE}" \
  "${PROJECT:+--project=${PROJECT}} --worker=0 --command='tail -f ${LOG_DIR}/${RUN}.*.log'"
