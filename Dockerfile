# maestro-train in a container, for GKE through xpk (launch/xpk.sh builds and pushes it) or any cluster that runs images:
#   docker build --build-arg ACCELERATOR=tpu -t gcr.io/PROJECT/maestro-jax:tpu .
# ACCELERATOR: tpu (jax[tpu]: libtpu, for Cloud TPU VMs and GKE TPU nodes), cuda12 (jax[cuda12]: CUDA 12 from pip,
# for NVIDIA GPUs; the node needs only the driver) or cpu (the base install).
# The repository sits at /app, the working directory, installed editable: `maestro-train --gin_file=gin/...` finds the
# recipes there, as in a checkout.
FROM python:3.11-slim-bookworm
ARG ACCELERATOR=tpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# espeak-ng speaks the synthetic corpus of the tiny recipes (a smoke test of the image); pod recipes read prepared data.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# Dependencies first, from setup.py alone, so that a code change rebuilds only the last layer.
COPY setup.py pyproject.toml ./
COPY maestro_jax/__init__.py maestro_jax/
RUN case "${ACCELERATOR}" in \
      tpu | cuda12) extra="[${ACCELERATOR}]" ;; \
      cpu) extra="" ;; \
      *) echo "ACCELERATOR=${ACCELERATOR}: use tpu, cuda12 or cpu" >&2 && exit 1 ;; \
    esac \
    && pip install -e ".${extra}"
COPY . .
CMD ["maestro-train", "--help"]
