#!/usr/bin/env bash
# Submits maestro-train as an xpk workload on a GKE TPU cluster (multi-slice: set NUM_SLICES and make_mesh.dcn_data).
# Usage: CLUSTER=c PROJECT=p ZONE=z TPU_TYPE=v5p-256 IMAGE=gcr.io/p/maestro:latest [NUM_SLICES=1] \
#        launch/xpk.sh --gin_file=... [--gin.X=Y ...]
set -euo pipefail
: "${CLUSTER:?}" "${PROJECT:?}" "${ZONE:?}" "${TPU_TYPE:?}" "${IMAGE:?}"
ARGS=$(printf " %q" "$@")
xpk workload create --cluster="${CLUSTER}" --project="${PROJECT}" --zone="${ZONE}" \
  --workload="${WORKLOAD:-maestro-$(date +%Y%m%d-%H%M%S)}" --tpu-type="${TPU_TYPE}" \
  --num-slices="${NUM_SLICES:-1}" --docker-image="${IMAGE}" \
  --command="maestro-train${ARGS}"
