"""What an adversarial client can make a real `python -m app` process spend, each case bounded in time and memory.

Every case here once ran for seconds and took gigabytes (bench.studies.abuse cases J-P, and
bench/results/abuse-bounds-before.md): a zero-shot template that repeats its field, a long text
tokenized once per label, stride windows built before they were counted, pipelined requests
nobody reads, two pools on one port. Now each is refused (or served) in milliseconds, and the
process's memory comes back. The ceilings are generous (CI machines are busy); the cases they
guard against missed them by one or two orders of magnitude.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.servers import free_port
from server import REPO, ServerProcess, raw_connection, read_all

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier

MB = 1024 * 1024
BOOKS = REPO.parent / "shared" / "data" / "books" / "books_clean.txt"
QUICK_S = 3.0  # what a refusal may take, however large the body
GROWTH_MB = 64  # what one refused attack may add to the process's peak memory


def long_text(characters: int) -> str:
    """Book text (../shared/data) or, without it, sentences: words and whitespace as a real document has."""
    if BOOKS.is_file():
        text = BOOKS.read_text(encoding="utf-8")[:characters]
        if len(text) == characters:
            return text
    sentence = "Marie Curie moved from Warsaw to Paris in 1891 and studied physics there. "
    return (sentence * (characters // len(sentence) + 1))[:characters]


class Memory:
    """A process's resident memory (VmRSS) and its peak since the last `reset` (VmHWM), in MB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _status(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    @property
    def rss(self) -> float:
        return self._status("VmRSS")

    @property
    def peak(self) -> float:
        return self._status("VmHWM")

    def reset(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # the peak starts again from what is resident now


def post(url: str, path: str, body: dict, **options) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{url}{path}", json=body, timeout=60, **options)
    return response, time.monotonic() - started


# The memory bounds below are the HTTP and tokenizer path's, on ONNX Runtime. OpenVINO also prepares each new batch
# shape once and keeps up to SHAPES_KEPT of them (docs/decisions/openvino-on-the-cpu.md), which they do not measure.
ENGINE = ("--backend", "onnxruntime")


@pytest.fixture(scope="module")
def server(model_repository):
    with ServerProcess("--model-repository", str(model_repository), "--processes", "1", *ENGINE) as process:
        yield process


@pytest.fixture
def memory(server):
    memory = Memory(server.process.pid)
    memory.reset()
    return memory


TEMPLATE_ATTACKS = {
    "a field repeated 100,000 times": {"inputs": "hi", "parameters": {"candidate_labels": ["y" * 100], "hypothesis_template": "{0}" * 100_000}},
    "two long labels, a 600 KB template": {
        "inputs": "hi", "parameters": {"candidate_labels": ["word " * 200, "other " * 170], "hypothesis_template": "{0}" * 200_000},
    },
    "an escaped brace that never takes the label": {"inputs": "hi", "parameters": {"candidate_labels": ["a", "b"], "hypothesis_template": "{{}}"}},
}


@pytest.mark.parametrize("body", TEMPLATE_ATTACKS.values(), ids=TEMPLATE_ATTACKS.keys())
def test_a_template_that_is_not_one_field_is_refused_before_any_hypothesis_is_made(server, memory, body):
    response, seconds = post(server.url, "/models/nli", body)
    assert response.status_code == 422 and "exactly one {}" in response.json()["error"]
    assert seconds < QUICK_S and memory.peak - memory.rss < GROWTH_MB


def test_a_template_whose_hypotheses_outgrow_the_body_is_refused_by_arithmetic(server, memory):
    body = {"inputs": "hi", "parameters": {"candidate_labels": [f"l{i}" for i in range(64)], "hypothesis_template": "{}" + " " * 100_000}}
    response, seconds = post(server.url, "/models/nli", body)
    assert response.status_code == 413 and "characters of text to tokenize" in response.json()["error"]
    assert seconds < QUICK_S and memory.peak - memory.rss < GROWTH_MB


@pytest.mark.parametrize("text", [long_text(900_000), "x1" * 450_000], ids=["900 KB of book", "one 900 KB word"])
def test_a_long_text_with_many_labels_is_served_and_another_model_does_not_wait(server, memory, text):
    """A text with whitespace is tokenized as far as a pair holds it; one unbroken word is tokenized whole (as the
    pipeline does), on the tokenizer's lane for long work, so that other requests do not queue behind it."""
    body = {"inputs": text, "parameters": {"candidate_labels": [f"topic {i}" for i in range(64)]}}
    latencies: list[float] = []
    done = threading.Event()

    def neighbour() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.monotonic()
                assert client.post(f"{server.url}/models/sentiment", json={"inputs": "a fine film"}).status_code == 200
                latencies.append(time.monotonic() - started)

    thread = threading.Thread(target=neighbour)
    thread.start()
    try:
        response, seconds = post(server.url, "/models/nli", body)
    finally:
        done.set()
        thread.join()
    assert response.status_code == 200 and len(response.json()["labels"]) == 64
    assert seconds < 10 and memory.peak - memory.rss < 128  # the text is tokenized once, a piece of it
    assert latencies and max(latencies) < 1.0  # its work went to the tokenizer in small jobs, others' between


@pytest.mark.parametrize(
    "inputs", [long_text(300_000), [long_text(4000)] * 64, ["a " * 300] * 64], ids=["300 KB", "64 x 4 KB", "64 x 600 B"]
)
def test_stride_windows_are_counted_before_any_is_made(server, memory, inputs):
    body = {"inputs": inputs, "parameters": {"aggregation_strategy": "simple", "stride": 0}}
    response, seconds = post(server.url, "/models/ner", body)
    assert response.status_code == 413 and response.json()["error_type"] == "too_many_inputs"
    assert seconds < QUICK_S and memory.peak - memory.rss < GROWTH_MB


def pipeline_unread(url: str, connections: int, total: int = 2 * MB, seconds: float = 10.0) -> list[socket.socket]:
    """`connections` clients that each send up to `total` bytes of pipelined GETs (for at most `seconds`) and read
    nothing; the sockets, left open."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    burst = request * (64 * 1024 // len(request))
    sockets = [raw_connection(url, receive_buffer=4096) for _ in range(connections)]

    def send(sock: socket.socket) -> None:
        sock.settimeout(0.5)
        sent, ends = 0, time.monotonic() + seconds
        while sent < total and time.monotonic() < ends:
            try:
                sent += sock.send(burst)
            except (TimeoutError, BlockingIOError):
                continue  # the server reads no more until this client reads
            except OSError:
                return

    threads = [threading.Thread(target=send, args=(sock,)) for sock in sockets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sockets


def test_pipelined_requests_nobody_reads_hold_bounded_memory_and_others_are_served(server):
    memory = Memory(server.process.pid)
    before = memory.rss
    sockets = pipeline_unread(server.url, 10)
    try:
        held = memory.rss
        started = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert time.monotonic() - started < 2.0
    finally:
        for sock in sockets:
            sock.close()
    assert held - before < 100  # 10 connections of at most 16 queued requests and one held read
    deadline = time.monotonic() + 10
    while memory.rss > before * 1.1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert memory.rss <= before * 1.1


def test_after_every_attack_the_memory_comes_back(model_repository):
    with ServerProcess("--model-repository", str(model_repository), "--processes", "1", *ENGINE) as fresh:
        memory = Memory(fresh.process.pid)
        post(fresh.url, "/models/sentiment", {"inputs": "warm"})  # the first request's own allocations
        before = memory.rss
        for body in TEMPLATE_ATTACKS.values():
            post(fresh.url, "/models/nli", body)
        post(fresh.url, "/models/ner", {"inputs": long_text(300_000), "parameters": {"aggregation_strategy": "simple", "stride": 0}})
        post(fresh.url, "/models/nli", {"inputs": long_text(900_000), "parameters": {"candidate_labels": [f"t{i}" for i in range(64)]}})
        for sock in pipeline_unread(fresh.url, 10, seconds=5):
            sock.close()
        deadline = time.monotonic() + 10
        while memory.rss > before * 1.1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert memory.rss <= before * 1.1, (before, memory.rss)


def raw_exchange(url: str, request: bytes) -> bytes:
    with raw_connection(url) as sock:
        sock.sendall(request)
        return read_all(sock)


@pytest.mark.parametrize(("line", "status"), [(b"GET /healthz HTTP/2.0", b"505"), (b"GET /healthz HTTP/1.0", b"200")])
def test_only_http_1_0_and_1_1_are_served(server, line, status):
    answer = raw_exchange(server.url, line + b"\r\nHost: x\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == status, answer[:200]


def test_a_request_line_without_a_version_is_not_answered_as_http_1_1(server):
    answer = raw_exchange(server.url, b"GET /healthz\r\n\r\n")
    assert b"200 OK" not in answer and answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 505")), answer[:200]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/info", "/models"])
def test_head_is_answered_wherever_get_is(server, path):
    head, get = httpx.head(f"{server.url}{path}"), httpx.get(f"{server.url}{path}")
    assert head.status_code == get.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_a_trailing_slash_is_a_json_404_never_a_redirect_built_from_host(server):
    for method in ("POST", "GET"):
        response = httpx.request(method, f"{server.url}/models/nli/", json={"inputs": "hi"}, headers={"Host": "evil.example"})
        assert response.status_code == 404 and "location" not in response.headers
        assert response.json()["error_type"] == "not_found"


@pytest.fixture(scope="module")
def keyed(model_repository):
    with ServerProcess("--model-repository", str(model_repository), "--processes", "1", env={"ROBERTA_API_KEY": "secret\n"}) as process:
        yield process


def test_a_key_read_with_its_newline_is_the_key(keyed):
    right = httpx.post(f"{keyed.url}/models/sentiment", json={"inputs": "fine"}, headers={"Authorization": "Bearer secret"})
    assert right.status_code == 200


def test_several_authorization_headers_are_a_400_whatever_their_order(keyed):
    for first, second in (("wrong", "secret"), ("secret", "wrong"), ("secret", "secret")):
        response = httpx.post(
            f"{keyed.url}/models/sentiment", json={"inputs": "fine"},
            headers=[("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")],
        )
        assert response.status_code == 400 and response.json()["error_type"] == "bad_request"


def run_app(*flags: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *flags], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_a_blank_key_is_refused_at_start_up_never_taken_as_no_authentication(exported_classifier):
    done = run_app("--classify-model", str(exported_classifier), "--port", "0", env={"ROBERTA_API_KEY": "   "})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ROBERTA_API_KEY / --api-key")


def test_one_process_on_a_taken_port_exits_1_with_one_line_before_loading_a_model(model_repository):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = run_app("--model-repository", str(model_repository), "--processes", "1", "--port", str(port))
        seconds = time.monotonic() - started
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1 and output == [f"error: ROBERTA_PORT / --port: cannot bind 127.0.0.1:{port} (Address already in use)"]
    assert seconds < 15  # the interpreter and its imports; no model was loaded


def test_two_pools_started_together_on_one_port_leave_one_serving(model_repository, tmp_path):
    port = free_port()
    flags = ["--model-repository", str(model_repository), "--processes", "2", "--port", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    pools = [subprocess.Popen([sys.executable, "-m", "app", *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while sum(pool.poll() is not None for pool in pools) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pool for pool in pools if pool.poll() is not None]
        assert len(left) == 1 and left[0].returncode == 1
        lines = left[0].stdout.read().strip().splitlines()
        assert lines == [f"error: ROBERTA_PORT / --port: port {port} is taken by another roberta-serve, serving or starting; "
                         "stop it or choose another port"]
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        for pool in pools:
            if pool.poll() is None:
                pool.send_signal(signal.SIGTERM)
                pool.wait(timeout=60)


def test_a_killed_supervisor_leaves_no_metrics_folder(exported_classifier, tmp_path):
    pool = ServerProcess("--classify-model", str(exported_classifier), "--processes", "2", port=free_port(),
                         env={"TMPDIR": str(tmp_path)})
    with pool:
        assert list(tmp_path.glob("roberta-metrics-*"))
        pool.process.kill()  # SIGKILL: no handler runs in the supervisor
        pool.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while list(tmp_path.glob("roberta-metrics-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert list(tmp_path.glob("roberta-metrics-*")) == []


def test_a_drain_under_load_resets_no_connection(exported_classifier):
    """Clients that open a new connection per request: at SIGTERM some wait in the listen backlog."""
    import http.client

    outcomes: dict[str, int] = {}
    stop = threading.Event()
    pool = ServerProcess("--classify-model", str(exported_classifier), "--processes", "2", port=free_port())
    with pool:
        host, port = pool.url.removeprefix("http://").split(":")

        def client() -> None:
            while not stop.is_set():
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    connection.connect()
                except (ConnectionRefusedError, ConnectionResetError):  # the kernel did not accept it: nothing sent
                    outcome = "refused"
                    stop.wait(0.05)
                else:
                    try:
                        connection.request("POST", "/classify", body=b'{"inputs": "a fine film"}',
                                           headers={"Content-Type": "application/json", "Connection": "close"})
                        outcome = str(connection.getresponse().status)
                    except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError) as exc:
                        outcome = f"reset ({type(exc).__name__})"  # accepted, its request sent, and lost
                finally:
                    connection.close()
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        pool.signal(signal.SIGTERM)
        assert pool.wait(timeout=60) == 0
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert outcomes.get("200", 0) > 100 and not any(outcome.startswith("reset") for outcome in outcomes), outcomes


def test_a_log_output_nobody_reads_does_not_stop_the_requests(exported_classifier):
    port = free_port()
    process = subprocess.Popen(  # stdout and stderr to a pipe that is never read: it fills after a few hundred lines
        [sys.executable, "-m", "app", "--classify-model", str(exported_classifier), "--port", str(port), "--log-level", "info"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            statuses = [client.post(f"http://127.0.0.1:{port}/classify", json={"inputs": f"film {i}"}).status_code for i in range(2000)]
        assert statuses == [200] * 2000
    finally:
        process.kill()
        process.wait(timeout=10)
