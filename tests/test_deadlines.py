"""Deadlines and disconnects against a real `python -m app` process: the model never runs work nobody waits for.

The server holds a lone request for 1.5 s (max_wait) before batching it, which leaves
time for its deadline to pass or its client to leave; the batch-size histogram's sum
counts every sequence the model really ran.
"""

from __future__ import annotations

import time

import httpx
import pytest

from server import ServerProcess, metric_value

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier

HOLD_S = 1.5


@pytest.fixture(scope="module")
def server(exported_classifier):
    flags = ["--classify-model", str(exported_classifier), "--max-wait-ms", str(HOLD_S * 1000), "--max-batch-size", "64"]
    with ServerProcess(*flags, "--request-timeout-s", "5", "--max-request-timeout-s", "10") as process:
        yield process


def sequences_run(server) -> float:
    return metric_value(server.url, "roberta_batch_size_sum", model="cls")


def dropped(server, reason: str) -> float:
    return metric_value(server.url, "roberta_dropped_sequences_total", model="cls", reason=reason)


def settle(server) -> None:
    """Wait until the batcher has looked at the queue again (it holds work for HOLD_S)."""
    deadline = time.monotonic() + HOLD_S + 5
    while metric_value(server.url, "roberta_queue_depth", model="cls") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)


def test_a_request_past_its_deadline_gets_504_and_never_reaches_the_model(server):
    ran, expired = sequences_run(server), dropped(server, "deadline")
    started = time.monotonic()
    response = httpx.post(
        f"{server.url}/classify", json={"inputs": ["a", "b", "c"]}, headers={"X-Request-Timeout": "0.3"}, timeout=10
    )
    waited = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error_type"] == "timeout"
    assert 0.3 <= waited < HOLD_S  # answered at the deadline, not when the batcher woke up
    settle(server)
    assert sequences_run(server) == ran
    assert dropped(server, "deadline") == expired + 3


def test_a_client_that_hangs_up_has_its_queued_work_dropped(server):
    ran, left = sequences_run(server), dropped(server, "disconnected")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/classify", json={"inputs": ["a", "b"]}, timeout=0.3)  # closes the connection
    settle(server)
    assert sequences_run(server) == ran
    assert dropped(server, "disconnected") == left + 2
    assert metric_value(server.url, "roberta_requests_total", endpoint="/classify", status="499") >= 1


def test_the_default_deadline_applies_without_the_header(exported_classifier):
    flags = ["--classify-model", str(exported_classifier), "--max-wait-ms", "1500", "--request-timeout-s", "0.4"]
    with ServerProcess(*flags) as process:
        response = httpx.post(f"{process.url}/classify", json={"inputs": "a"}, timeout=10)
        assert response.status_code == 504


def test_work_within_its_deadline_is_answered(server):
    response = httpx.post(f"{server.url}/classify", json={"inputs": "a"}, headers={"X-Request-Timeout": "9"}, timeout=10)
    assert response.status_code == 200


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan", "", "11"])
def test_a_bad_or_too_long_timeout_header_is_422(server, value):
    response = httpx.post(f"{server.url}/classify", json={"inputs": "a"}, headers={"X-Request-Timeout": value}, timeout=10)
    assert response.status_code == 422 and response.json()["error_type"] == "validation"
    assert "X-Request-Timeout" in response.json()["error"]


@pytest.fixture
def slow_tokenizer(exported_classifier, monkeypatch):
    """A server whose tokenizer takes 0.5 s a job, and the characters of every job it was handed."""
    from app.settings import Settings
    from server import ServerThread

    with ServerThread(Settings(classify_model=exported_classifier, max_wait_ms=1)) as served:
        encoder = served.state.models.get("cls").encoder
        handed: list[int] = []
        content = encoder.content

        def slow(texts, **options):
            handed.append(sum(map(len, texts)))
            time.sleep(0.5)
            return content(texts, **options)

        monkeypatch.setattr(encoder, "content", slow)
        yield served, handed


TEXTS = ["the film was good and the acting was brilliant " * 4] * 64  # about 12,000 characters: two jobs


def test_tokenizing_stops_at_the_next_job_once_the_deadline_has_passed(slow_tokenizer):
    served, handed = slow_tokenizer
    response = httpx.post(f"{served.url}/classify", json={"inputs": TEXTS}, headers={"X-Request-Timeout": "0.3"}, timeout=10)
    assert response.status_code == 504
    time.sleep(1.0)  # a second job would have been handed by now
    assert len(handed) == 1 and handed[0] <= 8192


def test_tokenizing_stops_at_the_next_job_once_the_client_has_gone(slow_tokenizer):
    served, handed = slow_tokenizer
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/classify", json={"inputs": TEXTS}, timeout=0.2)
    time.sleep(1.5)
    assert len(handed) == 1
    assert httpx.post(f"{served.url}/classify", json={"inputs": "still serving"}).status_code == 200
