"""Following one request: its id, what its access line says, and, with the `otel` extra, its spans.

A `RequestRecord` is made for every request by the app (app.http.app) and handed along the request's
path: the route fills in the model, the batcher the wait in the queue and the batch that ran it.
`Tracing` turns a record into OpenTelemetry spans when tracing is on (`build_tracing`): a server span
that continues the caller's W3C `traceparent`, children for validation, tokenizing, the wait in the
queue and postprocessing, and one span per engine run, linked to the span of every request it served
(a batch has many parents, so links, not a parent). When tracing is off, `Tracing` does nothing and
records carry no span.

The record of the request being answered is also in `CURRENT`, a context variable, for one reader
only: the log handler (app.serving.logs), which stamps any line written meanwhile with its request id
and trace ids, uvicorn's own lines included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("app.serving.tracing")

REQUEST_ID_HEADER = b"x-request-id"
# A request id taken from the caller: what proxies send (Envoy and Istio a UUID, others hex or base64 tokens),
# bounded so that it cannot fill a log line; anything else is replaced by one of ours.
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
TRACES_EXPORTERS = ("otlp", "console")


def request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The caller's `X-Request-Id` when it is a sane token, else a new one."""
    for key, value in headers:
        if key == REQUEST_ID_HEADER:
            if SANE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()


@dataclass(eq=False, slots=True)
class RequestRecord:
    """One request as its access line and its spans tell it."""

    id: str
    method: str
    route: str  # the route's path as the metrics label it: /classify, /models/{name}, other
    started: float = field(default_factory=time.monotonic)
    model: str = ""
    queued: float | None = None  # time.monotonic(): when its sequences entered the model's queue
    ran: float | None = None  # when the last of its batches began to run
    batch_size: int = 0  # the largest batch that served it
    span: Any = None  # its server span while tracing; None when off or not sampled
    context: Any = None  # the OpenTelemetry context its child spans start in
    trace_id: str | None = None  # hex, as logs and exemplars carry them (sampled requests only)
    span_id: str | None = None

    def batched(self, queued: float, started: float, size: int) -> None:
        """One of its sequences, queued at `queued`, began to run at `started` in a batch of `size`."""
        self.queued = queued if self.queued is None else min(self.queued, queued)
        self.ran = started if self.ran is None else max(self.ran, started)
        self.batch_size = max(self.batch_size, size)

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.queued is None or self.ran is None else self.ran - self.queued


CURRENT: ContextVar[RequestRecord | None] = ContextVar("roberta_request", default=None)

_NOTHING = contextlib.nullcontext()


class Tracing:
    """No tracing: every method does nothing. `OpenTelemetryTracing` is the one that records."""

    enabled = False

    def start(self, record: RequestRecord, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """The request's server span, continuing the caller's trace (`traceparent`) if it sent one."""

    def finish(self, record: RequestRecord, status: int) -> None:
        """The request was answered with `status`: its span ends."""

    def span(self, record: RequestRecord | None, name: str) -> contextlib.AbstractContextManager:
        """A child span of the request around a step of its own (validation, tokenizing, postprocessing)."""
        return _NOTHING

    def interval(self, record: RequestRecord, name: str, start: float, end: float) -> None:
        """A child span of the request from `start` to `end` (time.monotonic()), for a step seen only afterwards."""

    def batch(self, records: Sequence[RequestRecord], started: float, ended: float, size: int, padded_tokens: int,
              model: str, failed: bool = False) -> None:
        """One engine run that served `records`, from `started` to `ended` (time.monotonic())."""

    def shutdown(self) -> None:
        """Send what is still buffered (at exit)."""


class OpenTelemetryTracing(Tracing):
    """Spans through OpenTelemetry's SDK: a tracer provider of the service's own (not the global one), its
    sampler and exporter configured by OpenTelemetry's environment variables, spans sent in batches by the
    SDK's own thread."""

    enabled = True

    def __init__(self, provider, propagator) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind, StatusCode

        self._trace = trace
        self._Link, self._SpanKind, self._StatusCode = Link, SpanKind, StatusCode
        self._provider = provider
        self._tracer = provider.get_tracer("roberta-serve")
        self._propagator = propagator
        # Spans take wall-clock nanoseconds; the service times with the monotonic clock.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def _ns(self, monotonic: float) -> int:
        return int(monotonic * 1e9) + self._offset_ns

    def start(self, record: RequestRecord, headers: Sequence[tuple[bytes, bytes]]) -> None:
        carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers
                   if key in (b"traceparent", b"tracestate", b"baggage")}
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(
            f"{record.method} {record.route}", context=parent, kind=self._SpanKind.SERVER,
            start_time=self._ns(record.started),
            attributes={"http.request.method": record.method, "http.route": record.route, "roberta.request_id": record.id},
        )
        if not span.is_recording():  # not sampled: no children, no ids in the logs
            return
        record.span = span
        record.context = self._trace.set_span_in_context(span)
        context = span.get_span_context()
        record.trace_id, record.span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")

    def finish(self, record: RequestRecord, status: int) -> None:
        span = record.span
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if record.model:
            span.set_attribute("roberta.model", record.model)
        if status >= 500:
            span.set_status(self._StatusCode.ERROR)
        span.end()

    @contextlib.contextmanager
    def _child(self, record: RequestRecord, name: str) -> Iterator[None]:
        span = self._tracer.start_span(name, context=record.context)
        try:
            yield
        except BaseException as exc:
            span.set_status(self._StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            span.end()

    def span(self, record: RequestRecord | None, name: str) -> contextlib.AbstractContextManager:
        if record is None or record.span is None:
            return _NOTHING
        return self._child(record, name)

    def interval(self, record: RequestRecord, name: str, start: float, end: float) -> None:
        if record.span is not None:
            self._tracer.start_span(name, context=record.context, start_time=self._ns(start)).end(end_time=self._ns(end))

    def batch(self, records: Sequence[RequestRecord], started: float, ended: float, size: int, padded_tokens: int,
              model: str, failed: bool = False) -> None:
        distinct = {id(record): record for record in records}
        links = [self._Link(record.span.get_span_context()) for record in distinct.values() if record.span is not None]
        if not links:
            return
        span = self._tracer.start_span(
            "batch", context=self._trace.set_span_in_context(self._trace.INVALID_SPAN), links=links,
            start_time=self._ns(started),
            attributes={"roberta.model": model, "roberta.batch.size": size, "roberta.batch.padded_tokens": padded_tokens,
                        "roberta.batch.requests": len(distinct)},
        )
        if failed:
            span.set_status(self._StatusCode.ERROR)
        span.end(end_time=self._ns(ended))

    def shutdown(self) -> None:
        self._provider.shutdown()


class TracingError(Exception):
    """OpenTelemetry's variables ask for something this service cannot do (said in one line at start-up)."""


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """OpenTelemetry's variables ask for traces: an exporter named in OTEL_TRACES_EXPORTER, or, with that
    unset, an OTLP endpoint given (OpenTelemetry's default exporter is OTLP). OTEL_SDK_DISABLED=true: no."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def build_tracing(environ: Mapping[str, str]) -> Tracing:
    """Tracing as OpenTelemetry's variables in `environ` ask (app.settings.opentelemetry_environment); off when
    they ask for none. The SDK reads the rest of its variables itself (OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and its argument, OTEL_EXPORTER_OTLP_* endpoints, headers and
    timeouts, OTEL_BSP_* batching)."""
    if not tracing_wanted(environ):
        return Tracing()
    try:
        from opentelemetry.propagate import get_global_textmap
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
        )
    except ImportError:
        raise TracingError("OTEL_* variables ask for traces, and OpenTelemetry's SDK is not installed: "
                           "pip install 'roberta-serve[otel]', or unset them") from None
    exporters = [name.strip() for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(",") if name.strip()]
    unknown = [name for name in exporters if name not in TRACES_EXPORTERS]
    if unknown:
        raise TracingError(f"OTEL_TRACES_EXPORTER={','.join(unknown)}: this service sends traces with "
                           f"{' or '.join(TRACES_EXPORTERS)} (or none)")
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if "otlp" in exporters and protocol.strip().lower() != "http/protobuf":
        raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this service sends OTLP over HTTP; "
                           "set it to http/protobuf (a collector's port 4318)")
    if "service.name" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", "") and not environ.get("OTEL_SERVICE_NAME"):
        resource = Resource.create({"service.name": "roberta-serve"})
    else:
        resource = Resource.create()
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    log.info("tracing: %s", ", ".join(exporters))
    return OpenTelemetryTracing(provider, get_global_textmap())
