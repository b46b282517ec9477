"""The models one process serves, by name: where they come from, how each is built, which answers what.

Models come from ROBERTA_MODEL_REPOSITORY (every subfolder holding an export, named by
the subfolder), ROBERTA_MODELS (name=folder,...), and the older ROBERTA_CLASSIFY_MODEL and
ROBERTA_FILL_MASK_MODEL (named by their folder; the default model of their task). Every
model gets its own tokenizer, ONNX Runtime session, batcher and queue. Start-up loads them
all or fails with one line naming the model that could not be loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from app.batcher import BatchLimits
from app.errors import NotFound
from app.metrics import Metrics
from app.model import ServedModel, resident_bytes
from app.model_folder import ModelFolderError, load_model_folder
from app.runtime import ModelRuntime, SessionConfig, spins
from app.settings import MODEL_NAME, Settings, parse_session_config
from app.tasks import Task
from app.threads import usable_cores
from app.tokenize import TextEncoder
from app.workers import Workers

log = logging.getLogger("app.repository")

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


class ModelRepository:
    def __init__(self, models: Mapping[str, ServedModel], tasks: Mapping[str, Task], defaults: Mapping[str, str]) -> None:
        self._models = dict(models)
        self._tasks = dict(tasks)
        self._defaults = dict(defaults)  # task name -> model name
        # Decided once: which tasks each model answers, its own first (a classifier of NLI labels answers zero-shot too).
        self._answers = {
            name: sorted((t for t in tasks.values() if t.serves(model.folder)), key=lambda t: t.name != model.task)
            for name, model in self._models.items()
        }

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics, executor: Workers, tasks: Mapping[str, Task]) -> ModelRepository:
        limits = BatchLimits(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            run_overhead_tokens=BatchLimits.run_overhead_tokens if settings.run_overhead_tokens is None else settings.run_overhead_tokens,
        )
        session = SessionConfig(
            precision=settings.precision,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            concurrent_runs=settings.concurrent_runs,
            inter_op_threads=settings.inter_op_threads,
            providers_chosen="providers" in settings.model_fields_set,
            extra=parse_session_config(settings.onnx_session_config),
            nice=settings.onnx_nice,
            idle=settings.onnx_scheduler == "idle",
            execution=settings.execution,
            # A process of a pool (app.supervisor) lays its threads out on its share of the cores.
            cores=max(1, usable_cores() // settings.processes) if settings.processes > 1 else None,
        )
        sources = model_sources(settings)
        models: dict[str, ServedModel] = {}
        try:
            for source in sources:
                try:
                    models[source.name] = _build_model(source, tasks, limits, session, metrics, executor, settings, len(sources))
                except ModelFolderError as exc:
                    raise ModelFolderError(f"model {source.name!r} ({source.setting}): {exc}") from exc
        except BaseException:
            for model in models.values():
                model.runtime.close()
            raise
        defaults = {}
        for task in tasks.values():
            named = [s.name for s in sources if s.default_for == task.name]
            serving = [name for name, model in models.items() if task.serves(model.folder)]
            if named or len(serving) == 1:
                defaults[task.name] = (named or serving)[0]
        return cls(models, tasks, defaults)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> ServedModel:
        if name not in self._models:
            raise NotFound(f"no model is named {name[:100]!r}; the models are: {', '.join(self._models)}")
        return self._models[name]

    def tasks_of(self, model: ServedModel) -> list[Task]:
        """The tasks a model answers, its own first."""
        return self._answers[model.name]

    def task_for(self, model: ServedModel, body: Mapping) -> Task:
        """Which of the model's tasks a raw request body is for: another task that claims it, else the model's own."""
        own, *others = self.tasks_of(model)
        return next((task for task in others if task.claims(body)), own)

    def default(self, task: str) -> ServedModel:
        if task in self._defaults:
            return self._models[self._defaults[task]]
        serving = [name for name, answers in self._answers.items() if any(t.name == task for t in answers)]
        if not serving:
            raise NotFound(f"no {task} model is loaded; the models are: {', '.join(self._models)}")
        raise NotFound(
            f"{len(serving)} {task} models are loaded ({', '.join(serving)}) and none is the default; "
            "POST to /models/{name} to choose one"
        )

    def defaults(self) -> dict[str, str]:
        return dict(self._defaults)


def _build_model(source: ModelSource, tasks, limits, session, metrics: Metrics, executor, settings: Settings,
                 models_loaded: int) -> ServedModel:
    before = resident_bytes()
    folder = load_model_folder(source.path, source.default_for)
    spin = spins(models_loaded, folder.hidden_size)
    # The evidence for both is the same: a wide model gains from threads working together on one run.
    solo = settings.solo_session == "on" or (settings.solo_session == "auto" and spin)
    session = replace(session, spin=spin, solo=solo)
    if folder.task not in tasks:
        raise ModelFolderError(f"{source.path} holds a '{folder.task}' model; this server serves {', '.join(tasks)}")
    try:
        encoder = TextEncoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise ModelFolderError(f"{folder.tokenizer_file} could not be read ({type(exc).__name__}); re-export the model") from exc
    runtime = ModelRuntime(folder, session, name=source.name)
    after = resident_bytes()
    model = ServedModel(
        source.name, folder, encoder, runtime, limits, metrics.for_model(source.name), executor,
        measure_overhead=settings.run_overhead_tokens is None,
        memory_bytes=after - before if before is not None and after is not None else None,
    )
    try:
        for task in tasks.values():
            if task.serves(folder):
                task.check(model)
    except BaseException:
        runtime.close()
        raise
    metrics.provider.labels(source.name, folder.task, runtime.precision, runtime.provider).set(1)
    metrics.queue_capacity.labels(source.name).set(limits.max_queue)
    return model
