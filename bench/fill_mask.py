"""Fill-mask, old export against new, in one run: logits at every position vs logits at mask positions only.

    python -m bench.fill_mask              # roberta-base shape (random weights, real tokenizer) + the memory case
    python -m bench.fill_mask --quick      # the embedded roberta-mini-mlm, short levels

The old export is what `python -m export` wrote before format 2: optimum's masked-LM graph, whose
`logits` are `[batch, length, vocab]`. The new one takes `mask_positions` and returns `[masks, vocab]`.
Both folders hold the same checkpoint, tokenizer and manifest; the service serves each as it is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path


def legacy_export(new_folder: Path, checkpoint: Path, target: Path) -> Path:
    """A copy of an export folder whose fp32 graph is optimum's, with logits at every position (format 1)."""
    from export.convert import export_fp32

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(new_folder, target)
    for extra in ("model.int8.onnx", "model.fp16.onnx"):
        (target / extra).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        export_fp32(checkpoint, "fill-mask", Path(scratch), None)
        shutil.move(str(Path(scratch) / "model.onnx"), target / "model.onnx")
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest.update(format_version=1, inputs=["input_ids", "attention_mask"], quantization={})
    manifest["files"] = {"fp32": {"path": "model.onnx", "size_bytes": (target / "model.onnx").stat().st_size}}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return target
