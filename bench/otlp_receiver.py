"""An OTLP/HTTP receiver for traces: what a collector's port 4318 does with `POST /v1/traces`, kept in memory.

    python -m bench.otlp_receiver --port 4318     # a sink for a benchmark with tracing on; prints a count at exit

The tests start one in a thread (`OtlpReceiver`) and read the spans the service sent, decoded from
OTLP's protobuf with `opentelemetry-proto`, to check the tree a request makes.
"""

from __future__ import annotations

import argparse
import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root
    kind: int  # OTLP's SpanKind: 2 is SERVER
    start_ns: int
    end_ns: int
    attributes: dict
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id) of each link
    status_code: int  # OTLP's: 0 unset, 1 ok, 2 error
    service: str


def _value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ExportTraceServiceRequest."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    attributes={item.key: _value(item.value) for item in span.attributes},
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    status_code=span.status.code, service=str(resource.get("service.name", "")),
                ))
    return spans


class OtlpReceiver:
    """`with OtlpReceiver() as receiver:` listens on 127.0.0.1 (`receiver.endpoint` is OTEL_EXPORTER_OTLP_ENDPOINT);
    `receiver.spans` is every span received so far; `decode_errors` counts bodies that were not OTLP."""

    def __init__(self, port: int = 0, keep: bool = True) -> None:
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self.decode_errors = 0
        self._keep = keep
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status = 200
                if self.path != "/v1/traces":
                    status = 404
                else:
                    try:
                        spans = decode(body)
                    except Exception:
                        status = 400
                        with receiver._lock:
                            receiver.decode_errors += 1
                    else:
                        with receiver._lock:
                            receiver.count += len(spans)
                            if receiver._keep:
                                receiver.spans.extend(spans)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    with OtlpReceiver(args.port, keep=False) as receiver:
        print(f"receiving OTLP/HTTP traces at {receiver.endpoint}/v1/traces", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    print(f"{receiver.count} spans received, {receiver.decode_errors} bodies not OTLP", flush=True)


if __name__ == "__main__":
    main()
