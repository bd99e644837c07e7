# syntax=docker/dockerfile:1.7
# mimicry — inference-and-audit service image (docs/deploy.md, "Container").
#
#   GPU (default): CUDA + cuDNN runtime base, CUDA torch, onnxruntime-gpu:
#     docker build -t mimicry:0.1.0 .
#   CPU variant:
#     docker build -t mimicry:0.1.0-cpu --build-arg VARIANT=cpu --build-arg BASE_IMAGE=ubuntu:22.04 .
#   Registry baked in (default: mounted at run time on /models/registry):
#     docker build --build-arg REGISTRY=baked -t mimicry:0.1.0-models .
#
# Runs `bentoml serve serving.service:MimicryService` on port 3000 as an unprivileged user (uid 10001).
# The same image runs the audit: `docker run … mimicry:0.1.0 mimicry audit watch …` (override the entrypoint).
#
# hadolint (CI: `hadolint --failure-threshold error Dockerfile`) — ignored rules, each justified:
# hadolint global ignore=DL3008
#   DL3008 (pin apt package versions): the CUDA base image already pins the distribution snapshot and the
#   Python 3.11 / CA packages must follow Ubuntu's security updates; the Python dependencies, which define
#   behaviour, are pinned exactly by requirements.lock.

ARG BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
# `mounted` (an empty mount point) or `baked` (copy ./registry into the image).
ARG REGISTRY=mounted

# ---------------------------------------------------------------------------------------------- registry
FROM scratch AS registry-mounted
COPY deploy/docker/registry-placeholder/ /

FROM scratch AS registry-baked
COPY registry/ /

# hadolint ignore=DL3006
FROM registry-${REGISTRY} AS registry

# ------------------------------------------------------------------------------------------------ build
FROM ${BASE_IMAGE} AS build
ARG VARIANT=gpu
# Torch wheels: the CUDA 12.6 build for `gpu`, the CPU build for `cpu` (exact version from requirements.lock).
ARG TORCH_INDEX_GPU=https://download.pytorch.org/whl/cu126
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
# onnxruntime-gpu version for the gpu variant (empty: the onnxruntime version pinned in requirements.lock).
ARG ONNXRUNTIME_GPU_VERSION=
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The sources `pip install .` builds into the venv (the runtime stage keeps only the venv).
COPY pyproject.toml requirements.lock README.md ./
COPY mimicry/ mimicry/
COPY mimicry_cli/ mimicry_cli/
COPY serving/ serving/
COPY audit/ audit/
COPY training/ training/
# One pip resolve: pyproject's ranges constrained by the exact pins of requirements.lock (torch==X also admits
# the local builds X+cu126 / X+cpu of the torch index). Never onnxruntime and onnxruntime-gpu in one
# environment: the gpu variant swaps the CPU wheel for the GPU one at the same version.
RUN if [ "${VARIANT}" = "gpu" ]; then torch_index="${TORCH_INDEX_GPU}"; else torch_index="${TORCH_INDEX_CPU}"; fi \
 && pip install --extra-index-url "${torch_index}" --constraint requirements.lock . \
 && if [ "${VARIANT}" = "gpu" ]; then \
        ort="${ONNXRUNTIME_GPU_VERSION:-$(sed -n 's/^onnxruntime==//p' requirements.lock)}" \
     && pip uninstall -y onnxruntime \
     && pip install "onnxruntime-gpu==${ort}"; \
    else \
        pip check; \
    fi

# ---------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT=gpu
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="mimicry" \
      org.opencontainers.image.description="Inference-and-audit service for explainable chest X-ray models (research use; not for clinical decisions)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mimicry-project/mimicry" \
      org.opencontainers.image.vendor="mimicry engineers" \
      io.mimicry.variant="${VARIANT}"
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    MIMICRY_SERVE_REGISTRY=/models/registry \
    MIMICRY_REGISTRY=/models/registry
# The data directory of `mimicry audit watch` (SQLite history, reports) belongs to the runtime user: a Docker
# named volume mounted there starts as a copy of it (owner and mode included), so compose's `audit` service can
# write its history without a root init step (in Kubernetes the pod's fsGroup does the same for the PVC).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mimicry \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mimicry \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/mimicry /var/lib/mimicry/reports
COPY --from=build /opt/venv /opt/venv
COPY --from=registry --chown=10001:10001 / /models/registry/
WORKDIR /srv/mimicry
USER 10001:10001
EXPOSE 3000
# BentoML's liveness endpoint; python (always present) instead of curl (not installed).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4)"]
# Verify the registry's artifacts against their cards first (a tampered or incomplete registry exits 2 with the
# error, instead of a worker restart loop), then replace the shell with the server (signals reach it directly).
ENTRYPOINT ["sh", "-c", "python -m serving.health preflight && exec bentoml serve serving.service:MimicryService \"$@\"", "serve"]
CMD ["--host", "0.0.0.0", "--port", "3000"]
