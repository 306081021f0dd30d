#!/usr/bin/env bash
# Runs maestro-train on every worker of a Cloud TPU VM pod slice (jax.distributed auto-detects the TPU cluster).
# Usage: TPU_NAME=my-v5p-128 ZONE=us-east5-a [PROJECT=...] launch/tpu_pod.sh --gin_file=... [--gin.X=Y ...]
# The repo must be at the same path on every worker (e.g. cloned by a startup script) with a .venv built there.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-'~/maestro_jax'}
ARGS=$(printf " %q" "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT:+--project="${PROJECT}"} --worker=all \
  --command="cd ${REPO_DIR} && .venv/bin/maestro-train${ARGS}"
