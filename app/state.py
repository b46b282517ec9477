"""Everything the running service owns, built once in the lifespan from Settings.

Start-up order: load every model (fail fast), start the batchers, then warm up in the
background; `/readyz` answers 503 until the warm-up finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from app.batcher import BatchLimits
from app.errors import NotFound, NotReady
from app.metrics import Metrics
from app.model_folder import ModelFolderError, load_model_folder
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
        self._draining = False  # readiness says 503; requests are still admitted (shutdown_delay_s)
        self._closing = False  # new requests get 503 too
        self._active = 0  # admitted requests not yet answered
        self._idle = asyncio.Event()  # set while nothing is admitted: what a drain waits for
        self._idle.set()
        self._warm_up_task: asyncio.Task | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics) -> AppState:
        executor = ThreadPoolExecutor(max_workers=settings.tokenizer_threads, thread_name_prefix="tokenize")
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
            inter_op_threads=settings.inter_op_threads,
            providers_chosen="providers" in settings.model_fields_set,
        )
        services = {}
        for task, path in (("text-classification", settings.classify_model), ("fill-mask", settings.fill_mask_model)):
            if path is not None:
                services[task] = _build_service(
                    Path(path), task, limits, session, metrics, executor, settings.max_mask_answers
                )
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
            if self.settings.run_overhead_tokens is None:
                overhead = await service.runtime.measure_run_overhead(service.encoder.pad_id, self.settings.max_batch_tokens)
                service.batcher.limits = replace(service.batcher.limits, run_overhead_tokens=overhead)
                log.info("%s: one run costs as much as %.0f tokens of work", service.task, overhead)
        self._warm = True
        self.metrics.ready.set(1)

    async def drain(self, delay_s: float, deadline: float) -> bool:
        """The graceful half of SIGTERM: go unready, stop admitting after `delay_s`, wait for admitted requests.

        Returns False if requests were still running at `deadline` (time.monotonic()).
        """
        self._draining = True
        self.metrics.ready.set(0)
        log.info("draining: readiness is 503; %d requests in flight", self._active)
        await asyncio.sleep(delay_s)
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("drain timed out with %d requests still running", self._active)
        return self._active == 0

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The threads for work too heavy for the event loop: tokenizing, postprocessing, rendering big answers."""
        return self._executor

    @property
    def draining(self) -> bool:
        """True from the first signal on: answers carry `Connection: close` so clients move elsewhere."""
        return self._draining or self._closing

    async def stop(self) -> None:
        """Refuse new work, answer everything accepted, then release the sessions."""
        self._draining = self._closing = True
        self.metrics.ready.set(0)
        if self._warm_up_task is not None and not self._warm_up_task.done():
            self._warm_up_task.cancel()
        await asyncio.gather(*(service.stop() for service in self.services.values()))
        self._executor.shutdown(wait=True)

    def readiness(self) -> tuple[bool, str]:
        if self._draining or self._closing:
            return False, "the server is shutting down"
        if not self._warm:
            return False, "models are warming up"
        failing = [s.task for s in self.services.values() if s.batcher.consecutive_failures >= FAILURES_BEFORE_UNREADY]
        if failing:
            return False, f"inference keeps failing for {', '.join(failing)}"
        return True, "ready"

    @contextmanager
    def admit(self, task: str) -> Iterator[ModelService]:
        """The service for `task`, counted as in flight until the block ends, so a drain knows what to wait for."""
        service = self.service(task)
        self._active += 1
        self._idle.clear()
        try:
            yield service
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._active

    def service(self, task: str) -> ModelService:
        if self._closing:
            raise NotReady("the server is shutting down", headers={"Retry-After": "1"})
        if task not in self.services:
            setting = "ROBERTA_CLASSIFY_MODEL" if task == "text-classification" else "ROBERTA_FILL_MASK_MODEL"
            raise NotFound(f"no {task} model is loaded; start the server with {setting}")
        if not self._warm:
            raise NotReady("models are warming up", headers={"Retry-After": "1"})
        return self.services[task]


def _build_service(path, task, limits, session, metrics, executor, max_mask_answers) -> ModelService:
    folder = load_model_folder(path, task)
    try:
        encoder = TextEncoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise ModelFolderError(f"{folder.tokenizer_file} could not be read ({type(exc).__name__}); re-export the model") from exc
    runtime = ModelRuntime(folder, session)
    if task == "fill-mask" and not runtime.takes_positions:
        log.warning(
            "%s is an older fill-mask export that computes logits at every position (memory grows with batch x "
            "length x vocabulary); re-export it with `python -m export` for logits at mask positions only", path
        )
    metrics.provider.labels(task, task, runtime.precision, runtime.provider).set(1)
    return ModelService(folder, encoder, runtime, limits, metrics.for_model(task), executor, max_mask_answers=max_mask_answers)
