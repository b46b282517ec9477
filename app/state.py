"""Everything the running service owns, built once in the lifespan from Settings.

Start-up order: load every model (fail fast), start the batchers, then warm up in the
background; `/readyz` answers 503 until the warm-up finished.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.batcher import BatchLimits
from app.errors import NotFound, NotReady
from app.metrics import Metrics
from app.model_folder import load_model_folder
from app.runtime import ModelRuntime, SessionConfig, warm_up_shapes
from app.service import ModelService
from app.settings import Settings
from app.tokenize import TextEncoder

log = logging.getLogger("app.state")

FAILURES_BEFORE_UNREADY = 3  # consecutive failed batches that make /readyz say 503 until one succeeds


class AppState:
    def __init__(self, settings: Settings, metrics: Metrics, services: dict[str, ModelService], executor: ThreadPoolExecutor):
        self.settings = settings
        self.metrics = metrics
        self.services = services
        self._executor = executor
        self._warm = False
        self._closing = False
        self._warm_up_task: asyncio.Task | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics) -> AppState:
        executor = ThreadPoolExecutor(max_workers=settings.tokenizer_threads, thread_name_prefix="tokenize")
        limits = BatchLimits(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        session = SessionConfig(
            precision=settings.precision,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        services = {}
        for task, path in (("text-classification", settings.classify_model), ("fill-mask", settings.fill_mask_model)):
            if path is not None:
                services[task] = _build_service(Path(path), task, limits, session, metrics, executor)
        return cls(settings, metrics, services, executor)

    async def start(self) -> None:
        for service in self.services.values():
            service.start()
        self._warm_up_task = asyncio.create_task(self._warm_up(), name="warm-up")

    async def _warm_up(self) -> None:
        for service in self.services.values():
            shapes = warm_up_shapes(
                self.settings.max_batch_size,
                self.settings.max_batch_tokens,
                service.folder.max_seq_len,
                on_cuda=service.runtime.provider == "cuda",
            )
            seconds = await service.runtime.warm_up(shapes, service.encoder.pad_id)
            log.info("%s warm in %.2f s over shapes %s", service.task, seconds, shapes)
        self._warm = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        """Refuse new work, answer everything accepted, then release the sessions."""
        self._closing = True
        self.metrics.ready.set(0)
        if self._warm_up_task is not None and not self._warm_up_task.done():
            self._warm_up_task.cancel()
        await asyncio.gather(*(service.stop() for service in self.services.values()))
        self._executor.shutdown(wait=True)

    def readiness(self) -> tuple[bool, str]:
        if self._closing:
            return False, "the server is shutting down"
        if not self._warm:
            return False, "models are warming up"
        failing = [s.task for s in self.services.values() if s.batcher.consecutive_failures >= FAILURES_BEFORE_UNREADY]
        if failing:
            return False, f"inference keeps failing for {', '.join(failing)}"
        return True, "ready"

    def service(self, task: str) -> ModelService:
        if self._closing:
            raise NotReady("the server is shutting down", headers={"Retry-After": "1"})
        if task not in self.services:
            setting = "ROBERTA_CLASSIFY_MODEL" if task == "text-classification" else "ROBERTA_FILL_MASK_MODEL"
            raise NotFound(f"no {task} model is loaded; start the server with {setting}")
        if not self._warm:
            raise NotReady("models are warming up", headers={"Retry-After": "1"})
        return self.services[task]


def _build_service(path, task, limits, session, metrics, executor) -> ModelService:
    folder = load_model_folder(path, task)
    encoder = TextEncoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    runtime = ModelRuntime(folder, session)
    metrics.provider.labels(task, task, runtime.precision, runtime.provider).set(1)
    return ModelService(folder, encoder, runtime, limits, metrics.for_model(task), executor)
