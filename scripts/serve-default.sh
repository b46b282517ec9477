#!/usr/bin/env bash
# Install the project, export the embedded models to ONNX (fp32 + INT8; skipped when up to date),
# and serve both endpoints on http://127.0.0.1:8000. Extra arguments go to `python -m app`
# (for example --port 9000 or --host 0.0.0.0). Serve your own export instead with ROBERTA_CLASSIFY_MODEL=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[cpu,export]'
for model in roberta-mini-sst2 roberta-mini-mlm; do
  .venv/bin/python -m export "models/$model" --output "build/onnx/$model" --quantize int8 --reuse
done
export ROBERTA_CLASSIFY_MODEL="${ROBERTA_CLASSIFY_MODEL:-build/onnx/roberta-mini-sst2}"
export ROBERTA_FILL_MASK_MODEL="${ROBERTA_FILL_MASK_MODEL:-build/onnx/roberta-mini-mlm}"
exec .venv/bin/python -m app "$@"
