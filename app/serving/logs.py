"""Where the service's log lines go: to stderr, written by a thread of their own, never on the event loop.

A line logged on the event loop (the access line of every request, a warning) is put on a
bounded queue, and one thread formats and writes the queue out
(only the message's arguments and a traceback are merged on the thread that logs). If whatever reads the output stops
(a full pipe, a stalled log collector), that thread waits, not the requests: lines that do not fit
in the queue meanwhile are dropped and counted, and the count is written once the output moves again.

Every line, uvicorn's included, is text (`time LEVEL logger: message key=value ...`) or, with
`ROBERTA_LOG_FORMAT=json`, one JSON object a line. A line written while a request is answered
carries its `request_id`, and its `trace_id` and `span_id` when the request is traced, the field
names OpenTelemetry gives trace context in logs that are not OTLP.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
from datetime import datetime, timezone
from logging.handlers import QueueHandler

from app.serving.tracing import CURRENT

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a line carries besides its message, in this order: the access line's fields, then the request's ids.
FIELDS = ("method", "route", "model", "status", "bytes", "duration_ms", "queue_ms", "batch_size",
          "request_id", "trace_id", "span_id")


def _stamp(record: logging.LogRecord) -> bool:
    """On the thread that logs: the request being answered there, if any, onto the line."""
    request = CURRENT.get()
    if request is not None and not hasattr(record, "request_id"):
        record.request_id = request.id
        if request.trace_id is not None:
            record.trace_id, record.span_id = request.trace_id, request.span_id
    return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{name}={value}" for name in FIELDS if (value := getattr(record, name, None)) is not None)
        return f"{line} {extra}" if extra else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the fields the line has, and a
    traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)
QUEUE_LINES = 10_000  # lines waiting for the writer; beyond them, lines are dropped (and counted)
FLUSH_S = 2.0  # at exit, how long the lines still queued may take to be written


class _Enqueue(QueueHandler):
    """Hands each line to the writer thread; a line that finds the queue full is dropped and counted."""

    def __init__(self, lines: queue.Queue, formatter: logging.Formatter) -> None:
        super().__init__(lines)
        self.dropped = 0
        self.addFilter(_stamp)
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._output = logging.StreamHandler(sys.stderr)
        self._output.setFormatter(formatter)
        self._writer.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The line as it is now: its message merged with its arguments and its traceback as text, on the thread
        that logs; the rest of formatting is the writer's."""
        record.msg, record.args = record.getMessage(), None  # in place: this is the root's one handler
        if record.exc_info:
            record.exc_text = record.exc_text or _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        written_drops = 0
        while (record := self.queue.get()) is not None:
            if self.dropped != written_drops:
                count, written_drops = self.dropped - written_drops, self.dropped
                self._output.handle(logging.makeLogRecord({
                    "name": "app.serving.logs", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{count} log lines were dropped: the log output was not being read",
                }))
            self._output.handle(record)

    def close(self) -> None:
        """Called by logging.shutdown (at exit, or before os._exit): what is queued is written first, within FLUSH_S."""
        try:
            self.queue.put(None, timeout=FLUSH_S)
        except queue.Full:
            pass
        self._writer.join(timeout=FLUSH_S)
        super().close()


def log_line(logger: logging.Logger, level: int, message: str, fields: dict) -> None:
    """`logger.log(level, message, extra=fields)` without logging's look through the stack for the caller's file and
    line, which costs more than the rest of a line: for the access line, written for every request."""
    if logger.isEnabledFor(level):
        record = logging.LogRecord(logger.name, level, "", 0, message, None, None)
        record.__dict__.update(fields)
        logger.handle(record)


_TRACEBACKS = logging.Formatter()
FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def configure_logging(level: str, log_format: str = "text") -> None:
    """Lines at `level` and above, from the service and from uvicorn, to stderr through the writer thread, as
    `log_format` (text or json).

    As logging.basicConfig, it leaves a root logger that already has handlers (a test runner's) alone.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_Enqueue(queue.Queue(QUEUE_LINES), FORMATTERS[log_format]()))
    root.setLevel(level.upper())
    logging.getLogger("app").setLevel(level.upper())
