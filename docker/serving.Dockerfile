# syntax=docker/dockerfile:1
# wamfleet serving: the policy endpoint a KServe InferenceService runs (`wamfleet serve`):
# KServe v2 REST and the openpi websocket on one port, 8080. torch 2.13.0, CUDA build.
#
#   docker build -f docker/serving.Dockerfile -t ghcr.io/wamfleet/wamfleet-serving:0.1.0 .
#
# Base: python slim, not nvidia/cuda. torch's CUDA wheels carry the CUDA user-space libraries
# (cudart, cuBLAS, cuDNN, NCCL) as nvidia-*-cu12 pip packages, so a cudnn-runtime base would ship
# them twice (about 3 GB more). The driver (libcuda) comes from the node: the NVIDIA container
# toolkit mounts it into any container the device plugin gives a GPU (NVIDIA_DRIVER_CAPABILITIES
# below). Node driver: CUDA 12.8 (R570) or newer is what the cu128 build is made for.
#
# Base image: pinned by exact version tag. Its sha256 digest is NOT pinned here: no digest could
# be verified when this file was written. To pin one, pass
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints it).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the wamfleet wheel, the CUDA torch wheel, a virtualenv with pinned dependencies ---
FROM ${PYTHON_IMAGE} AS build
# PyTorch wheel index of the CUDA build (https://download.pytorch.org/whl/<TORCH_CUDA>).
ARG TORCH_CUDA=cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY platform platform
COPY fleet_agent fleet_agent
COPY model model
COPY pipelines pipelines
COPY serving serving
RUN PIP_CONSTRAINT=/src/docker/constraints.txt python -m pip wheel --no-deps --wheel-dir /wheels .
# torch alone from PyTorch's index (--no-deps: nothing else is taken from that index); its
# nvidia-* and triton dependencies, pinned exactly by torch itself, come from PyPI below.
RUN python -m pip download --no-deps --index-url https://download.pytorch.org/whl/${TORCH_CUDA} \
      --dest /wheels "torch==2.13.0+${TORCH_CUDA}"
# mlflow-skinny: `--policy models:/...` downloads the version through the MLflow REST API;
# boto3: artifacts stored in S3/MinIO (not proxied by the MLflow server) are read directly.
RUN python -m venv /opt/wamfleet \
 && /opt/wamfleet/bin/pip install --find-links /wheels -c docker/constraints.txt \
      "torch==2.13.0+${TORCH_CUDA}" "$(ls /wheels/wamfleet-*.whl)[serve,model]" mlflow-skinny boto3 \
 && cd /tmp \
 && /opt/wamfleet/bin/python -c "import sys, torch; v = torch.__version__; sys.exit(0 if v == '2.13.0+${TORCH_CUDA}' else 'torch ' + v + ': expected 2.13.0+${TORCH_CUDA}')" \
 && /opt/wamfleet/bin/python -c "import wamfleet.serving.server, wamfleet.serving.predictor, mlflow.artifacts" \
 && /opt/wamfleet/bin/wamfleet serve --help > /dev/null

# ---- runtime: the virtualenv on a clean base; no pip cache, no sources ------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG WAMFLEET_VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="wamfleet-serving" \
      org.opencontainers.image.description="wamfleet policy server: KServe v2 REST and openpi websocket on port 8080 (CUDA)" \
      org.opencontainers.image.version="${WAMFLEET_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/wamfleet/wamfleet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# A C compiler: GPU predictors run with --compile, and Triton builds its small CUDA launcher
# module with the system compiler the first time a kernel compiles (inductor's kernels themselves
# need no compiler on the GPU).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 wamfleet \
 && useradd --uid 10001 --gid 10001 --home-dir /home/wamfleet --create-home --shell /usr/sbin/nologin wamfleet
COPY --from=build /opt/wamfleet /opt/wamfleet
# HOME holds the caches (Hugging Face, torch); mount an emptyDir there with a read-only root.
ENV PATH=/opt/wamfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/wamfleet \
    WAMFLEET_DATA_DIR=/home/wamfleet/data \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/wamfleet
USER 10001:10001
EXPOSE 8080
# Docker's health check: ready once the policy loaded and answered a warm-up inference (large
# policies load for minutes). On Kubernetes the InferenceService's readiness probe asks
# /v2/models/wam/ready on the same port (platform/rollouts/backends/kserve.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
# KServe InferenceServices set command ["wamfleet"] and the whole argument list themselves.
# Here: `docker run --gpus all -v $PWD/policy:/mnt/models IMAGE`, or replace the CMD with
# `--policy models:/wamfleet-policy@champion --device cuda` (and MLFLOW_TRACKING_URI set).
ENTRYPOINT ["wamfleet", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--policy", "/mnt/models", "--device", "cuda"]
