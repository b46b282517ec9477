"""Everything the running service owns, built once in the lifespan from Settings.

Start-up order: load every model (fail fast, naming the model), start the batchers,
then warm up in the background; `/readyz` answers 503 until every model is warm. This
object admits requests and drains them; the models themselves live in the repository.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import InvalidInput, NotReady, PayloadTooLarge, TooManyInputs
from app.serving.metrics import Metrics
from app.serving.model import ServedModel
from app.serving.repository import ModelRepository
from app.serving.tracing import Tracing, build_tracing
from app.settings import Settings, opentelemetry_environment
from app.tasks.base import Cost, Task
from app.engine.threads import ThreadPool

log = logging.getLogger("app.serving.state")

FAILURES_BEFORE_UNREADY = 3  # consecutive failed batches that make /readyz say 503 until one succeeds


class AppState:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        tasks: dict[str, Task],
        models: ModelRepository,
        executor: ThreadPool,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing or Tracing()
        self.metrics = metrics
        self.tasks = tasks
        self.models = models
        self._executor = executor
        self._warm = False
        self._draining = False  # readiness says 503; requests are still admitted (shutdown_delay_s)
        self._closing = False  # new requests get 503 too
        self._active = 0  # admitted requests not yet answered
        self._idle = asyncio.Event()  # set while nothing is admitted: what a drain waits for
        self._idle.set()
        self._warm_up_task: asyncio.Task | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics, tasks: dict[str, Task]) -> AppState:
        """`tasks`: app.tasks.build_tasks(settings), every task the service answers. Tracing as OpenTelemetry's
        variables ask (TracingError, before any model loads, for what it cannot do)."""
        tracing = build_tracing(opentelemetry_environment())
        # A lane of its own for tokenizing that cannot be cut into pieces (app.serving.model.ServedModel.tokens): a long
        # unbroken text, or any long one for a tokenizer with a normalizer. Other requests never queue behind it.
        executor = ThreadPool(1, "tokenize", long_threads=1)
        try:
            models = ModelRepository.build(settings, metrics, executor, tasks, tracing)
        except BaseException:
            executor.shutdown(wait=False)
            tracing.shutdown()
            raise
        return cls(settings, metrics, tasks, models, executor, tracing)

    async def start(self, *, warm_first: bool = False) -> None:
        """Starts the batchers and the warm-up; with `warm_first`, returns once warm (a process of a pool, which
        listens only when it can answer, since a probe reaching another process says nothing about this one)."""
        for model in self.models:
            model.start()
        self._warm_up_task = asyncio.create_task(self._warm_up(), name="warm-up")
        if warm_first:
            await self._warm_up_task

    async def _warm_up(self) -> None:
        for model in self.models:  # one at a time: each is timed, and measured, alone
            await model.warm_up()
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
    def executor(self) -> ThreadPool:
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
        await asyncio.gather(*(model.stop() for model in self.models))
        self._executor.shutdown(wait=True)
        self.tracing.shutdown()  # the last spans sent

    def readiness(self) -> tuple[bool, str]:
        if self._draining or self._closing:
            return False, "the server is shutting down"
        if not self._warm:
            return False, "models are warming up"
        failing = [model.name for model in self.models if not self.healthy(model)]
        if failing:
            return False, f"inference keeps failing for {', '.join(failing)}"
        return True, "ready"

    @staticmethod
    def healthy(model: ServedModel) -> bool:
        return model.batcher.consecutive_failures < FAILURES_BEFORE_UNREADY

    def model(self, name: str | None = None, *, task: str | None = None) -> ServedModel:
        """The model named `name`, or the default model of `task`; 503 while warming up or closing, 404 if none."""
        if self._closing:
            raise NotReady("the server is shutting down", headers={"Retry-After": "1"})
        model = self.models.get(name) if name is not None else self.models.default(task)
        if not self._warm:
            raise NotReady("models are warming up", headers={"Retry-After": "1"})
        return model

    @contextmanager
    def admit(self, model: ServedModel, cost: Cost, counted: str = "inputs") -> Iterator[None]:
        """Whether a request's work may start, decided here for every request: its cost, counted before anything
        of it is built, against the ceilings; the server not closing; room in the model's queue (refused before
        tokenizing: overload should cost little). Admitted, it counts as in flight until the block ends, so a
        drain knows what to wait for. `counted` names what `cost.sequences` counts, for the 413's message."""
        settings = self.settings
        if cost.sequences == 0:
            raise InvalidInput("inputs is an empty list; send at least one text")
        if cost.sequences > settings.max_inputs:
            raise TooManyInputs(f"{cost.sequences} {counted} in one request; at most {settings.max_inputs} are allowed")
        if cost.characters > settings.max_body_bytes:
            raise PayloadTooLarge(f"this request makes {cost.characters} characters of text to tokenize (all its task "
                                  f"builds from the body); at most {settings.max_body_bytes} are allowed: send less text")
        if self._closing:
            raise NotReady("the server is shutting down", headers={"Retry-After": "1"})
        model.batcher.check_room(cost.sequences)
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._active
