"""Real servers on 127.0.0.1 for tests whose subject is HTTP: in a thread, or as a `python -m app` process."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from app.main import create_app
from bench.servers import ServerProcess  # noqa: F401  (the one harness, bench.servers)
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


def parse_raw(raw: bytes) -> tuple[int, dict[str, str], dict]:
    """An answer read off a raw socket: its status, its headers (names in lower case) and its JSON body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket's timeout passes)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data
