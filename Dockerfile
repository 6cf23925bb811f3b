# syntax=docker/dockerfile:1
# The project's two images, from one file:
#
#   docker build --target operator -t <registry>/mimo-operator:0.1.0 .   # the control plane (Kopf)
#   docker build --target worker   -t <registry>/mimo-worker:0.1.0 .     # every engine pod: SGLang + mimo-worker + Ray
#
# The worker's base is the SGLang image whose flags the planner writes. Its default is the pin in
# operator/mimo_operator/versions.py (SGLANG_IMAGE); tests/integration/test_dockerfile.py keeps the two equal.
ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.23
ARG PYTHON_IMAGE=python:3.11-slim

# --- operator ---------------------------------------------------------------------------------------
# A wheel of the operator package alone: worker/ is left out, so mimo_worker is not in the image.
FROM ${PYTHON_IMAGE} AS operator-wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN mkdir worker \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The operator's dependencies are pinned exactly in pyproject.toml; nothing else is installed.
COPY --from=operator-wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && groupadd --system --gid 10001 mimo \
 && useradd --system --uid 10001 --gid mimo --no-create-home --shell /usr/sbin/nologin mimo
# The chart runs it with a read-only root filesystem: the operator writes nothing to disk.
USER 10001:10001
EXPOSE 9090 8081
ENTRYPOINT ["mimo-operator"]

# --- worker -----------------------------------------------------------------------------------------
FROM ${SGLANG_IMAGE} AS worker
WORKDIR /opt/mimo
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY worker/ worker/
# SGLang's image brings its own CUDA build of torch: install the worker package with Ray (`worker`) and the
# router the operator deploys (`router`), never torch (no `fabric` extra), and fail the build if pip
# replaced the image's torch anyway.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Every version is pinned in pyproject.toml (the extras included), which pip reads from the local project.
# hadolint ignore=DL3013
RUN torch_before="$(python3 -c 'import torch; print(torch.__version__)')" \
 && python3 -m pip install --no-cache-dir ".[worker,router]" \
 && torch_after="$(python3 -c 'import torch; print(torch.__version__)')" \
 && if [ "$torch_before" != "$torch_after" ]; then echo "torch changed: $torch_before -> $torch_after" >&2; exit 1; fi \
 && groupadd --system --gid 10001 mimo \
 && useradd --system --uid 10001 --gid mimo --create-home --home-dir /home/mimo mimo
# The image stays root by default: gangs in network modes hostNetwork and rdma need IPC_LOCK and
# SYS_RESOURCE to pin RDMA memory, and Kubernetes grants added capabilities only to root processes.
# Pods over the plain pod network (and the simulated engine) can run as the mimo user (runAsUser 10001).
# hadolint ignore=DL3002
USER 0
EXPOSE 30000 8000 6379
ENTRYPOINT ["mimo-worker"]
