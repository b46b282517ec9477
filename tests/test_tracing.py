"""Following a request (app.serving.tracing, app.serving.logs): its id on every answer, its access line, and the spans
it makes, as a real OTLP/HTTP receiver (bench.otlp_receiver) decodes them, under concurrent load."""

from __future__ import annotations

import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server import ServerProcess, parse_raw, raw_connection, read_all

from app.serving.logs import JsonFormatter, TextFormatter, _stamp
from app.serving.tracing import (
    CURRENT,
    RequestRecord,
    TracingError,
    build_tracing,
    request_id,
    tracing_wanted,
)
from bench.otlp_receiver import OtlpReceiver

SERVER = 2  # OTLP's SpanKind.SERVER
ERROR = 2  # OTLP's status code ERROR


def test_a_sane_request_id_is_kept_and_anything_else_is_replaced():
    assert request_id([(b"x-request-id", b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6")]) == "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    for insane in (b"", b"a b", b"x" * 129, b"caf\xc3\xa9", b"id\r\nx-evil: 1", b"<script>"):
        replaced = request_id([(b"x-request-id", insane)])
        assert len(replaced) == 32 and int(replaced, 16) >= 0
    fresh = {request_id([]) for _ in range(100)}
    assert len(fresh) == 100


def test_tracing_is_on_only_when_opentelemetrys_variables_ask_for_it():
    assert not tracing_wanted({})
    assert not tracing_wanted({"OTEL_SERVICE_NAME": "x"})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})  # OTLP is the default exporter
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert not build_tracing({}).enabled


@pytest.mark.parametrize("environ, names", [
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin"),
])
def test_what_the_service_cannot_send_is_refused_in_one_line(environ, names):
    with pytest.raises(TracingError, match=names) as refused:
        build_tracing(environ)
    assert "\n" not in str(refused.value)


def test_a_record_keeps_its_whole_wait_and_its_largest_batch():
    record = RequestRecord("id", "POST", "/classify", started=10.0)
    assert record.queue_wait_s is None
    record.batched(queued=10.1, started=10.3, size=4)
    record.batched(queued=10.1, started=10.6, size=2)  # its second sequence ran in a later batch
    assert record.queue_wait_s == pytest.approx(0.5) and record.batch_size == 4


def test_a_line_logged_while_a_request_is_answered_carries_its_ids():
    record = RequestRecord("req-1", "POST", "/classify")
    record.trace_id, record.span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    line = logging.makeLogRecord({"name": "uvicorn.error", "levelno": logging.ERROR, "levelname": "ERROR", "msg": "boom %s",
                                  "args": ("here",)})
    token = CURRENT.set(record)
    try:
        _stamp(line)
    finally:
        CURRENT.reset(token)
    as_json = json.loads(JsonFormatter().format(line))
    assert as_json["message"] == "boom here" and as_json["logger"] == "uvicorn.error" and as_json["level"] == "ERROR"
    assert (as_json["request_id"], as_json["trace_id"], as_json["span_id"]) == ("req-1", record.trace_id, record.span_id)
    assert TextFormatter().format(line).endswith(f"boom here request_id=req-1 trace_id={record.trace_id} span_id={record.span_id}")
    outside = logging.makeLogRecord({"msg": "start-up"})
    _stamp(outside)
    assert "request_id" not in json.loads(JsonFormatter().format(outside))


def overloaded(post) -> httpx.Response:
    """A 429: requests of a full queue's worth of inputs each, many at once, until one finds the queue full."""
    body = json.dumps({"inputs": ["a film"] * 4}).encode()
    for _ in range(20):
        with ThreadPoolExecutor(32) as pool:
            for response in pool.map(lambda _: post(content=body), range(32)):
                if response.status_code == 429:
                    return response
    raise AssertionError("no request found the queue full")


@pytest.mark.slow
def test_every_answer_of_the_error_contract_carries_the_request_id(exported_classifier):
    """One case of each status in docs/api.md's table of errors (500: tests/test_faults.py), in the header and the body."""
    key = "sesame"
    auth = {"Authorization": f"Bearer {key}"}
    flags = ["--classify-model", str(exported_classifier), "--api-key", key, "--max-queue", "4", "--max-inputs", "4",
             "--max-body-bytes", "4096", "--header-timeout-s", "1", "--shutdown-delay-s", "3"]
    with ServerProcess(*flags, auth=key) as server:
        url = server.url

        def post(path="/classify", content=b'{"inputs": "a film"}', headers=None):
            return httpx.post(url + path, content=content, headers={"content-type": "application/json", **auth, **(headers or {})})

        answers = {
            "400 invalid_json": post(content=b"{"),
            "401 unauthorized": httpx.post(url + "/classify", json={"inputs": "a film"}),
            "404 not_found": post("/nope"),
            "405 method_not_allowed": httpx.get(url + "/classify", headers=auth),
            "413 payload_too_large": post(content=json.dumps({"inputs": "a" * 5000}).encode()),
            "413 too_many_inputs": post(content=json.dumps({"inputs": ["a"] * 5}).encode()),
            "415 unsupported_media_type": post(headers={"content-type": "text/plain"}),
            "422 validation": post(content=b"{}"),
            "429 overloaded": overloaded(post),
            "504 timeout": post(headers={"X-Request-Timeout": "0.000001"}),
            "200 ok": post(headers={"X-Request-Id": "from-the-proxy-42"}),
        }
        for case, response in answers.items():
            status, error_type = case.split()
            assert response.status_code == int(status), (case, response.text)
            identifier = response.headers["x-request-id"]
            if status != "200":
                assert response.json()["error_type"] == error_type and response.json()["request_id"] == identifier, case
        assert answers["200 ok"].headers["x-request-id"] == "from-the-proxy-42"
        assert len({response.headers["x-request-id"] for response in answers.values()}) == len(answers)

        raw_cases = {
            "400 bad_request": b"GARBAGE\r\n\r\n",
            "431 headers_too_large": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
            "505 http_version_not_supported": b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
            "408 request_timeout": b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # the rest never comes
        }
        for case, request in raw_cases.items():
            with raw_connection(url) as sock:
                sock.sendall(request)
                status, headers, body = parse_raw(read_all(sock))
            assert (status, body["error_type"]) == (int(case.split()[0]), case.split()[1]), case
            assert body["request_id"] == headers["x-request-id"] and len(headers["x-request-id"]) == 32, case

        server.signal(signal.SIGTERM)  # draining: readiness answers 503 for the shutdown delay
        deadline = time.monotonic() + 30
        while (ready := httpx.get(url + "/readyz", headers=auth)).status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["request_id"] == ready.headers["x-request-id"]


@pytest.mark.slow
def test_traces_follow_each_request_through_the_batches_that_served_it(exported_classifier):
    """Concurrent requests, each continuing a caller's trace: every request's server span keeps the caller's trace and
    parent, has its steps as children, and is linked from the batch spans that ran its sequences; its JSON access
    line and the latency histogram's exemplar carry its trace id."""
    callers = 24
    with OtlpReceiver() as receiver:
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "roberta-under-test", "ROBERTA_LOG_FORMAT": "json"}
        # A batch waits up to 50 ms for company: concurrent requests share batches.
        with ServerProcess("--classify-model", str(exported_classifier), "--max-wait-ms", "50", env=env) as server:

            def call(index: int):
                trace_id, parent = f"{index + 1:032x}", f"{index + 1:016x}"
                texts = [f"film number {index}, part {part}" for part in range(1 + index % 3)]
                response = httpx.post(f"{server.url}/classify", json={"inputs": texts}, timeout=60,
                                      headers={"traceparent": f"00-{trace_id}-{parent}-01"})
                return trace_id, parent, len(texts), response

            with ThreadPoolExecutor(callers) as pool:
                sent = list(pool.map(call, range(callers)))
            assert all(response.status_code == 200 for *_, response in sent)
            scrape = httpx.get(f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        lines = [json.loads(line) for line in server.lines if line.startswith("{")]
        spans = receiver.snapshot()  # the server's exit sent the last of them
    assert receiver.decode_errors == 0
    assert {span.service for span in spans} == {"roberta-under-test"}

    batches = [span for span in spans if span.name == "batch"]
    linked_from: dict[tuple[str, str], list] = {}
    for batch in batches:
        assert batch.attributes["roberta.batch.requests"] == len(batch.links) and batch.attributes["roberta.batch.padded_tokens"] > 0
        for link in batch.links:
            linked_from.setdefault(link, []).append(batch)
    access = {line["request_id"]: line for line in lines if line.get("logger") == "app.access" and line["route"] == "/classify"}
    for trace_id, parent, count, response in sent:
        (request,) = [span for span in spans if span.trace_id == trace_id and span.kind == SERVER]
        assert request.parent_span_id == parent and request.name == "POST /classify"
        assert request.attributes["http.response.status_code"] == 200
        assert request.attributes["roberta.request_id"] == response.headers["x-request-id"]
        children = {span.name: span for span in spans if span.parent_span_id == request.span_id}
        assert set(children) == {"validate", "tokenize", "queue", "postprocess"}
        assert all(request.start_ns <= child.start_ns <= child.end_ns <= request.end_ns for child in children.values())
        served_by = linked_from[(trace_id, request.span_id)]
        assert sum(batch.attributes["roberta.batch.size"] for batch in served_by) >= count
        line = access[response.headers["x-request-id"]]
        assert (line["trace_id"], line["span_id"], line["status"]) == (trace_id, request.span_id, 200)
        assert line["batch_size"] >= 1 and line["queue_ms"] >= 0 and line["model"]
    assert set(linked_from) == {(trace_id, span.span_id) for trace_id, *_ in sent
                                for span in spans if span.trace_id == trace_id and span.kind == SERVER}
    assert sum(batch.attributes["roberta.batch.size"] for batch in batches) == sum(count for _, _, count, _ in sent)
    assert max(len(batch.links) for batch in batches) > 1  # batches were shared, and link to each of their requests
    exemplars = {line.split('trace_id="')[1][:32] for line in scrape.text.splitlines()
                 if line.startswith('roberta_request_duration_seconds_bucket{endpoint="/classify"') and "trace_id" in line}
    assert exemplars and exemplars <= {trace_id for trace_id, *_ in sent}


@pytest.mark.slow
def test_without_opentelemetrys_variables_lines_are_text_and_carry_no_trace(exported_classifier):
    with ServerProcess("--classify-model", str(exported_classifier)) as server:
        response = httpx.post(f"{server.url}/classify", json={"inputs": "a film"},
                              headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        assert response.status_code == 200
        scrape = httpx.get(f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert httpx.get(f"{server.url}/x%0Afake%20line").status_code == 404
    assert scrape.headers["content-type"].startswith("application/openmetrics-text") and "trace_id" not in scrape.text
    assert any(" app.access: GET /x\\nfake line 404 " in line for line in server.lines), server.lines[-5:]  # escaped
    assert not any(line.startswith("fake line") for line in server.lines)
    (line,) = [line for line in server.lines if " app.access: POST /classify 200" in line]
    assert f"request_id={response.headers['x-request-id']}" in line and "trace_id" not in line and "queue_ms=" in line
