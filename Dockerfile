# syntax=docker/dockerfile:1
# genserve container images (docs/deploy.md).
#
#   docker build -t genserve:cpu .                                   # CPU (the default target)
#   docker build --target cuda -t genserve:cuda .                    # NVIDIA GPU
#   docker build --build-arg BUILD_STORE=0 -t genserve:cpu-nostore . # store mounted at run time
#
# The install is the Makefile's (`make install`: torch pinned first, then the project);
# only the index torch comes from differs per target. The store is built once, on CPU,
# and copied into either image: its graphs do not depend on the device.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# 1: train, evaluate, export and publish the default zoo while building (about 10 min of
# CPU); 0: ship an empty store and mount one at /srv/genserve/model_store instead.
ARG BUILD_STORE=1

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# Debian's own version of make is all the Makefile needs; pinning it would only break
# the build at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/genserve
COPY Makefile pyproject.toml ./
# Empty TORCH_VERSION keeps the Makefile's pin, so there is one source of truth.
ARG TORCH_VERSION=
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# torch alone first: its layer survives source edits.
RUN make /opt/venv/.torch VENV=/opt/venv TORCH_INDEX_URL="$TORCH_CPU_INDEX_URL" \
        ${TORCH_VERSION:+TORCH_VERSION="$TORCH_VERSION"}
COPY genserve/ genserve/
COPY service/ service/
COPY training/ training/
RUN make install VENV=/opt/venv TORCH_INDEX_URL="$TORCH_CPU_INDEX_URL" \
        ${TORCH_VERSION:+TORCH_VERSION="$TORCH_VERSION"}

# --- the default store: built here, or an empty folder (BUILD_STORE=0) -----------------
FROM cpu-build AS store-1
RUN /opt/venv/bin/genserve build-store --store /store --checkpoints /tmp/checkpoints \
    && rm -rf /tmp/checkpoints \
    && /opt/venv/bin/genserve store verify --store /store

FROM scratch AS store-0
WORKDIR /store

# hadolint ignore=DL3006
FROM store-${BUILD_STORE} AS store

# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS cuda-base
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-base AS cuda-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/genserve
COPY Makefile pyproject.toml ./
ARG TORCH_VERSION=
# The CUDA build of torch; pick the index matching the base image's CUDA major version.
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG ONNXRUNTIME_GPU_VERSION=
RUN make /opt/venv/.torch VENV=/opt/venv TORCH_INDEX_URL="$TORCH_CUDA_INDEX_URL" \
        ${TORCH_VERSION:+TORCH_VERSION="$TORCH_VERSION"}
COPY genserve/ genserve/
COPY service/ service/
COPY training/ training/
# gpu-runtime swaps onnxruntime for onnxruntime-gpu (they install the same module).
RUN make install gpu-runtime VENV=/opt/venv TORCH_INDEX_URL="$TORCH_CUDA_INDEX_URL" \
        ${TORCH_VERSION:+TORCH_VERSION="$TORCH_VERSION"} \
        ${ONNXRUNTIME_GPU_VERSION:+ONNXRUNTIME_GPU_VERSION="$ONNXRUNTIME_GPU_VERSION"}

FROM cuda-base AS cuda
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GENSERVE_HOST=0.0.0.0 \
    GENSERVE_PORT=8000 \
    GENSERVE_MODEL_STORE=/srv/genserve/model_store \
    GENSERVE_DEVICE=cuda
# GENSERVE_DEVICE=cuda: a GPU image started without a GPU fails at once (exit 2) instead
# of quietly serving on CPU.
RUN useradd --system --create-home --uid 10001 --user-group genserve \
    && install -d -o genserve -g genserve /srv/genserve /srv/genserve/checkpoints
COPY --from=cuda-build /opt/venv /opt/venv
COPY --from=cuda-build /opt/genserve /opt/genserve
COPY --from=store --chown=genserve:genserve /store /srv/genserve/model_store
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /srv/genserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('GENSERVE_PORT', '8000'), timeout=4)"]
# Exec form: the server is PID 1 and receives SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["genserve"]
CMD ["serve", "--no-build"]

# ---------------------------------------------------------------------------------------
# Last, so a plain `docker build .` gives the CPU image.
FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GENSERVE_HOST=0.0.0.0 \
    GENSERVE_PORT=8000 \
    GENSERVE_MODEL_STORE=/srv/genserve/model_store
# The store folder belongs to the service user so that the compose `train` service can
# publish into a volume initialised from it; the server itself only reads.
RUN useradd --system --create-home --uid 10001 --user-group genserve \
    && install -d -o genserve -g genserve /srv/genserve /srv/genserve/checkpoints
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /opt/genserve /opt/genserve
COPY --from=store --chown=genserve:genserve /store /srv/genserve/model_store
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /srv/genserve
EXPOSE 8000
# Ready, not merely live: an orchestrator must not route to a server whose store failed
# verification. urlopen raises on a 503, so the check exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('GENSERVE_PORT', '8000'), timeout=4)"]
# Exec form: the server is PID 1 and receives SIGTERM itself (it drains, then exits 0).
# --no-build: an empty store leaves the server live but not ready rather than training
# inside a serving container.
ENTRYPOINT ["genserve"]
CMD ["serve", "--no-build"]
