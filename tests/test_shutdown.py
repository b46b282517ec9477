"""SIGTERM against a real `python -m app` under load: every accepted request is answered, then the process exits 0."""

from __future__ import annotations

import pytest

import json
import signal
import threading
import time
from collections import Counter

import httpx

from server import ServerProcess, raw_connection

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier

WORKERS = 16
DELAY_S = 1.0


def test_sigterm_drains_answers_everything_accepted_and_exits_0(exported_classifier):
    flags = ["--classify-model", str(exported_classifier), "--max-wait-ms", "50", "--max-batch-size", "8"]
    outcomes: list[tuple[float, object]] = []  # (sent at, status code or what went wrong)

    with ServerProcess(*flags, "--shutdown-delay-s", str(DELAY_S)) as process:

        def worker() -> None:
            # A fresh connection per request: a refusal then shows as a refused connect, never as a lost answer.
            with httpx.Client(headers={"Connection": "close"}, timeout=30) as client:
                while True:
                    sent = time.monotonic()
                    try:
                        response = client.post(f"{process.url}/classify", json={"inputs": ["a good film", "dull"]})
                    except httpx.ConnectError:
                        outcomes.append((sent, "refused"))
                        return
                    except httpx.HTTPError as exc:
                        outcomes.append((sent, f"lost: {type(exc).__name__}"))
                        return
                    outcomes.append((sent, response.status_code))
                    if response.status_code != 200:
                        assert response.json()["error_type"] == "not_ready"
                        assert response.headers["retry-after"]
                        return

        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert httpx.get(f"{process.url}/readyz").status_code == 200
        sigterm_at = time.monotonic()
        process.signal(signal.SIGTERM)
        time.sleep(DELAY_S / 2)
        readiness = httpx.get(f"{process.url}/readyz")  # within the delay: unready, still serving
        for thread in threads:
            thread.join(timeout=60)
        exit_code = process.wait(timeout=60)

    assert readiness.status_code == 503 and readiness.json()["error_type"] == "not_ready"
    results = Counter(result for _, result in outcomes)
    assert not [r for r in results if str(r).startswith("lost")], results
    assert set(results) <= {200, 503, "refused"}, results
    assert all(result == 200 for sent, result in outcomes if sent < sigterm_at), results
    served_while_draining = [r for sent, r in outcomes if sigterm_at < sent < sigterm_at + DELAY_S / 2 and r == 200]
    assert served_while_draining, "requests during shutdown_delay_s are still answered"
    assert results[503] + results["refused"] == WORKERS  # every worker was refused at the end, none lost
    assert exit_code == 0
    assert "received SIGTERM: draining" in process.output


def exit_within(process: ServerProcess, seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    code = process.wait(timeout=seconds)
    return code, time.monotonic() - started


def test_a_stalled_upload_does_not_hold_up_the_shutdown(exported_classifier):
    flags = ["--classify-model", str(exported_classifier), "--shutdown-timeout-s", "2", "--body-timeout-s", "60"]
    with ServerProcess(*flags) as process, raw_connection(process.url) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"inputs": "a fi')  # 16 of 1,000 bytes, then nothing
        time.sleep(0.5)
        process.signal(signal.SIGTERM)
        code, seconds = exit_within(process, 15)
        answer = sock.recv(65536)
    assert code == 0 and seconds < 2 + 2, f"exited {code} after {seconds:.1f} s"
    assert answer.startswith(b"HTTP/1.1 503") and b'"not_ready"' in answer and b"connection: close" in answer


def test_clients_that_never_read_their_answers_do_not_hold_up_the_shutdown(exported_mlm):
    flags = ["--fill-mask-model", str(exported_mlm), "--shutdown-timeout-s", "2"]
    text = "the film was <mask> and the plot <mask> but the acting was <mask> from start to <mask>."
    body = json.dumps({"inputs": [text] * 64, "parameters": {"top_k": 8}}).encode()  # 2,048 answers, ~0.3 MB
    request = (b"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with ServerProcess(*flags) as process:
        # Pipelined, 24 answers (~8 MB) to each connection: more than the kernel buffers on both ends hold.
        clients = [raw_connection(process.url, receive_buffer=4096) for _ in range(4)]
        for sock in clients:
            sock.sendall(request * 24)
        time.sleep(4)
        process.signal(signal.SIGTERM)
        code, seconds = exit_within(process, 20)
        for sock in clients:
            sock.close()
    assert code == 0 and seconds < 2 + 3, f"exited {code} after {seconds:.1f} s"
    assert "closing" in process.output  # it had to cut connections: the clients really held it


def test_answers_during_a_drain_tell_clients_to_close_the_connection(exported_classifier):
    # The batcher holds a lone request for 3 s: the first one keeps the drain open past the delay.
    flags = ["--classify-model", str(exported_classifier), "--shutdown-delay-s", "1", "--max-wait-ms", "3000"]
    with ServerProcess(*flags) as process, httpx.Client(base_url=process.url, timeout=10) as client:
        assert "connection" not in client.get("/healthz").headers  # keep-alive before
        held = threading.Thread(target=lambda: results.append(httpx.post(f"{process.url}/classify", json={"inputs": "good"})))
        results: list[httpx.Response] = []
        held.start()
        time.sleep(0.3)
        process.signal(signal.SIGTERM)
        time.sleep(0.3)
        during = client.get("/healthz")
        time.sleep(1)
        after = client.post("/classify", json={"inputs": "good"})
        held.join(timeout=10)
        process.wait(timeout=30)
    assert during.status_code == 200 and during.headers["connection"] == "close"
    assert after.status_code == 503 and after.headers["connection"] == "close" and after.headers["retry-after"]
    assert results[0].status_code == 200 and results[0].headers["connection"] == "close"
