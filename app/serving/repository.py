"""The models one process serves, by name: where they come from, how each is built, which answers what.

Models come (app.serving.model_sources) from ROBERTA_MODEL_REPOSITORY (every subfolder holding an export, named by
the subfolder), ROBERTA_MODELS (name=folder,...), and the older ROBERTA_CLASSIFY_MODEL and
ROBERTA_FILL_MASK_MODEL (named by their folder; the default model of their task). Every
model gets its own tokenizer, engine (ONNX Runtime or OpenVINO), batcher and queue. Start-up loads them
all or fails with one line naming the model that could not be loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace

from app.engine.batcher import BatchLimits
from app.errors import NotFound
from app.serving.metrics import Metrics
from app.serving.model import ServedModel, resident_bytes
from app.serving.model_folder import ModelFolderError, load_model_folder
from app.serving.model_sources import ModelSource, model_sources
from app.serving.tracing import Tracing
from app.engine.backends import open_engine
from app.engine.engine import EngineConfig
from app.engine.onnx_runtime import spins
from app.settings import Settings
from app.tasks.base import Task
from app.engine.threads import usable_cores
from app.engine.tokenize import TextEncoder
from app.engine.threads import ThreadPool

log = logging.getLogger("app.serving.repository")


class ModelRepository:
    def __init__(self, models: Mapping[str, ServedModel], tasks: Mapping[str, Task], defaults: Mapping[str, str]) -> None:
        self._models = dict(models)
        self._defaults = dict(defaults)  # task name -> model name
        # Decided once: which tasks each model answers, its own first (a classifier of NLI labels answers zero-shot too).
        self._answers = {
            name: sorted((t for t in tasks.values() if t.serves(model.folder)), key=lambda t: t.name != model.task)
            for name, model in self._models.items()
        }

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics, executor: ThreadPool, tasks: Mapping[str, Task],
              tracing: Tracing | None = None) -> ModelRepository:
        limits = BatchLimits(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        session = EngineConfig(
            backend=settings.backend,
            precision=settings.precision,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            concurrent_runs=settings.concurrent_runs,
            providers_chosen="providers" in settings.model_fields_set,
            idle=settings.onnx_scheduler == "idle",
            execution=settings.execution,
            # A process of a pool (app.serving.supervisor) lays its threads out on its share of the cores.
            cores=max(1, usable_cores() // settings.processes) if settings.processes > 1 else None,
        )
        sources = model_sources(settings)
        models: dict[str, ServedModel] = {}
        try:
            for source in sources:
                try:
                    models[source.name] = _build_model(source, tasks, limits, session, metrics, executor, settings, len(sources),
                                                          tracing)
                except ModelFolderError as exc:
                    raise ModelFolderError(f"model {source.name!r} ({source.setting}): {exc}") from exc
        except BaseException:
            for model in models.values():
                model.engine.close()
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

    def answered(self) -> set[str]:
        """The tasks some model answers (a route whose body names its model serves those)."""
        return {task.name for tasks in self._answers.values() for task in tasks}

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
                 models_loaded: int, tracing: Tracing | None) -> ServedModel:
    before = resident_bytes()
    folder = load_model_folder(source.path, source.default_for)
    spin = spins(models_loaded, folder.hidden_size)
    # The evidence for both is the same: a wide model gains from threads working together on one run.
    session = replace(session, spin=spin, solo=spin)
    if folder.task not in tasks:
        raise ModelFolderError(f"{source.path} holds a '{folder.task}' model; this server serves {', '.join(tasks)}")
    try:
        encoder = TextEncoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise ModelFolderError(f"{folder.tokenizer_file} could not be read ({type(exc).__name__}); re-export the model") from exc
    engine = open_engine(folder, session, source.name)
    after = resident_bytes()
    model = ServedModel(
        source.name, folder, encoder, engine, limits, metrics.for_model(source.name), executor,
        memory_bytes=after - before if before is not None and after is not None else None, tracing=tracing,
    )
    try:
        for task in tasks.values():
            if task.serves(folder):
                task.check(model)
    except BaseException:
        engine.close()
        raise
    metrics.provider.labels(source.name, folder.task, engine.backend, engine.precision, engine.device).set(1)
    metrics.queue_capacity.labels(source.name).set(limits.max_queue)
    return model
