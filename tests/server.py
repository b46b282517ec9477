"""Real servers on 127.0.0.1 for tests whose subject is HTTP: in a thread, or as a `python -m app` process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]


class ServerThread:
    def __init__(self, settings: Settings, *, wait_ready: bool = True) -> None:
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._wait_ready = wait_ready
        self.url = ""

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        while self._wait_ready and httpx.get(f"{self.url}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    @property
    def state(self):
        return self.app.services


class ServerProcess:
    """`python -m app` in its own process, for behaviour that belongs to the process: signals, memory, exit codes."""

    def __init__(
        self, *flags: str, env: dict[str, str] | None = None, wait_ready: bool = True, launcher: list[str] | None = None,
        port: int = 0,
    ) -> None:
        launcher = launcher or [sys.executable, "-m", "app"]
        self.command = [*launcher, "--host", "127.0.0.1", "--port", str(port), "--log-level", "info", *flags]
        self.env = {**os.environ, **(env or {})}
        self._wait_ready = wait_ready
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = ""

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        bound = threading.Event()
        threading.Thread(target=self._read_output, args=(bound,), daemon=True).start()
        if not bound.wait(timeout=120) or not self.url:
            self.kill()
            raise RuntimeError("server did not start:\n" + self.output)
        deadline = time.monotonic() + 60
        while self._wait_ready and httpx.get(f"{self.url}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready:\n" + self.output)
            time.sleep(0.05)
        return self

    def _read_output(self, bound: threading.Event) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            # One process, or a pool of them (app.serving.supervisor) once every process listens.
            found = re.search(r"(?:Uvicorn running|processes ready) on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                bound.set()
        bound.set()  # the output ended: the process exited, whether it bound or not

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def metric_value(url: str, sample_name: str, **labels: str) -> float:
    """One sample from /metrics (`roberta_batch_size_sum`, ...), summed over label sets that match `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def raw_connection(url: str, receive_buffer: int | None = None) -> socket.socket:
    """A plain TCP socket to a test server, for clients that misbehave in ways httpx will not."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:  # a client that reads nothing: the server's writes back up at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(15)
    sock.connect((host, int(port)))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket's timeout passes)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data
