"""The threads the app starts for blocking calls (tokenizing, model runs, rendering big answers), their native
names and scheduling, and how many cores the process may use.

Python names its threads only for itself; the kernel sees every one as "python". Giving the OS thread the same
name lets `top -H`, py-spy and the benchmark's CPU account (bench/wrk.py) tell the tokenizer from the thread
that runs a model. ONNX Runtime's own pool threads keep the name of the thread that created them.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("app.engine.threads")

_PR_SET_NAME = 15  # prctl option; Linux keeps the first 15 bytes


class ThreadPool:
    """`threads` named threads for blocking calls; with `long_threads`, a lane of its own for calls known to be long
    (`run_long`), so that the others never wait behind one of those. A call whose caller has gone before it starts
    is skipped.

    `run` hands a call over a SimpleQueue and resolves an asyncio Future with one call_soon_threadsafe, where
    asyncio's run_in_executor makes a concurrent Future (a Condition and its lock) and chains it to an asyncio
    Future with callbacks both ways: every request makes such a call, on the event loop
    (docs/decisions/thread-hand-off.md).
    """

    def __init__(self, threads: int, name: str, *, idle: bool = False, long_threads: int = 0) -> None:
        self._jobs: SimpleQueue = SimpleQueue()
        self._long_jobs: SimpleQueue = SimpleQueue() if long_threads else self._jobs
        self._lock = threading.Lock()
        self._closed = False
        lanes = [(self._jobs, f"{name}_{index}") for index in range(max(1, threads))]
        lanes += [(self._long_jobs, f"{name}-long_{index}") for index in range(long_threads)]
        self._threads = [
            threading.Thread(target=self._work, args=(jobs, idle), name=thread_name, daemon=True)
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

    def shutdown(self, wait: bool = True) -> None:
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

    def _work(self, jobs: SimpleQueue, idle: bool) -> None:
        name_native_thread(idle)
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


def name_native_thread(idle: bool = False) -> None:
    """A ThreadPool's thread initializer: the OS thread takes the Python thread's name, and with `idle` runs under
    SCHED_IDLE (Linux only; else nothing). Threads this one starts (ONNX Runtime's pool) inherit both. It never
    raises: a name or a policy is never worth the calls waiting for the thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: names are a convenience, never a reason to fail
        pass
    if idle:
        # A SCHED_IDLE thread gives way at once to any normal thread of its cgroup that wakes (the event loop, the
        # tokenizer). Lowering a policy needs no privilege; a sandbox may still refuse it.
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.warning("could not run %s under SCHED_IDLE (%s)", threading.current_thread().name, exc)


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota.

    A container limited to 2 CPUs on a 64-core node sees 64 in its affinity; sizing threads from that
    would put 64 runs on 2 CPUs' worth of time (Kubernetes' `limits.cpu` is such a quota).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time per period the cgroup allows (cgroup v2 cpu.max, or v1 cfs quota); None: no limit."""
    try:
        if (root / "cpu.max").is_file():
            quota, _, period = (root / "cpu.max").read_text().partition(" ")
            return None if quota.strip() == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        return None if quota_us <= 0 else quota_us / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup files (not Linux, or hidden): no known limit
        return None


def _settle(future: asyncio.Future, outcome: Any, failed: bool) -> None:
    if future.done():  # cancelled meanwhile: the caller has gone
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
