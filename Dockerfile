# syntax=docker/dockerfile:1
# unirank images. Targets:
#   runtime (default)  the service, no torch; a bundle at /bundle (it waits for one), or UNIRANK_BUNDLE=s3://...
#   demo               runtime with the demo bundle trained in the build (what docker-compose.yml runs)
#   baked              runtime with a bundle of yours baked in: --build-arg BUNDLE_DIR=artifacts/mine
#   trainer            torch + the whole CLI (data, train, study, bench) for pipeline jobs
#   gpu                the service on CUDA: onnxruntime-gpu on NVIDIA's CUDA runtime + cuDNN
#   gpu-demo           gpu with the demo bundle (what the k8s gpu overlay runs)
#   loadtest           locust with loadtest/locustfile.py and the demo bundle's tables
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# --- the project's sources, once, for every stage that installs them -----------------------------------
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY unirank /src/unirank
COPY service /src/service
COPY model_export /src/model_export
COPY loadtest /src/loadtest

# --- the service's virtualenv (no torch) -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS service-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY --from=source /src ./
RUN /opt/venv/bin/pip install ".[remote]"

# --- runtime: slim, non-root, health-checked ----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    UNIRANK_HOST=0.0.0.0 \
    UNIRANK_PORT=8000 \
    UNIRANK_WORKERS=2 \
    UNIRANK_BUNDLE=/bundle
RUN useradd --system --uid 10001 --create-home unirank
COPY --from=service-venv /opt/venv /opt/venv
USER 10001
WORKDIR /home/unirank
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('UNIRANK_PORT', '8000')}/healthz\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["unirank", "serve"]

# --- trainer: torch (CPU wheel) and the whole CLI ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS trainer
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY --from=source /src ./
# versions are pinned in pyproject.toml (torch==2.13.0, the CPU wheel)
# hadolint ignore=DL3013
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[train,bench]"
ENTRYPOINT ["unirank"]

FROM trainer AS demo-bundle
RUN unirank build-demo --out /bundle --data /tmp/demo-data && rm -rf /tmp/demo-data

FROM runtime AS demo
COPY --from=demo-bundle --chown=10001 /bundle /bundle

FROM runtime AS baked
ARG BUNDLE_DIR=artifacts/demo
COPY --chown=10001 ${BUNDLE_DIR} /bundle

FROM trainer AS loadtest
COPY --from=demo-bundle /bundle/tables /bundle/tables
ENV UNIRANK_BUNDLE=/bundle
ENTRYPOINT ["locust", "-f", "/src/loadtest/locustfile.py"]

# --- gpu: onnxruntime-gpu (CUDA execution provider) on the CUDA runtime with cuDNN --------------------
FROM ${CUDA_IMAGE} AS gpu
# the version measured in docs/gpu.md; built against CUDA 13 and cuDNN 9
ARG ORT_GPU_VERSION=1.31.1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    UNIRANK_HOST=0.0.0.0 UNIRANK_PORT=8000 UNIRANK_WORKERS=4 UNIRANK_BUNDLE=/bundle \
    UNIRANK_EXECUTION_PROVIDER=cuda UNIRANK_MICRO_BATCH=true
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --system --uid 10001 --create-home unirank
WORKDIR /src
COPY --from=source /src ./
# the CPU onnxruntime comes with the service's dependencies; the GPU build replaces it (the project and
# its extra are this source tree, ranges in pyproject.toml)
# hadolint ignore=DL3013
RUN pip install ".[remote]" \
    && pip uninstall -y onnxruntime \
    && pip install "onnxruntime-gpu==${ORT_GPU_VERSION}"
USER 10001
WORKDIR /home/unirank
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('UNIRANK_PORT', '8000')}/healthz\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["unirank", "serve"]

FROM gpu AS gpu-demo
COPY --from=demo-bundle --chown=10001 /bundle /bundle

# the default target
FROM runtime
