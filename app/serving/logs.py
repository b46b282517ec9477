"""Where the service's log lines go: to stderr, written by a thread of their own, never on the event loop.

A line logged on the event loop (uvicorn's access line for every request, a warning) is put on a
bounded queue, and one thread writes the queue out. If whatever reads the output stops (a full
pipe, a stalled log collector), that thread waits, not the requests: lines that do not fit in the
queue meanwhile are dropped and counted, and the count is written once the output moves again.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from logging.handlers import QueueHandler

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUEUE_LINES = 10_000  # lines waiting for the writer; beyond them, lines are dropped (and counted)
FLUSH_S = 2.0  # at exit, how long the lines still queued may take to be written


class _Enqueue(QueueHandler):
    """Hands each line to the writer thread; a line that finds the queue full is dropped and counted."""

    def __init__(self, lines: queue.Queue) -> None:
        super().__init__(lines)
        self.dropped = 0
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._output = logging.StreamHandler(sys.stderr)
        self._output.setFormatter(logging.Formatter(FORMAT))
        self._writer.start()

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


def configure_logging(level: str) -> None:
    """Lines at `level` and above, from the service and from uvicorn, to stderr through the writer thread.

    As logging.basicConfig, it leaves a root logger that already has handlers (a test runner's) alone.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_Enqueue(queue.Queue(QUEUE_LINES)))
    root.setLevel(level.upper())
    logging.getLogger("app").setLevel(level.upper())
