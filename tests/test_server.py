"""The HTTP layer of `python -m app` against misbehaving clients on raw sockets: sizes, timeouts, protocol errors.

Each client here is one a real attacker or a broken proxy would be: it sends a header for ever,
stops half way through a request, or sends something that is not HTTP. The server answers
in its JSON error format where it still can, closes the connection, and keeps serving.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import uvicorn
from server import ServerProcess, metric_value, raw_connection, read_all
from server import parse_raw as parse
from starlette.responses import JSONResponse
from uvicorn.server import ServerState

from app.http.server import (
    LATE_REQUEST_S,
    PIPELINED_SLICE,
    HttpLimits,
    limited_protocol,
    turn_away_new_connections,
)

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(exported_classifier):
    flags = [
        "--classify-model", str(exported_classifier),
        "--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S), "--keep-alive-timeout-s", str(TIMEOUT_S),
    ]
    with ServerProcess(*flags) as process:
        yield process


def send_forever(sock: socket.socket, prefix: bytes, total: int) -> int:
    """Send `prefix` then up to `total` bytes of header value; how many were sent before the server cut us off."""
    sent = 0
    try:
        sock.sendall(prefix)
        while sent < total:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def test_headers_over_the_limit_get_431_and_are_never_buffered_whole(server):
    with raw_connection(server.url) as sock:
        send_forever(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", 8 * 2**20)
        status, headers, body = parse(read_all(sock))
    assert status == 431 and body["error_type"] == "headers_too_large" and "65536" in body["error"]
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"

    before = server.rss_bytes()
    socks = [raw_connection(server.url) for _ in range(10)]
    sent = [send_forever(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", 50 * 2**20) for sock in socks]
    for sock in socks:
        sock.close()
    growth = server.rss_bytes() - before
    assert growth < 64 * 2**20, f"{growth / 2**20:.0f} MB more for ten 50 MB headers (sent {sent})"
    assert all(s < 50 * 2**20 for s in sent), "the server read a whole 50 MB header"
    assert metric_value(server.url, "roberta_http_refused_total", reason="headers_too_large") >= 11


def test_headers_within_the_limit_are_served(server):
    response = httpx.get(f"{server.url}/healthz", headers={"X-Big": "a" * 60_000})
    assert response.status_code == 200


def test_headers_that_stop_arriving_get_408(server):
    with raw_connection(server.url) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
        status, _, body = parse(read_all(sock))
        waited = time.monotonic() - started
    assert status == 408 and body["error_type"] == "request_timeout" and "headers" in body["error"]
    assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 3


def test_a_body_that_stops_arriving_gets_408_and_the_connection_is_dropped(server):
    with raw_connection(server.url) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"inputs": "a fi')
        status, headers, body = parse(read_all(sock))
        waited = time.monotonic() - started
    assert status == 408 and body["error_type"] == "request_timeout" and "body" in body["error"]
    assert headers["connection"] == "close" and waited < TIMEOUT_S + 3
    assert metric_value(server.url, "roberta_http_refused_total", reason="request_timeout") >= 1


def test_a_second_request_that_stalls_on_a_kept_alive_connection_gets_its_own_408(server):
    with raw_connection(server.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        raw = read_all(sock)
    first, _, second = raw.partition(b'{"status":"ok"}')
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 408")
    assert parse(second)[2]["error_type"] == "request_timeout"


def test_a_body_that_stalls_after_an_early_answer_gets_no_second_answer(server):
    with raw_connection(server.url) as sock:  # over the body limit: 413 at once from Content-Length, then the body stops
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2000000\r\n\r\n" + b"a" * 100)
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 413") and raw.count(b"HTTP/1.1") == 1


def test_idle_connections_are_closed_new_ones_included(server):
    with raw_connection(server.url) as sock:  # never sends a byte
        started = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - started < TIMEOUT_S + 3
    with raw_connection(server.url) as sock:  # one request, then silence
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        raw = read_all(sock)
        assert raw.startswith(b"HTTP/1.1 200") and time.monotonic() - started < TIMEOUT_S + 3


def test_something_that_is_not_http_gets_a_json_400(server):
    with raw_connection(server.url) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        status, headers, body = parse(read_all(sock))
    assert status == 400 and body == {"error": "the request is not valid HTTP/1.1", "error_type": "bad_request",
                                      "request_id": headers["x-request-id"]}
    assert headers["content-type"] == "application/json"


def test_no_answer_names_the_server_software(server):
    for response in (httpx.get(f"{server.url}/healthz"), httpx.post(f"{server.url}/classify", json={"inputs": "good"}),
                     httpx.get(f"{server.url}/nope")):
        assert "server" not in response.headers


def test_the_server_still_serves_after_all_of_it(server):
    assert httpx.post(f"{server.url}/classify", json={"inputs": "a good film"}).status_code == 200
    assert "Traceback" not in server.output


class RecordingTransport(asyncio.Transport):
    """The socket's side of a connection: each write() or writelines() is one send."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data) -> None:
        if not self.closed:  # as a socket's transport: nothing leaves after close
            self.sends.append(bytes(data))

    def writelines(self, lines) -> None:
        if not self.closed:
            self.sends.append(b"".join(lines))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def exchange(app, request: bytes, steps: int = 20) -> RecordingTransport:
    """Feed `request` to app.http.server's protocol around `app`; what it sent once the loop has run `steps` steps."""
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    protocol = limited_protocol(HttpLimits())(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(steps):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


def test_an_answer_complete_when_the_server_closes_the_connection_in_that_step_goes_out_first():
    """The server's shutdown closes a connection whose answer is complete from another task; the answer comes first."""
    protocols = []

    async def app(scope, receive, send):
        await receive()
        await JSONResponse({"ok": True})(scope, receive, send)
        protocols[0].shutdown()  # as uvicorn's Server.shutdown does, before the loop's step ends

    async def run() -> RecordingTransport:
        config = uvicorn.Config(app, lifespan="off", log_level="warning")
        protocol = limited_protocol(HttpLimits())(config=config, server_state=ServerState(), app_state={})
        protocols.append(protocol)
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        deadline = time.monotonic() + 10  # between requests, a connection has a moment (LATE_REQUEST_S) for another
        while not transport.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return transport

    transport = asyncio.run(run())
    assert transport.closed and b"".join(transport.sends).endswith(b'{"ok":true}')


def test_at_shutdown_a_new_connection_keeps_its_idle_time_for_its_request():
    """A connection opened a moment before the drain, its request not yet sent (a client slowed by load): the
    request is answered when it comes, past the moment a connection between requests gets, and closes it."""

    async def app(scope, receive, send):
        await receive()
        await JSONResponse({"ok": True})(scope, receive, send)

    async def run() -> RecordingTransport:
        config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_keep_alive=LATE_REQUEST_S * 3)
        protocol = limited_protocol(HttpLimits(), is_draining=lambda: True)(config=config, server_state=ServerState(), app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.shutdown()  # as uvicorn's Server.shutdown does
        await asyncio.sleep(LATE_REQUEST_S * 1.5)
        assert not transport.closed
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        deadline = time.monotonic() + 10
        while not transport.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return transport

    transport = asyncio.run(run())
    answer = b"".join(transport.sends)
    assert transport.closed and answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()


def test_a_listener_that_turns_new_connections_away_still_hands_over_those_it_has():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port))
        turn_away_new_connections(listener)
        late = socket.socket()
        late.settimeout(0.5)
        with queued, late:
            with pytest.raises(TimeoutError):  # its SYN dropped: no handshake, nothing it could send is lost
                late.connect(("127.0.0.1", port))
            accepted, _ = listener.accept()
            with accepted:
                queued.sendall(b"still here")
                assert accepted.recv(16) == b"still here"
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):  # the late client is not in the backlog
                listener.accept()


def test_an_expected_100_continue_and_a_head_request_are_still_answered():
    async def app(scope, receive, send):
        await receive()
        await JSONResponse({"ok": True})(scope, receive, send)

    sends = asyncio.run(exchange(app, b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}")).sends
    assert b"".join(sends).startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") and sends[-1].endswith(b'{"ok":true}')
    sends = asyncio.run(exchange(app, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")).sends
    assert len(sends) == 1 and sends[0].startswith(b"HTTP/1.1 200 OK") and sends[0].endswith(b"\r\n\r\n")


def test_a_client_that_pipelines_without_reading_has_a_bounded_line_and_every_request_is_answered_in_the_end():
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answering = asyncio.Event()

    async def app(scope, receive, send):
        await answering.wait()  # a client that does not read: no answer completes meanwhile
        await JSONResponse({"ok": True})(scope, receive, send)

    async def run() -> tuple[int, bool, int, RecordingTransport]:
        config = uvicorn.Config(app, lifespan="off", log_level="warning")
        limits = HttpLimits()
        protocol = limited_protocol(limits)(config=config, server_state=ServerState(), app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        burst = request * 2000  # 70 KB in one read: 2,000 requests
        protocol.data_received(burst)
        for _ in range(10):
            await asyncio.sleep(0)
        queued, paused = len(protocol.pipeline), transport.paused
        most = limits.max_pipelined + PIPELINED_SLICE // len(request) + 1  # the line, and one slice's worth past it
        answering.set()
        deadline = time.monotonic() + 30
        while sum(send.count(b"HTTP/1.1 200") for send in transport.sends) < 2000 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        protocol.connection_lost(None)
        return queued, paused, most, transport

    queued, paused, most, transport = asyncio.run(run())
    assert queued <= most and paused  # not 2,000 requests parsed and queued, and no more is read
    assert sum(send.count(b"HTTP/1.1 200") for send in transport.sends) == 2000  # nothing accepted is lost
