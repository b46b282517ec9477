"""Find the checkpoint (local folder or hub id), decide its task, fingerprint it.

Nothing here imports torch: every refusal that does not need the weights is made in
well under a second, before the slow part of an export starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from export.errors import HubUnreachable, SourceNotFound, TaskMismatch, UnsupportedModel

from app.tasks.specs import EXPORTED

TASKS = tuple(EXPORTED)  # the tasks an export is made for (app.tasks.specs: their heads, outputs, probes)
_HEAD_SUFFIX = {task: spec.head for task, spec in EXPORTED.items()}

# model_type -> how many position ids are reserved before the first token.
# RoBERTa-style models number positions from padding_idx + 1, so a 514-row table
# holds 512 tokens; DistilRoBERTa reports model_type "roberta".
SUPPORTED_MODEL_TYPES = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}

_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]

# Heads of the family that transformers knows, by class-name suffix, for the message that names one the service does
# not serve. A head with a task spec (app.tasks.specs) is served and never looked up here.
FAMILY_HEADS = {
    "ForMultipleChoice": "multiple choice",
    "ForCausalLM": "causal language modelling",
}
# A fast tokenizer is built from any of these (RoBERTa: vocab.json and merges.txt; XLM-R, CamemBERT: sentencepiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "sentencepiece.bpe.model", "tokenizer.model", "spiece.model")


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # a local folder holding config.json, weights and tokenizer
    source: str  # what the user asked for: a folder or a hub id
    revision: str | None  # the hub commit, when it came from the hub
    config: dict

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])


def resolve_checkpoint(model: str, revision: str | None = None) -> Checkpoint:
    """A local folder if one exists by that name, else a hub id (downloaded or from cache)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise SourceNotFound(
                f"{model} is not a checkpoint folder (no config.json); pass a folder written by save_pretrained"
            )
        return Checkpoint(path=path.resolve(), source=model, revision=None, config=_read_config(path))
    if _looks_like_path(model):
        raise SourceNotFound(f"no such folder: {model}; pass a folder written by save_pretrained or a hub id")
    snapshot = _download(model, revision)
    return Checkpoint(path=snapshot, source=model, revision=snapshot.name, config=_read_config(snapshot))


def check_supported(checkpoint: Checkpoint) -> None:
    if checkpoint.model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
        raise UnsupportedModel(
            f"{checkpoint.source} is a '{checkpoint.model_type or 'unknown'}' model; "
            f"supported model types: {supported} (RoBERTa, DistilRoBERTa, XLM-R, CamemBERT)"
        )


def check_tokenizer(checkpoint: Checkpoint) -> None:
    """The tokenizer must be saved beside the model: the export ships it and the service reads it."""
    if not any((checkpoint.path / name).is_file() for name in TOKENIZER_FILES):
        raise UnsupportedModel(
            f"{checkpoint.source} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
            "beside the model with tokenizer.save_pretrained(FOLDER) and export again"
        )


def resolve_task(checkpoint: Checkpoint, requested: str | None) -> str:
    """The task the checkpoint's head was trained for; a requested task must agree with it."""
    inferred = _task_from_architectures(checkpoint.architectures)
    unsupported = _unsupported_head(checkpoint.architectures) if inferred is None else None
    if unsupported is not None:
        head, what = unsupported
        raise TaskMismatch(f"{checkpoint.source} has a {head} head ({what}), which the service does not support yet; "
                           f"it serves checkpoints with a {', '.join('*' + s for s in _HEAD_SUFFIX.values())} head")
    if requested is None:
        if inferred is None:
            raise TaskMismatch(
                f"cannot tell the task from architectures={checkpoint.architectures}; "
                f"pass --task ({', '.join(TASKS)})"
            )
        return inferred
    if requested not in TASKS:
        raise TaskMismatch(f"unknown task '{requested}'; choose {', '.join(TASKS)}")
    if checkpoint.architectures and inferred != requested:
        head = checkpoint.architectures[0]
        hint = f"pass --task {inferred}" if inferred else f"export a checkpoint with a *{_HEAD_SUFFIX[requested]} head"
        raise TaskMismatch(f"--task {requested} does not match the checkpoint's head ({head}); {hint}")
    return requested


def default_max_seq_len(checkpoint: Checkpoint) -> int:
    reserved = SUPPORTED_MODEL_TYPES.get(checkpoint.model_type, 0)
    positions = int(checkpoint.config.get("max_position_embeddings", 514))
    pad = int(checkpoint.config.get("pad_token_id", 1))
    return positions - (pad + 1) if reserved else positions


def fingerprint(folder: Path) -> str:
    """sha256 over every file's relative path and contents, so a changed checkpoint changes it."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder)):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _task_from_architectures(architectures: list[str]) -> str | None:
    for task, suffix in _HEAD_SUFFIX.items():
        if any(name.endswith(suffix) for name in architectures):
            return task
    return None


def _unsupported_head(architectures: list[str]) -> tuple[str, str] | None:
    for name in architectures:
        for suffix, what in FAMILY_HEADS.items():
            if name.endswith(suffix):
                return name, what
    return None


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceNotFound(f"{folder / 'config.json'} is not readable JSON ({exc})") from exc


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else the user typed was meant as a path.
    return model.startswith((".", "/", "~")) or model.endswith("/") or model.count("/") > 1 or "\\" in model


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _download(repo_id: str, revision: str | None) -> Path:
    # Imported here: huggingface_hub reads its endpoint and offline flags from the environment at import.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout

    try:
        folder = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=_WEIGHT_PATTERNS, etag_timeout=10)
    except HFValidationError as exc:
        raise SourceNotFound(f"no such folder, and not a hub id: {repo_id}") from exc
    except RepositoryNotFoundError as exc:
        raise SourceNotFound(f"no local folder '{repo_id}' and no such model on the hub") from exc
    except RevisionNotFoundError as exc:
        raise SourceNotFound(f"the hub model '{repo_id}' has no revision '{revision}'") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, RequestsConnectionError, Timeout) as exc:
        raise HubUnreachable(
            f"'{repo_id}' is not a local folder and cannot reach the hub to download it; pass a local folder"
        ) from exc
    return Path(folder)
