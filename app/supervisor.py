"""`python -m app --processes N`: N copies of the service on one port, each with its share of the cores.

One process runs every request through one event loop; when that thread waits for a core, the model's
run threads soon wait for it, and on a model narrower than roberta-base two cores sat 11-15% idle at
c=32 (bench/results/NOTES.md). Processes of one core each, dealt connections by the kernel (SO_REUSEPORT),
keep one pipeline per core, as pods of one core behind a Service do.

- Start: one process at a time, each listening only once its models are warm (so a probe that reaches
  one process says the truth about it, and each measures its start-up alone). A process that fails
  before it is ready (a bad model, the port taken) stops the pool: exit 1, its one line on stderr.
- Metrics: prometheus_client's multiprocess mode in a folder of this process's own; any process's
  /metrics counts them all (app.metrics).
- SIGTERM or SIGINT: handed to every process, which drains as one process does (app.server); a second
  signal is handed on too and skips the wait. Exit 0 when every process exited 0.
- A process that dies after it was ready is replaced, and its live gauges dropped from the scrape.
- Each process ends with this one (the parent-death signal), so none outlives a killed supervisor.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from app.settings import Settings

log = logging.getLogger("app.supervisor")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when first imported
RESTART_PAUSE_S = 1.0  # between a process's death and its replacement, so that a crash loop does not spin
_PR_SET_PDEATHSIG = 1


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads, no sessions copied
        self._processes: list[BaseProcess] = []
        self._signals = 0
        self._metrics_dir: Path | None = None

    def run(self) -> int:
        """Serves until a signal (then 0 if every process drained cleanly) or a process fails to start (1)."""
        try:
            self._metrics_dir = Path(tempfile.mkdtemp(prefix="roberta-metrics-"))
        except OSError as exc:
            print(f"error: ROBERTA_PROCESSES / --processes: no folder for the processes' metrics in {tempfile.gettempdir()} "
                  f"({exc.strerror}); give the service a writable /tmp or TMPDIR", file=sys.stderr, flush=True)
            return 1
        os.environ[METRICS_DIR_VARIABLE] = str(self._metrics_dir)  # inherited by every process spawned from here on
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.settings.processes):
                if self._signals or not self._start(index):
                    return self._stop(failed=not self._signals)
            log.info("all %d processes ready on http://%s:%d", len(self._processes), self.settings.host, self.settings.port)
            return self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _start(self, index: int) -> bool:
        """Starts process `index` (replacing one that died) and waits until it listens; False if it died first."""
        ready = self._context.Event()
        process = self._context.Process(
            target=serve_one, args=(self.settings, self._metrics_dir, ready), name=f"roberta-{index}", daemon=False
        )
        process.start()
        if index < len(self._processes):
            self._processes[index] = process
        else:
            self._processes.append(process)
        while not ready.wait(0.05):
            if not process.is_alive() or self._signals:
                return process.is_alive()  # a signal during start-up is handled by the caller
        log.info("process %d of %d (pid %d) is ready", index + 1, self.settings.processes, process.pid)
        return True

    def _watch(self) -> int:
        while not self._signals:
            ended = wait([process.sentinel for process in self._processes], timeout=1.0)
            if not ended or self._signals:
                continue
            for index, process in enumerate(self._processes):
                if process.is_alive():
                    continue
                log.error("process %d (pid %d) exited with status %s; starting another", index + 1, process.pid, process.exitcode)
                self._forget(process)
                time.sleep(RESTART_PAUSE_S)
                if self._signals:
                    break
                if not self._start(index):
                    return self._stop(failed=not self._signals)
        return self._stop(failed=False)

    def _stop(self, *, failed: bool) -> int:
        """Waits for every process to end (each drains on the signal forwarded to it); 1 if any failed."""
        if failed:
            self._send(signal.SIGTERM)
        drain_s = self.settings.shutdown_delay_s + self.settings.shutdown_timeout_s + 10.0
        for process in self._processes:
            process.join(timeout=max(0.0, drain_s))
            if process.is_alive():
                log.error("process pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        clean = all(process.exitcode == 0 for process in self._processes)
        return 1 if failed or not clean else 0

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._send(sig)

    def _send(self, sig: int) -> None:
        for process in self._processes:
            if process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, sig)
                except ProcessLookupError:  # it ended since is_alive()
                    pass

    def _forget(self, process: BaseProcess) -> None:
        """Drops a dead process's live gauges (queue depth, readiness) from what a scrape adds up."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process.pid, str(self._metrics_dir))


def serve_one(settings: Settings, metrics_dir: Path, ready) -> None:
    """One process of the pool: the models, then the shared port, then `ready` set once it listens."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only, which hands it on once
    _end_with_parent()
    from app.main import configure_logging, create_app, state_or_exit  # after the variable: multiprocess metrics
    from app.metrics import Metrics
    from app.server import DrainingServer, shared_socket, uvicorn_config

    configure_logging(settings.log_level)
    state = state_or_exit(settings, Metrics(multiprocess_dir=metrics_dir))
    try:
        sock = shared_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"error: ROBERTA_PORT / --port: cannot bind {settings.host}:{settings.port} ({exc.strerror})", file=sys.stderr, flush=True)
        sys.exit(1)
    app = create_app(state=state)
    DrainingServer(uvicorn_config(app, state), state, on_started=ready.set).run(sockets=[sock])


def _end_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("could not ask to end with the supervisor; a killed supervisor leaves this process running")
