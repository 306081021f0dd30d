#!/usr/bin/env bash
# Submits maestro-train as an xpk workload on a GKE TPU cluster (multi-slice: set NUM_SLICES and make_mesh.dcn_data).
# Usage: CLUSTER=c PROJECT=p ZONE=z TPU_TYPE=v5p-256 [IMAGE=gcr.io/p/maestro-jax:tag] [NUM_SLICES=1] \
#        [MAX_RESTARTS=20] [GRACE_PERIOD_S=300] [PREEMPTION_EXIT_CODE=42] launch/xpk.sh --gin_file=... [--gin.X=Y ...]
# Without IMAGE it first builds the repository's Dockerfile for TPU and pushes it to gcr.io/PROJECT/maestro-jax
# (needs docker and `gcloud auth configure-docker`). MODEL_DIR must be on gs://: the pods share no disk.
# Preemption (maintenance, spot reclaim, eviction): GKE sends SIGTERM and waits GRACE_PERIOD_S before SIGKILL; every
# worker saves at the same step and exits 42, which xpk's JobSet restarts (it restarts on 42 and 127-255) up to
# MAX_RESTARTS times; the restarted workers resume from that checkpoint.
set -euo pipefail
: "${CLUSTER:?}" "${PROJECT:?}" "${ZONE:?}" "${TPU_TYPE:?}"
PREEMPTION_EXIT_CODE=${PREEMPTION_EXIT_CODE:-42} # the default of preemption_exit_code.code (maestro_jax/train.py)
if [[ -z ${IMAGE:-} ]]; then
  IMAGE="gcr.io/${PROJECT}/maestro-jax:tpu-$(date +%Y%m%d-%H%M%S)"
  docker build --build-arg ACCELERATOR=tpu -t "${IMAGE}" "$(dirname "$0")/.."
  docker push "${IMAGE}"
fi
restart_codes=()
if ((PREEMPTION_EXIT_CODE != 42)); then # 42 is among xpk's default restart codes; any other must be named
  restart_codes=(--restart-on-exit-codes="${PREEMPTION_EXIT_CODE}")
fi
# One simple command: xpk's wrapper forwards the pod's SIGTERM to it and exits with its status.
ARGS=$(printf " %q" "$@" --gin.preemption_exit_code.code="${PREEMPTION_EXIT_CODE}")
xpk workload create --cluster="${CLUSTER}" --project="${PROJECT}" --zone="${ZONE}" \
  --workload="${WORKLOAD:-maestro-$(date +%Y%m%d-%H%M%S)}" --tpu-type="${TPU_TYPE}" \
  --num-slices="${NUM_SLICES:-1}" --docker-image="${IMAGE}" \
  --max-restarts="${MAX_RESTARTS:-20}" --termination-grace-period-seconds="${GRACE_PERIOD_S:-300}" \
  "${restart_codes[@]}" --command="maestro-train${ARGS}"
