"""`python -m app --processes N`: N copies of the service on one port, each with its share of the cores.

One process runs every request through one event loop; when that thread waits for a core, the model's
run threads soon wait for it, and on a model narrower than roberta-base the cores sit partly idle
(docs/decisions/one-process-by-default.md). Processes of one core each, dealt connections by the kernel
(SO_REUSEPORT), keep one pipeline per core, as pods of one core behind a Service do.

- Start: the port claimed (`claim_port`: no other pool of this service may start on it meanwhile) and
  checked free first, before any model loads; then one process at a time, each listening only once its models
  are warm (so a probe that reaches one process says the truth about it, and each measures its start-up
  alone). `/readyz` answers once the first one listens. A process that fails before it is ready (a bad
  model, a replacement killed while loading) stops the pool: exit 1, its one line on stderr.
- Metrics: prometheus_client's multiprocess mode in a folder of this process's own; any process's
  /metrics counts them all (app.serving.metrics).
- SIGTERM or SIGINT: handed to every process as SIGTERM; one that listens drains as one process does
  (app.http.server), one still starting has accepted nothing and leaves at once; a second signal is handed on
  too and skips the wait. Exit 0 when every process that was ready exited 0.
- A process that dies after it was ready is replaced, and its live gauges dropped from the scrape.
- Each process ends with this one (the parent-death signal), so none outlives a killed supervisor; the last
  of them to leave a killed supervisor's pool removes the metrics folder.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

from app.settings import Settings, exit_with

log = logging.getLogger("app.serving.supervisor")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when first imported
RESTART_PAUSE_S = 1.0  # between a process's death and its replacement, so that a crash loop does not spin
STOP_GRACE_S = 10.0  # past the processes' own drain bound, before the supervisor kills what is left
FORWARDED = {signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1


@dataclass
class _Member:
    process: BaseProcess
    listening: Event  # set once it listens; held as long as the process, which opens it by name while it starts
    ready: bool = False  # it listened: from then on it may hold accepted requests


class Supervisor:
    """`member(settings, metrics_dir, ready, supervisor_pid)` is what each process runs (app.main.serve_member): a
    module-level function, since each process is a fresh interpreter that imports it by name. It sets `ready`
    once it listens, and calls `member_started` before anything else."""

    def __init__(self, settings: Settings, member: Callable[[Settings, Path, Event, int], None]) -> None:
        self.settings = settings
        self._member = member
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads, no sessions copied
        self._members: list[_Member] = []
        self._signals = 0
        self._metrics_dir: Path | None = None

    def run(self) -> int:
        """Serves until a signal (then 0 if every process drained cleanly) or a process fails to start (1)."""
        host, port = self.settings.host, self.settings.port
        claim = claim_port(port)  # held as long as this supervisor: another pool cannot join ours on the port
        bind_or_exit(host, port, reuse_port=False).close()  # anything listening there: say so before loading
        try:
            return self._run(host, port)
        finally:
            if claim is not None:
                claim.close()

    def _run(self, host: str, port: int) -> int:
        try:
            self._metrics_dir = Path(tempfile.mkdtemp(prefix="roberta-metrics-"))
        except OSError as exc:
            exit_with(f"ROBERTA_PROCESSES / --processes: no folder for the processes' metrics in {tempfile.gettempdir()} "
                      f"({exc.strerror}); give the service a writable /tmp or TMPDIR")
        os.environ[METRICS_DIR_VARIABLE] = str(self._metrics_dir)  # inherited by every process spawned from here on
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED}
        try:
            for index in range(self.settings.processes):
                if self._signals:
                    return self._stop()
                if not self._start(index):
                    return self._stop(failed=not self._signals)
            if not self._signals:
                log.info("all %d processes ready on http://%s:%d", len(self._members), url_host(host), port)
            return self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _start(self, index: int) -> bool:
        """Starts process `index` (replacing one that died) and waits until it listens; False if it ended first."""
        ready = self._context.Event()
        process = self._context.Process(
            target=self._member, args=(self.settings, self._metrics_dir, ready, os.getpid()), name=f"roberta-{index}"
        )
        # Held while it starts and joins the members, so that a signal now is handed to it too; the process
        # inherits the mask, and one sent to it waits for its own handler (member_started).
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            process.start()
            member = _Member(process, ready)
            if index < len(self._members):
                self._members[index] = member
            else:
                self._members.append(member)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        while not ready.wait(0.05):
            if not process.is_alive():
                return False
            if self._signals:
                return True  # stopping: it leaves at once, unready; the caller stops
        member.ready = True
        log.info("process %d of %d (pid %d) is ready", index + 1, self.settings.processes, process.pid)
        return True

    def _watch(self) -> int:
        while not self._signals:
            if not wait([member.process.sentinel for member in self._members], timeout=1.0) or self._signals:
                continue
            dead = [index for index, member in enumerate(self._members) if not member.process.is_alive()]
            for index in dead:  # every dead one out of the scrape first, then the replacements one at a time
                process = self._members[index].process
                log.error("process %d (pid %d) exited with status %s; starting another", index + 1, process.pid, process.exitcode)
                self._members[index].ready = False
                self._forget(process)
            time.sleep(RESTART_PAUSE_S)
            for index in dead:
                if self._signals:
                    break
                if not self._start(index):
                    return self._stop(failed=not self._signals)
        return self._stop()

    def _stop(self, *, failed: bool = False) -> int:
        """Waits for every process to end (each drains on the signal forwarded to it); 1 if any failed."""
        if failed:
            self._send(signal.SIGTERM)
        for member in self._members:
            member.ready = member.ready or member.listening.is_set()
            if not member.ready and member.process.is_alive():
                # Still starting: it has accepted nothing, and a signal that came while it was being spawned may
                # have found no handler of its own yet.
                member.process.kill()
        deadline = time.monotonic() + self.settings.shutdown_delay_s + self.settings.shutdown_timeout_s + STOP_GRACE_S
        for member in self._members:
            member.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if member.process.is_alive():
                log.error("process pid %d did not stop in time; killing it", member.process.pid)
                member.process.kill()
                member.process.join()
        # One that never listened accepted nothing: however it ended, no request was lost with it.
        clean = all(member.process.exitcode == 0 for member in self._members if member.ready)
        return 1 if failed or not clean else 0

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._send(signal.SIGTERM)  # SIGINT too: a process's KeyboardInterrupt would skip its drain

    def _send(self, sig: int) -> None:
        for member in self._members:
            if member.process.pid is not None and member.process.is_alive():
                try:
                    os.kill(member.process.pid, sig)
                except ProcessLookupError:  # it ended since is_alive()
                    pass

    def _forget(self, process: BaseProcess) -> None:
        """Drops a dead process's live gauges (queue depth, readiness) from what a scrape adds up."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process.pid, str(self._metrics_dir))


def member_started(supervisor_pid: int) -> None:
    """The first thing a process of the pool does: until uvicorn's own handlers a signal ends it at once (nothing
    is accepted yet), a terminal's Ctrl-C reaches only the supervisor, and the process ends with the supervisor."""
    for sig in FORWARDED:
        signal.signal(sig, lambda *_: os._exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # inherited held from the supervisor's _start
    os.setpgrp()
    _end_with(supervisor_pid)


def leave_metrics(metrics_dir: Path) -> None:
    """A process of a pool whose supervisor was killed: its metric files go, and the folder with the last of them
    (rmdir removes only an empty folder, so whichever process leaves last removes it)."""
    for path in metrics_dir.glob(f"*_{os.getpid()}.db"):
        path.unlink(missing_ok=True)
    try:
        metrics_dir.rmdir()
    except OSError:  # others still use it, or it is gone already
        pass


def claim_port(port: int) -> socket.socket | None:
    """A claim on `port` by this service, held while the returned socket is open (the kernel drops it when the
    process ends, however it ends): a second pool or process started on the port exits with one line, even
    while this one still loads its models and listens nowhere yet. An abstract Unix socket (Linux; per network
    namespace, as ports are). None where there is nothing to claim (port 0) or no such socket (not Linux)."""
    if port == 0 or not sys.platform.startswith("linux"):
        return None
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0roberta-serve:port:{port}")
    except OSError:
        claim.close()
        exit_with(f"ROBERTA_PORT / --port: port {port} is taken by another roberta-serve, serving or starting; "
                  "stop it or choose another port")
    return claim


def bind_or_exit(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    try:
        return bound_socket(host, port, reuse_port=reuse_port)
    except OSError as exc:
        exit_with(f"ROBERTA_PORT / --port: cannot bind {host}:{port} ({exc.strerror or exc})")


def bound_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to `host:port`, not yet listening; with `reuse_port`, one of several processes' on that
    port (SO_REUSEPORT): the kernel deals each new connection to one of those that listen. Without it, binding
    fails if anything listens there, a pool of this service included."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio binds one process's: IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _end_with(supervisor_pid: int) -> None:
    """The parent-death signal, so that no process outlives a killed supervisor (and keeps its share of the port)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("could not ask to end with the supervisor; a killed supervisor leaves this process running")
    if os.getppid() != supervisor_pid:  # it died before the signal was asked for
        os._exit(0)
