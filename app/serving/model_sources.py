"""Which model folders the settings name, and under which names, read without loading any of them.

Kept apart from app.serving.repository, which builds the models (and so imports ONNX Runtime): `python -m app`
reads the folders first to lay out its processes (app.engine.onnx_runtime), and a pool's supervisor loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.serving.model_folder import ModelFolderError
from app.settings import MODEL_NAME, Settings

# The settings that name one model and make it the default of a task, as before there were repositories.
DEFAULT_SETTINGS = {"classify_model": "text-classification", "fill_mask_model": "fill-mask"}


@dataclass(frozen=True)
class ModelSource:
    name: str
    path: Path
    setting: str  # which setting named it, for messages
    default_for: str | None = None  # the task whose default model the setting makes it (and requires it to be)


def model_sources(settings: Settings) -> list[ModelSource]:
    sources: list[ModelSource] = []
    if settings.model_repository is not None:
        sources += _repository(Path(settings.model_repository))
    sources += [ModelSource(name, path, "ROBERTA_MODELS") for name, path in settings.named_models().items()]
    for field, task in DEFAULT_SETTINGS.items():
        path = getattr(settings, field)
        if path is not None:
            sources.append(ModelSource(Path(path).name, Path(path), f"ROBERTA_{field.upper()}", task))
    return _merged(sources)


def _repository(root: Path) -> list[ModelSource]:
    if not root.is_dir():
        raise ModelFolderError(f"ROBERTA_MODEL_REPOSITORY: {root} is not a folder")
    found = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not (folder / "manifest.json").is_file():
            continue  # hidden (an export in progress) or not an export
        if not MODEL_NAME.match(folder.name):
            raise ModelFolderError(f"ROBERTA_MODEL_REPOSITORY: {folder.name!r} cannot be a model name (letters, digits, '.', '_', '-')")
        found.append(ModelSource(folder.name, folder, "ROBERTA_MODEL_REPOSITORY"))
    if not found:
        raise ModelFolderError(f"ROBERTA_MODEL_REPOSITORY: {root} holds no export (a subfolder with a manifest.json)")
    return found


def _merged(sources: list[ModelSource]) -> list[ModelSource]:
    """One source per name: the same folder named twice is one model; two folders under one name are an error."""
    by_name: dict[str, ModelSource] = {}
    for source in sources:
        seen = by_name.get(source.name)
        if seen is None:
            by_name[source.name] = source
        elif seen.path.resolve() != source.path.resolve():
            raise ModelFolderError(
                f"model name {source.name!r} names two folders ({seen.path} by {seen.setting}, {source.path} by "
                f"{source.setting}); rename one"
            )
        elif source.default_for is not None:
            by_name[source.name] = source  # the same folder, now also a task's default
    return list(by_name.values())
