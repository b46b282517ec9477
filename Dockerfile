# syntax=docker/dockerfile:1
#
# Targets (docker build --target ...):
#   cpu (default)  slim runtime with onnxruntime, serving the embedded models exported at build time
#   gpu            CUDA 12 + cuDNN 9 runtime with onnxruntime-gpu (falls back to CPU without a GPU)
#   export         torch + the exporter; only a build stage, never shipped
#
# Arguments:
#   BASE_IMAGE       Debian-like image with python3 (>= 3.10) and python3-venv; a local one where registries are out of reach
#   GPU_BASE_IMAGE   CUDA runtime image with cuDNN for the gpu target
#   PIP_CERT         path of a CA bundle for pip behind a TLS-intercepting proxy; mount the file at build time
#                    (podman build -v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro --build-arg PIP_CERT=/host-ca.crt)
#                    so that only its path, never the certificate, is seen by the build
#   TORCH_INDEX      extra index for a CPU-only torch in the export stage; empty to use PyPI / PIP_FIND_LINKS only
#   PIP_FIND_LINKS   local wheel folder for pip (mounted at build time), for offline builds
#   EXPORT_FLAGS     how the embedded models are exported (default "--quantize int8"; add --fp16 for the gpu target)
#   SERVE_EXTRAS     the cpu target's install extras (default "cpu,otel": ONNX Runtime and OpenTelemetry's traces;
#                    "cpu,otel,openvino" adds OpenVINO, about 180 MB installed, which serves bf16 on CPUs that
#                    compute in it)
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG GPU_BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------- export: checkpoints -> verified ONNX (fp32 + INT8)
FROM ${BASE_IMAGE} AS export
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ app/
COPY export/ export/
RUN python3 -m venv /opt/export \
 && PIP_CERT="${PIP_CERT}" PIP_FIND_LINKS="${PIP_FIND_LINKS}" /opt/export/bin/pip install \
      ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[cpu,export]"
COPY models/roberta-mini-sst2/ models/roberta-mini-sst2/
COPY models/roberta-mini-mlm/ models/roberta-mini-mlm/
# INT8 for CPUs; the gpu target adds --fp16 (docker-compose.gpu.yml passes it).
ARG EXPORT_FLAGS="--quantize int8"
# EXPORT_FLAGS is a list of flags: word splitting is wanted.
# hadolint ignore=SC2086
RUN for model in roberta-mini-sst2 roberta-mini-mlm; do \
      /opt/export/bin/python -m export "models/$model" --output "/models/$model" $EXPORT_FLAGS || exit 1; \
    done

# ---------------------------------------------------------------- cpu-build: the serving venv, no torch
FROM ${BASE_IMAGE} AS cpu-build
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
ARG SERVE_EXTRAS=cpu,otel
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ app/
RUN python3 -m venv /opt/venv \
 && PIP_CERT="${PIP_CERT}" PIP_FIND_LINKS="${PIP_FIND_LINKS}" /opt/venv/bin/pip install ".[${SERVE_EXTRAS}]" \
 && /opt/venv/bin/pip uninstall -y pip setuptools

# ---------------------------------------------------------------- cpu: the default runtime
FROM ${BASE_IMAGE} AS cpu
LABEL org.opencontainers.image.title="roberta-serve (CPU)" \
      org.opencontainers.image.description="Dynamic-batching RoBERTa inference on ONNX Runtime"
# Nothing is written at run time: the root filesystem may be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ROBERTA_HOST=0.0.0.0 ROBERTA_PORT=8000 \
    ROBERTA_CLASSIFY_MODEL=/models/roberta-mini-sst2 \
    ROBERTA_FILL_MASK_MODEL=/models/roberta-mini-mlm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin roberta
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=export /models /models
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "app"]

# ---------------------------------------------------------------- gpu-build: onnxruntime-gpu venv on the CUDA image
# It repeats cpu-build on purpose: a venv is tied to its base's Python, so it cannot be shared across bases.
FROM ${GPU_BASE_IMAGE} AS gpu-build
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ app/
RUN python3 -m venv /opt/venv \
 && PIP_CERT="${PIP_CERT}" PIP_FIND_LINKS="${PIP_FIND_LINKS}" /opt/venv/bin/pip install ".[gpu,otel]" \
 && /opt/venv/bin/pip uninstall -y pip setuptools

# ---------------------------------------------------------------- gpu: CUDA runtime (FP16 when exported with --fp16)
FROM ${GPU_BASE_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin roberta
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ROBERTA_HOST=0.0.0.0 ROBERTA_PORT=8000 ROBERTA_PROVIDERS=cuda,cpu \
    ROBERTA_CLASSIFY_MODEL=/models/roberta-mini-sst2 \
    ROBERTA_FILL_MASK_MODEL=/models/roberta-mini-mlm
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=export /models /models
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "app"]

# The last stage is what a plain `docker build .` produces: the CPU runtime.
FROM cpu AS default
