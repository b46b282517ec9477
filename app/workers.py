"""Threads that run blocking calls for the event loop, with a cheaper hand-off than run_in_executor.

Every request makes at least one such call (tokenizing). `loop.run_in_executor` goes through a
concurrent.futures.Future (a Condition and its lock), chains it to an asyncio Future with callbacks
both ways, and copies its state across on the loop: about 32 µs of the event loop's CPU per call on
this machine. `Workers.run` hands the call over a SimpleQueue and resolves an asyncio Future with one
`call_soon_threadsafe`: about 12 µs. `submit` keeps the Executor interface for everything else.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("app.workers")


class Workers(Executor):
    """`threads` threads for calls, and with `long_threads` a lane of its own for calls known to be long
    (`run_long`), so that the others never wait behind one of those."""

    def __init__(
        self, threads: int, name: str, initializer: Callable[..., None] | None = None, initargs: tuple = (),
        *, long_threads: int = 0,
    ) -> None:
        self._jobs: SimpleQueue = SimpleQueue()
        self._long_jobs: SimpleQueue = SimpleQueue() if long_threads else self._jobs
        self._lock = threading.Lock()
        self._closed = False
        lanes = [(self._jobs, f"{name}_{index}") for index in range(max(1, threads))]
        lanes += [(self._long_jobs, f"{name}-long_{index}") for index in range(long_threads)]
        self._threads = [
            threading.Thread(target=self._work, args=(jobs, initializer, initargs), name=thread_name, daemon=True)
            for jobs, thread_name in lanes
        ]
        self._lanes = [jobs for jobs, _ in lanes]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """`function(*args, **kwargs)` on a worker thread; the future resolves on the calling event loop.

        Cancelling the future before the call starts skips it; a call that has started runs on, and its result
        is dropped.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put((function, args, kwargs, loop, future))
        return future

    def run_long(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """As `run`, on the lane for long calls (the same threads where there is none)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put((function, args, kwargs, loop, future), self._long_jobs)
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._put((fn, args, kwargs, None, future))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Calls already handed over still run (each thread takes its stop after them); then the threads end."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for jobs in self._lanes:
                    jobs.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _put(self, job: tuple, jobs: SimpleQueue | None = None) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker threads have been shut down")
            (jobs or self._jobs).put(job)

    def _work(self, jobs: SimpleQueue, initializer: Callable[..., None] | None, initargs: tuple) -> None:
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception:  # a thread's name is never worth the calls waiting for it
                log.exception("worker thread initializer failed; the thread serves without it")
        while (job := jobs.get()) is not None:
            function, args, kwargs, loop, future = job
            if loop is None:  # submit's concurrent Future
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(function(*args, **kwargs))
                    except BaseException as exc:
                        future.set_exception(exc)
                continue
            if future.done():  # cancelled while it waited: its caller has gone, and nobody reads the result
                continue
            try:
                outcome, failed = function(*args, **kwargs), False
            except BaseException as exc:
                outcome, failed = exc, True
            try:
                loop.call_soon_threadsafe(_settle, future, outcome, failed)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass


def _settle(future: asyncio.Future, outcome: Any, failed: bool) -> None:
    if future.done():  # cancelled meanwhile: the caller has gone
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
