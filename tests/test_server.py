"""The HTTP layer of `python -m app` against misbehaving clients on raw sockets: sizes, timeouts, protocol errors.

Each client here is one a real attacker or a broken proxy would be: it sends a header for ever,
stops half way through a request, or sends something that is not HTTP. The server answers
in its JSON error format where it still can, closes the connection, and keeps serving.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from server import ServerProcess, metric_value, raw_connection

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(exported_classifier):
    flags = [
        "--classify-model", str(exported_classifier),
        "--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S), "--keep-alive-timeout-s", str(TIMEOUT_S),
    ]
    with ServerProcess(*flags) as process:
        yield process


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 15 s pass)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


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
    assert status == 400 and body == {"error": "the request is not valid HTTP/1.1", "error_type": "bad_request"}
    assert headers["content-type"] == "application/json"


def test_no_answer_names_the_server_software(server):
    for response in (httpx.get(f"{server.url}/healthz"), httpx.post(f"{server.url}/classify", json={"inputs": "good"}),
                     httpx.get(f"{server.url}/nope")):
        assert "server" not in response.headers


def test_the_server_still_serves_after_all_of_it(server):
    assert httpx.post(f"{server.url}/classify", json={"inputs": "a good film"}).status_code == 200
    assert "Traceback" not in server.output
