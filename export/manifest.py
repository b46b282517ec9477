"""manifest.json: what was exported, from what, with which tools, and how close it is.

The service reads `task`, `labels`, `max_seq_len` and `files` from it; people read the rest.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from app.serving.model_folder import MANIFEST_FORMAT
from export.source import file_sha256

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = MANIFEST_FORMAT  # the service refuses any other (app.serving.model_folder)

_TOOLS = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_entry(path: Path) -> dict:
    return {"size_bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_manifest(folder: Path, content: dict) -> Path:
    document = {"format_version": FORMAT_VERSION, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    document.update(content)
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
