# syntax=docker/dockerfile:1
# wamfleet pipeline: the image of the Kubeflow Pipelines components (snapshot, validate, curate,
# shards, finetune, evaluate, register), of the Ray head and GPU workers (Ray Data curation, Ray
# Train fine-tuning) and of the chart's pipeline-upload Job (`wamfleet pipelines compile`).
# torch 2.13.0 (CUDA build) + wamfleet[platform,train,model,sim,serve]: `platform` for the
# catalog's PostgreSQL driver, `sim` and `serve` for closed-loop evaluation in Meta-World, which
# renders through EGL (MUJOCO_GL=egl: Mesa on CPU nodes, the NVIDIA driver's EGL on GPU nodes).
#
#   docker build -f docker/pipeline.Dockerfile \
#     --build-arg WAMFLEET_CODE_VERSION="0.1.0+g$(git rev-parse --short=12 HEAD)" \
#     -t ghcr.io/wamfleet/wamfleet-pipeline:0.1.0 .
#
# Base: Ray's own GPU image, same Ray version as docker/constraints.txt (a Ray client and cluster
# must match exactly) and the same CUDA as the torch build (TORCH_CUDA). KubeRay's default probes
# need its wget and bash. Everything installs into its Python (conda, /home/ray/anaconda3), the
# interpreter `ray start`, Ray's workers and KFP's `python3` all run. The Ray base ships g++ and
# cmake; this file adds no build tool to the final stage (wheels are built in the build stage).
#
# Base image: pinned by exact version tag. Its sha256 digest is NOT pinned here: no digest could
# be verified when this file was written. To pin one, pass
#   --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128@sha256:<digest>
# (`docker buildx imagetools inspect rayproject/ray:2.60.0-py311-cu128` prints it).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128

# ---- build: every wheel the runtime needs, built or downloaded once -------------------------
FROM ${RAY_IMAGE} AS build
# PyTorch wheel index of the CUDA build; keep it equal to the -cuXYZ of RAY_IMAGE.
ARG TORCH_CUDA=cu128
USER root
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY platform platform
COPY fleet_agent fleet_agent
COPY model model
COPY pipelines pipelines
COPY serving serving
RUN PIP_CONSTRAINT=/src/docker/constraints.txt python -m pip wheel --no-deps --wheel-dir /dist .
# torch alone from PyTorch's index (--no-deps: nothing else is taken from that index).
RUN python -m pip download --no-deps --index-url https://download.pytorch.org/whl/${TORCH_CUDA} \
      --dest /torch "torch==2.13.0+${TORCH_CUDA}"
# The whole dependency tree as wheels (sdists are compiled here, where the compilers are).
RUN python -m pip wheel --find-links /dist --find-links /torch --wheel-dir /wheels -c docker/constraints.txt \
      "torch==2.13.0+${TORCH_CUDA}" "$(ls /dist/wamfleet-*.whl)[platform,train,model,sim,serve]" boto3

# ---- runtime: Ray's image plus the wheels, installed offline; runs as uid 10001 --------------
FROM ${RAY_IMAGE}
ARG RAY_IMAGE
ARG TORCH_CUDA=cu128
ARG WAMFLEET_VERSION=0.1.0
ARG VCS_REF=unknown
# Recorded on every MLflow version this image registers (tag wamfleet.code_version); empty:
# the package version.
ARG WAMFLEET_CODE_VERSION=
# The image the compiled pipeline's components name (`wamfleet pipelines compile` in this image).
ARG WAMFLEET_PIPELINE_IMAGE=ghcr.io/wamfleet/wamfleet-pipeline:0.1.0
LABEL org.opencontainers.image.title="wamfleet-pipeline" \
      org.opencontainers.image.description="wamfleet pipeline steps and Ray workers: curation, fine-tuning, closed-loop evaluation (CUDA)" \
      org.opencontainers.image.version="${WAMFLEET_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/wamfleet/wamfleet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RAY_IMAGE}"
USER root
# EGL and GL runtime libraries for MuJoCo (no -dev packages). /gcs, /minio, /s3: where KFP's
# launcher stages artifacts; created writable for uid 10001 (older KFP backends mount nothing).
# /home/ray opened to other users: the Python lives under it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 wamfleet \
 && useradd --uid 10001 --gid 10001 --groups users --home-dir /home/wamfleet --create-home --shell /bin/bash wamfleet \
 && chmod 0755 /home/ray \
 && mkdir -p /gcs /minio /s3 \
 && chown 10001:10001 /gcs /minio /s3
# Offline, from the build stage's wheels: no index, no compiler, no wheel left in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=docker/constraints.txt,target=/tmp/constraints.txt \
    python -m pip install --no-cache-dir --no-index --find-links /wheels -c /tmp/constraints.txt \
      "torch==2.13.0+${TORCH_CUDA}" "$(ls /wheels/wamfleet-*.whl)[platform,train,model,sim,serve]" boto3 \
 && cd /tmp \
 && python -c "import sys, torch, ray; v = (torch.__version__, ray.__version__); sys.exit(0 if v == ('2.13.0+${TORCH_CUDA}', '2.60.0') else 'torch, ray: ' + str(v))" \
 && python -c "import wamfleet.pipelines.pipeline, wamfleet.pipelines.steps, psycopg, mlflow" \
 && wamfleet pipelines --help > /dev/null
ENV HOME=/home/wamfleet \
    PYTHONUNBUFFERED=1 \
    MUJOCO_GL=egl \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    RAY_USAGE_STATS_ENABLED=0 \
    WAMFLEET_DATA_DIR=/home/wamfleet/data \
    WAMFLEET_CODE_VERSION=${WAMFLEET_CODE_VERSION} \
    WAMFLEET_PIPELINE_IMAGE=${WAMFLEET_PIPELINE_IMAGE}
WORKDIR /home/wamfleet
USER 10001:10001
# No HEALTHCHECK: nothing long-running is started by default. KFP steps are batch containers;
# on Ray pods KubeRay injects its own probes (the raylet's and dashboard agent's health URLs,
# fetched with the base image's wget).
HEALTHCHECK NONE
CMD ["wamfleet", "--help"]
