#!/usr/bin/env bash
# Install the project into .venv, export the embedded models to ONNX (fp32 + INT8; skipped when up to date),
# and serve both endpoints on http://127.0.0.1:8000. Extra arguments go to `python -m app`
# (for example --port 9000 or --host 0.0.0.0). Serve your own export instead with ROBERTA_CLASSIFY_MODEL=DIR.
#
# torch is needed only to export. PyPI's torch for Linux is the CUDA build (several GB); the CPU build
# (about 190 MB) comes from TORCH_INDEX when that index answers. TORCH_INDEX= (empty) skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
if ! .venv/bin/python -c "import torch" 2>/dev/null && [ -n "$TORCH_INDEX" ]; then
  if .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" "$TORCH_INDEX" 2>/dev/null; then
    .venv/bin/pip install -q --extra-index-url "$TORCH_INDEX" "torch==2.13.0"
  else
    echo "note: $TORCH_INDEX does not answer; torch comes from the package index as configured" >&2
  fi
fi
# OpenVINO (about 60 MB to download): on a CPU that computes in bf16 the embedded models run on it (ROBERTA_BACKEND=auto).
.venv/bin/pip install -q -e '.[cpu,openvino,export]'
for model in roberta-mini-sst2 roberta-mini-mlm; do
  .venv/bin/python -m export "models/$model" --output "build/onnx/$model" --quantize int8 --reuse
done
export ROBERTA_CLASSIFY_MODEL="${ROBERTA_CLASSIFY_MODEL:-build/onnx/roberta-mini-sst2}"
export ROBERTA_FILL_MASK_MODEL="${ROBERTA_FILL_MASK_MODEL:-build/onnx/roberta-mini-mlm}"
exec .venv/bin/python -m app "$@"
