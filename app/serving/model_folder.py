"""Read an exported model folder (written by `python -m export`): what it is, which files it has.

Startup fails here, with a message naming the folder, before any session is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

PRECISION_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
# The padding-free graphs (`python -m export --packed`, export/packed_graph.py), by precision.
PACKED_FILES = {"fp32": "model.packed.onnx", "int8": "model.packed.int8.onnx", "fp16": "model.packed.fp16.onnx"}
# OpenVINO's own files (`python -m export --openvino-int8`), by precision: the IR's .xml, its weights in the .bin beside
# it. OpenVINO's fp32 and bf16 read model.onnx.
OPENVINO_FILES = {"int8": "model.openvino-int8.xml"}


# roberta-base is 768 wide. From 512 up, each operator's work is large enough for threads to share one run (spinning
# between operators pays, a lone batch gains from every core) and one event loop keeps the cores busy; the 256-wide
# embedded model measured the other way on each count (docs/decisions/solo-session-and-spinning.md). app.engine.onnx_runtime
# decides by it.
WIDE_HIDDEN_SIZE = 512


def is_wide(hidden_size: int | None) -> bool:
    """Whether a model is as wide as roberta-base's family; a config that does not say counts as wide."""
    return hidden_size is None or hidden_size >= WIDE_HIDDEN_SIZE


# The layout of an export this service reads (export.manifest writes it). 2: fill-mask graphs take `mask_positions`.
MANIFEST_FORMAT = 2


class ModelFolderError(Exception):
    """The folder cannot be served; the message says which folder and what to do."""


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    task: str
    labels: tuple[str, ...]  # the output names, by id (config.json's id2label); empty for fill-mask
    label2id: dict[str, int]  # in the config's order, which is the order transformers' pipelines search it in
    problem_type: str | None
    max_seq_len: int
    files: dict[str, Path]  # precision -> ONNX file that exists
    manifest: dict
    hidden_size: int | None = None  # config.json's width of the encoder: how large each operator's work is
    pad_token_id: int = 1  # where RoBERTa's position ids start (transformers' padding_idx)
    packed_files: dict[str, Path] = field(default_factory=dict)  # precision -> padding-free ONNX file that exists
    openvino_files: dict[str, Path] = field(default_factory=dict)  # precision -> OpenVINO IR (.xml) whose .bin exists

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def tokenizer_config(self) -> dict:
        path = self.path / "tokenizer_config.json"
        return _read_json(path) if path.is_file() else {}


def load_model_folder(path: Path, expected_task: str | None = None) -> ModelFolder:
    """The export at `path`; `expected_task`, when given, is the task a setting needs it to be."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist; export one with `python -m export`")
    manifest = _read_json(path / "manifest.json")
    if manifest.get("format_version") != MANIFEST_FORMAT:
        raise ModelFolderError(f"{path} was written by another version of the exporter (manifest format "
                               f"{manifest.get('format_version')}, this service reads {MANIFEST_FORMAT}); re-export it "
                               "with `python -m export SOURCE --output FOLDER --reuse`")
    config = _read_json(path / "config.json")
    task = manifest.get("task")
    if not isinstance(task, str) or not task:
        raise ModelFolderError(f"{path}/manifest.json names no task; re-export it with `python -m export`")
    if expected_task is not None and task != expected_task:
        raise ModelFolderError(f"{path} holds a '{task}' model; this setting needs a '{expected_task}' export")
    if not (path / "tokenizer.json").is_file():
        raise ModelFolderError(f"{path} has no tokenizer.json; re-export it with `python -m export`")
    files = {name: path / filename for name, filename in PRECISION_FILES.items() if (path / filename).is_file()}
    if not files:
        raise ModelFolderError(f"{path} has no ONNX model file (model.onnx); re-export it with `python -m export`")
    labels: tuple[str, ...] = ()
    if manifest.get("labels") is not None:  # the exporter writes labels for the tasks that have them
        id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(len(id2label)))
        if not labels:
            raise ModelFolderError(f"{path}/config.json has no id2label; a {task} model needs its labels")
    label2id = {str(k): int(v) for k, v in (config.get("label2id") or {}).items()} or {v: i for i, v in enumerate(labels)}
    max_seq_len = int(manifest.get("max_seq_len") or 0)
    if max_seq_len <= 2:
        raise ModelFolderError(f"{path}/manifest.json has no usable max_seq_len")
    return ModelFolder(
        path=path,
        task=task,
        labels=labels,
        label2id=label2id,
        problem_type=config.get("problem_type"),
        max_seq_len=max_seq_len,
        files=files,
        manifest=manifest,
        hidden_size=_int_or_none(config.get("hidden_size")),
        pad_token_id=1 if _int_or_none(config.get("pad_token_id")) is None else config["pad_token_id"],
        packed_files={name: path / filename for name, filename in PACKED_FILES.items() if (path / filename).is_file()},
        openvino_files={name: path / filename for name, filename in OPENVINO_FILES.items()
                        if (path / filename).is_file() and (path / filename).with_suffix(".bin").is_file()},
    )


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing; is {path.parent} a folder written by `python -m export`?")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); re-export the model") from exc
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path} is not a JSON object; re-export the model")
    return value
