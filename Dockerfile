# syntax=docker/dockerfile:1
# One image for every tollgate part (api, worker, flusher, migrate, rq-dashboard); compose.yaml
# picks the command. Two targets:
#   cpu, the default (last stage):   docker build -t tollgate .
#   gpu, CUDA runtime + torch:        docker build --target gpu -t tollgate:gpu .
# Both install the dependencies, read from pyproject.toml, in a layer of their own before the
# source is copied: a code change rebuilds only the small layers after it.
# Both run as an unprivileged user (uid 10001, numeric so that runAsNonRoot can check it)
# whose data folder, /data, holds the embedded defaults (local-folder storage in /data/files,
# the SQLite file): mount a volume there to keep them.

ARG PYTHON_IMAGE=python:3.11-slim
# torch's wheels bring their own CUDA and cuDNN libraries (hence no cudnn variant); the host
# needs an NVIDIA driver recent enough for them and the NVIDIA Container Toolkit (compose's
# `gpu` profile reserves the device).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# ---- gpu: the GPU worker (the `gpu` extra on a CUDA runtime base) ----------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py pyproject.toml gpu > requirements.txt \
 && pip install -r requirements.txt
COPY README.md ./
COPY lua ./lua
COPY workers ./workers
COPY service ./service
# Every dependency is in place already: this installs tollgate itself.
# hadolint ignore=DL3013
RUN pip install '.[gpu]'
COPY deploy/healthcheck.py /opt/tollgate/healthcheck.py
RUN useradd --system --uid 10001 --user-group --create-home tollgate \
 && mkdir -p /data/files && chown -R tollgate:tollgate /data
ENV TOLLGATE_STORAGE_DIR=/data/files TOLLGATE_DATABASE_URL=sqlite:////data/tollgate.db
WORKDIR /data
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/tollgate/healthcheck.py", "worker"]
# In-process batches: a CUDA context cannot cross a fork, and the model stays loaded.
CMD ["tollgate", "worker", "--no-fork"]

# ---- cpu: the default image: API, CPU worker, flusher, migrate, rq-dashboard ----------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py pyproject.toml dashboard > requirements.txt \
 && pip install -r requirements.txt
COPY README.md ./
COPY lua ./lua
COPY workers ./workers
COPY service ./service
# Every dependency is in place already: this installs tollgate itself.
# hadolint ignore=DL3013
RUN pip install '.[dashboard]'
COPY deploy/healthcheck.py /opt/tollgate/healthcheck.py
RUN useradd --system --uid 10001 --user-group --create-home tollgate \
 && mkdir -p /data/files && chown -R tollgate:tollgate /data
ENV TOLLGATE_STORAGE_DIR=/data/files TOLLGATE_DATABASE_URL=sqlite:////data/tollgate.db
WORKDIR /data
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/tollgate/healthcheck.py", "http", "http://127.0.0.1:8000/health"]
# One API process: the embedded defaults live in one process; with TOLLGATE_REDIS_URL set,
# add `--workers N` (compose does).
CMD ["tollgate", "api", "--host", "0.0.0.0", "--port", "8000"]
