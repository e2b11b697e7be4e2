# syntax=docker/dockerfile:1
# wamfleet platform: the control-plane API (`wamfleet platform serve`): catalog, uploads, the
# retrain launcher (Kubeflow Pipelines client), the rollout controller (KServe backend through
# the kubernetes client, MLflow aliases through mlflow-skinny's REST client).
# No torch, ray or kserve here: the platform never imports them (tests/unit/test_images.py).
#
#   docker build -f docker/platform.Dockerfile -t ghcr.io/wamfleet/wamfleet-platform:0.1.0 .
#
# Base image: pinned by exact version tag. Its sha256 digest is NOT pinned here: no digest could
# be verified when this file was written. To pin one, pass
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints it).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the wamfleet wheel and a virtualenv with pinned dependencies ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY platform platform
COPY fleet_agent fleet_agent
COPY model model
COPY pipelines pipelines
COPY serving serving
# PIP_CONSTRAINT (unlike -c) also pins setuptools and wheel in pip's isolated build environment.
RUN PIP_CONSTRAINT=/src/docker/constraints.txt python -m pip wheel --no-deps --wheel-dir /wheels .
RUN python -m venv /opt/wamfleet \
 && /opt/wamfleet/bin/pip install -c docker/constraints.txt \
      "$(ls /wheels/wamfleet-*.whl)[platform]" kfp kubernetes mlflow-skinny \
 && cd /tmp \
 && /opt/wamfleet/bin/python -c "import importlib.util as u, sys; sys.exit('torch must not be in the platform image' if u.find_spec('torch') else 0)" \
 && /opt/wamfleet/bin/python -c "import wamfleet.platform.api.app, wamfleet.platform.rollouts.backends.kserve, kfp, kubernetes, mlflow" \
 && /opt/wamfleet/bin/wamfleet --help > /dev/null

# ---- runtime: the virtualenv on a clean base; no compiler, no pip cache, no sources ----------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG WAMFLEET_VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="wamfleet-platform" \
      org.opencontainers.image.description="wamfleet control plane: catalog, upload API, retrain launcher, rollout controller" \
      org.opencontainers.image.version="${WAMFLEET_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/wamfleet/wamfleet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN groupadd --gid 10001 wamfleet \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/wamfleet --create-home --shell /usr/sbin/nologin wamfleet
COPY --from=build /opt/wamfleet /opt/wamfleet
# WAMFLEET_DATA_DIR: where `platform serve` writes an admin token when none is given (mount a
# volume there if the root filesystem is read-only). The rollout backend is KServe: the local
# backend starts `wamfleet serve` processes, which need torch, which this image does not have.
ENV PATH=/opt/wamfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WAMFLEET_DATA_DIR=/var/lib/wamfleet \
    WAMFLEET_API_PORT=8600 \
    WAMFLEET_ROLLOUT_BACKEND=kserve
WORKDIR /var/lib/wamfleet
USER 10001:10001
EXPOSE 8600
# Docker's health check; on Kubernetes the chart's probes call the same GET /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WAMFLEET_API_PORT', '8600'), timeout=4)"]
ENTRYPOINT ["wamfleet"]
CMD ["platform", "serve", "--host", "0.0.0.0"]
