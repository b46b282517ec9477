#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and no package index, in under 8 minutes:
#   what the machine has (nvidia-smi, Python, the onnxruntime build and its providers); the serving stack installed
#   from wheels brought along; the CUDA provider really in use; FP16 parity against fp32 on the CPU; the service at
#   c=1/32/128 against ONNX Runtime alone on the GPU; packed against padded (when an export has it).
#
#   scripts/gpu-check.sh WHEELS_DIR EXPORT_DIR [TEXTS_FILE]
#
# Prepare it on a machine with an index (this one), then carry build/gpu-check-kit to the GPU machine:
#   scripts/gpu-check.sh --prepare        # wheels for Python 3.12 + the embedded classifier exported with --fp16 --packed
# The onnxruntime-gpu wheel is larger than one 64 MiB carry of the device tool: --prepare splits every wheel over
# 60 MB into parts (NAME.whl.part-aa, -ab, ...), and this script joins them again before installing.
# Output: the figures on stdout and in build/gpu-check/gpu-check.json (a run to keep goes to bench/results/<machine kind>/).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
KIT=$REPO/build/gpu-check-kit

if [ "${1:-}" = --prepare ]; then
  mkdir -p "$KIT/wheels"
  # What the GPU machine lacks: the runtime with CUDA, and the serving stack (its Python is 3.12).
  .venv/bin/pip download -q -d "$KIT/wheels" --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    "$(sed -n 's/^gpu = \["\(onnxruntime-gpu[^"]*\)"\]$/\1/p' pyproject.toml)" \
    starlette fastapi fastapi-offline uvicorn httptools uvloop pydantic pydantic-settings tokenizers prometheus-client httpx numpy
  .venv/bin/pip wheel -q --no-deps -w "$KIT/wheels" .
  for wheel in "$KIT"/wheels/*.whl; do
    if [ "$(stat -c %s "$wheel")" -gt 60000000 ]; then split -b 60M "$wheel" "$wheel.part-" && rm "$wheel"; fi
  done
  [ -f "$KIT/export/model.packed.fp16.onnx" ] || .venv/bin/python -m export models/roberta-mini-sst2 --output "$KIT/export" --fp16 --packed --force
  .venv/bin/python -c "
from bench.gpu import read_texts; from pathlib import Path
Path('$KIT/texts.txt').write_text('\n'.join(read_texts(None)) + '\n')"
  du -sh "$KIT"/* && exit 0
fi

WHEELS=${1:?usage: scripts/gpu-check.sh WHEELS_DIR EXPORT_DIR [TEXTS_FILE] (or --prepare)}
EXPORT=${2:?usage: scripts/gpu-check.sh WHEELS_DIR EXPORT_DIR [TEXTS_FILE]}
TEXTS=${3:-}
started=$SECONDS
step() { printf '\n== %s (%d s)\n' "$*" "$((SECONDS - started))"; }

step "the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || echo "no nvidia-smi: no NVIDIA driver"
python3 --version
python3 -c 'import onnxruntime as o; print("system onnxruntime", o.__version__, o.get_available_providers())' 2>/dev/null \
  || echo "no system onnxruntime"

step "the serving stack from $WHEELS (no index)"
for first in "$WHEELS"/*.whl.part-aa; do
  [ -e "$first" ] || continue
  whole=${first%.part-aa}
  cat "$whole".part-* >"$whole" && rm "$whole".part-*
done
python3 -m venv build/gpu-venv
# onnxruntime-gpu and onnxruntime share one import folder: this venv has only the GPU one. The CUDA and cuDNN
# libraries come from the system or from the nvidia-* wheels torch brought (onnxruntime.preload_dlls finds them).
build/gpu-venv/bin/pip install -q --no-index --find-links "$WHEELS" onnxruntime-gpu roberta-serve
build/gpu-venv/bin/python -c '
import onnxruntime as o
try:
    o.preload_dlls()
except Exception as exc:
    print("preload_dlls:", exc)
print("onnxruntime", o.__version__, o.get_device(), o.get_available_providers())'

step "CUDA in use, FP16 parity, ONNX Runtime alone, the service at c=1/32/128"
PYTHONPATH=$REPO timeout 420 build/gpu-venv/bin/python -m bench.gpu --folder "$EXPORT" ${TEXTS:+--texts "$TEXTS"} \
  --seconds "${SECONDS_PER_LEVEL:-15}" --output build/gpu-check
step "done"
