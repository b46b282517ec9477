"""The HTTP server `python -m app` runs: uvicorn, bounded against slow and greedy clients, with a drain that ends.

uvicorn (httptools) buffers a header for as long as a client sends it, waits for a body for
ever, and at shutdown waits for every connection to close, even one whose client stopped
reading. `limited_protocol` bounds the first two, `DrainingServer` the third:

- headers: at most `max_header_bytes`, counted as they arrive (431 and the connection is
  closed; the rest is never read), and complete within `header_timeout_s` of the first byte;
- body: complete within `body_timeout_s` of the headers (408 and closed);
- pipelining: at most `max_pipelined` requests wait behind the one being answered; past that
  the connection is not read until its client reads answers (uvicorn parses whatever arrives,
  so a client that pipelines megabytes and never reads would have it queue every request);
- idle connections, a new one included, close after `keep_alive_timeout_s`;
- a request that is not HTTP, or not HTTP/1.0 or 1.1, gets the service's JSON error body (400,
  505), not uvicorn's text or an answer as HTTP/1.1;
- from SIGTERM on, every answer says `Connection: close`, so clients take their next request elsewhere.

On SIGTERM the server goes unready, keeps serving for `shutdown_delay_s`, then has
`shutdown_timeout_s` for everything else: admitted requests, responses still being written,
uploads still arriving. Before it stops listening, it turns new connections away (their first
packet dropped: the client tries again a second later and is refused) and lets the handshakes
under way complete; the connections the kernel has accepted for it are then taken and answered
(503, `Connection: close`) rather than reset. A connection that has sent nothing yet keeps its
idle time to send its request. At the deadline the connections left are closed (an unanswered request gets 503), and a second
later aborted; then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.errors import error_json
from app.serving.tracing import request_id

if TYPE_CHECKING:
    from app.serving.state import AppState

log = logging.getLogger("app.http.server")

ABORT_AFTER_CLOSE_S = 1.0  # after the deadline, how long a closing connection may flush before it is cut
LATE_REQUEST_S = 1.0  # at shutdown, how long a connection between requests has for one to arrive once no other is answered
# At shutdown, how long handshakes already under way have to complete into the backlog once new ones are turned
# away: a round trip's time, with room for a busy machine.
HANDSHAKES_S = 0.1
# Bytes reach the parser this many at a time (a body of known length whole), so that one read of pipelined
# requests cannot queue thousands of them at once: the line is checked between slices.
PIPELINED_SLICE = 1024
SERVED_VERSIONS = ("1.0", "1.1")
WATCHDOG_GRACE_S = 5.0  # past the deadline, how long the event loop may take to finish before the process is ended


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 65536
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_timeout_s: float = 5.0
    max_pipelined: int = 16  # requests of one connection waiting behind the one being answered


def raw_response(status: int, error_type: str, message: str, extra_headers: tuple[tuple[str, str], ...] = (),
                 request_headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete HTTP/1.1 error response in the service's JSON format, for the protocol to write itself; its
    request id is the one `request_headers` carry (when they arrived whole), else a new one."""
    identifier = request_id(request_headers)
    body = error_json(message, error_type, identifier)
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close"),
               ("x-request-id", identifier)]
    lines = [f"{name}: {value}\r\n".encode("latin-1") for name, value in (*headers, *extra_headers)]
    return b"".join([STATUS_LINE[status], *lines, b"\r\n", body])


class _GatedFlow(FlowControl):
    """uvicorn's flow control, which reads on whenever a response completes or a handler asks for its body; here
    only while `may_read()` (no request-line full, no bytes held back from the parser)."""

    def __init__(self, transport: asyncio.Transport, may_read: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._may_read = may_read

    def resume_reading(self) -> None:
        if self._may_read():
            super().resume_reading()


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the protocol has already decided the answer."""


def limited_protocol(
    limits: HttpLimits,
    on_refused: Callable[[str], None] = lambda reason: None,
    is_draining: Callable[[], bool] = lambda: False,
) -> type[asyncio.Protocol]:
    """The httptools protocol with `limits`; `on_refused(reason)` counts each refusal; while `is_draining()`,
    every answer closes its connection."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._begun = False  # the parser has seen the first byte of a request it has not finished
            self._headers_done = False
            self._header_bytes = 0  # bytes received while reading headers (one read's worth approximate)
            self._header_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None
            self._refusal: tuple[int, str, str] | None = None
            self._held: bytes | None = None  # received, not yet parsed: requests already wait in line
            self._body_left: int | None = None  # of the request being read, when it said its Content-Length

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.flow = _GatedFlow(self.transport, self._may_read)
            # uvicorn arms its idle timer only after a response; a connection that never sends would stay open.
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

        def connection_lost(self, exc) -> None:
            self._cancel_timers()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            if not self._headers_done:
                self._header_bytes += len(data)
            if self._held is not None:  # the line is full: keep the bytes, read no more until it moves
                self._held += data
                self.flow.pause_reading()
                return
            self._feed(data)

        def _may_read(self) -> bool:
            return self._held is None and len(self.pipeline) < limits.max_pipelined

        def _feed(self, data: bytes) -> None:
            """Parse `data` a slice at a time; once the line of waiting requests is full, hold the rest back."""
            start, size = 0, len(data)
            if size <= PIPELINED_SLICE and len(self.pipeline) < limits.max_pipelined:  # most reads: one request
                if self._parse(data):
                    self._arm_timers()
                return
            view = memoryview(data)
            while start < size:
                if len(self.pipeline) >= limits.max_pipelined:
                    self._held = bytes(view[start:])
                    self.flow.pause_reading()
                    return
                step = min(size - start, PIPELINED_SLICE + (self._body_left or 0))
                if not self._parse(view[start : start + step]):
                    return
                start += step
            self._arm_timers()

        def _parse(self, data) -> bool:
            """Feed the parser; False once the connection was refused or handed over (stop feeding)."""
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return False
            except httptools.HttpParserError:
                if self._refusal is not None:
                    self._refuse(*self._refusal)
                else:
                    self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")
                return False
            return not self.transport.is_closing()

        def _arm_timers(self) -> None:
            # Timers only for a request that did not arrive whole in this read: most do, and pay nothing.
            if self._begun and not self._headers_done:
                if self._header_bytes > limits.max_header_bytes:
                    self._refuse_large_headers()
                elif self._header_timer is None:
                    self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timed_out)
            elif self._begun and self._body_timer is None:
                self._body_timer = self.loop.call_later(limits.body_timeout_s, self._body_timed_out)

        def _feed_held(self) -> None:
            if self._held is None or self.transport.is_closing() or len(self.pipeline) >= limits.max_pipelined:
                return
            data, self._held = self._held, None
            self._feed(data)
            if not self.transport.is_closing():
                self.flow.resume_reading()  # if the line has room left

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun = True

        def on_headers_complete(self) -> None:
            self._cancel(self._header_timer)
            self._header_timer = None
            size, length = len(self.url), None
            for name, value in self.headers:
                size += len(name) + len(value) + 4
                if name == b"content-length":
                    length = value
            if size > limits.max_header_bytes:
                self._refusal = self._large_headers()
                raise _Refused
            version = self.parser.get_http_version()
            if version not in SERVED_VERSIONS:
                self._refusal = (505, "http_version_not_supported", f"HTTP/{version} is not served; send HTTP/1.1 or HTTP/1.0")
                raise _Refused
            self._body_left = int(length) if length is not None and length.isdigit() else None
            self._headers_done = True
            super().on_headers_complete()
            if is_draining():
                self.cycle.keep_alive = False  # the answer says `Connection: close`: the next request goes elsewhere

        def on_body(self, body: bytes) -> None:
            if self._body_left is not None:
                self._body_left = max(0, self._body_left - len(body))
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._cancel(self._body_timer)
            self._body_timer = None
            self._begun = self._headers_done = False
            self._header_bytes = 0
            self._body_left = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # starts the next request in line; reads on if the line has room
            if self._begun and not self._headers_done:
                self._unset_keepalive_if_required()  # not idle: a next request has begun; its header timer runs
            if self._held is not None and not self.transport.is_closing():
                self.loop.call_soon(self._feed_held)  # not inside the response's send

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")

        def shutdown(self) -> None:
            if self.cycle is None and not self._begun:
                # New, no byte of a request yet: it was opened to send one, which is answered (`Connection:
                # close`) if it arrives before the idle timer, armed when the connection was made, closes it.
                return
            if self.cycle is None or self.cycle.response_complete:
                # No request being handled: between requests, or a request's head on its way. Closing now would
                # reset a request already sent; it gets a moment to arrive, and its answer says `Connection: close`.
                self.loop.call_later(LATE_REQUEST_S, self._close_if_idle)
                return
            # Being handled, its body perhaps still arriving (until the shutdown deadline, close_at_deadline): its
            # answer says `Connection: close`. Refusing it now would reset the connection under a body in flight.
            super().shutdown()

        def _close_if_idle(self) -> None:
            if self.transport.is_closing() or self._begun or not (self.cycle is None or self.cycle.response_complete):
                return
            if self.tasks:
                # Other requests are still being answered: the drain goes on, and a client slowed by the same load
                # may still be sending. Wait with the rest (the shutdown deadline bounds it), then a moment more.
                self.loop.call_later(LATE_REQUEST_S, self._close_if_idle)
                return
            self.transport.close()

        def close_after_answer(self) -> None:
            """The drain began: the answer being made, if any, says `Connection: close` (later ones do anyway)."""
            if self.cycle is not None and not self.cycle.response_started:
                self.cycle.keep_alive = False

        def close_at_deadline(self) -> None:
            """The shutdown deadline passed: answer what is unanswered with 503, close, abort a second later."""
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_started:
                self._refuse(503, "not_ready", "the server is shutting down", (("retry-after", "1"),))
            else:
                if self.cycle is not None:
                    self.cycle.disconnected = True
                    self.cycle.message_event.set()
                self.transport.close()
            self.loop.call_later(ABORT_AFTER_CLOSE_S, self.transport.abort)

        def _large_headers(self) -> tuple[int, str, str]:
            return 431, "headers_too_large", f"the request headers are larger than {limits.max_header_bytes} bytes"

        def _refuse_large_headers(self) -> None:
            self._refuse(*self._large_headers())

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if not self._headers_done:
                self._refuse(408, "request_timeout", f"the request headers did not arrive within {limits.header_timeout_s:g} s")

        def _body_timed_out(self) -> None:
            self._body_timer = None
            self._refuse(408, "request_timeout", f"the request body did not arrive within {limits.body_timeout_s:g} s")

        def _refuse(self, status: int, error_type: str, message: str, extra_headers=()) -> None:
            """Answer `status` (unless an answer has begun), stop the request's handler, and close."""
            if self.transport.is_closing():
                return
            self._cancel_timers()
            on_refused(error_type)
            # Before its headers are complete, `cycle` is the previous request's; after, this one's.
            in_flight = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
            answered = self._headers_done and self.cycle is not None and self.cycle.response_started
            if not in_flight and not answered:
                headers = (*extra_headers, *((n.decode(), v.decode()) for n, v in self.server_state.default_headers))
                known = self.cycle.scope["headers"] if self._headers_done and self.cycle is not None else ()
                self.transport.write(raw_response(status, error_type, message, headers, known))
            if self.cycle is not None:
                self.cycle.disconnected = True  # the handler's receive() sees a disconnect; its sends are dropped
                self.cycle.message_event.set()
            self.transport.close()

        def _cancel_timers(self) -> None:
            for timer in (self._header_timer, self._body_timer):
                self._cancel(timer)
            self._header_timer = self._body_timer = None

        @staticmethod
        def _cancel(timer: asyncio.TimerHandle | None) -> None:
            if timer is not None:
                timer.cancel()

    return LimitedHttpToolsProtocol


class DrainingServer(uvicorn.Server):
    """uvicorn closes its sockets on the first signal; this answers 503 while accepted work finishes first,
    and bounds the whole shutdown by the drain settings."""

    def __init__(self, config: uvicorn.Config, state: AppState, on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.state = state
        self._on_started = on_started  # called once the sockets listen (app.serving.supervisor's readiness of a process)
        self._draining = False
        self._drain_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline: float | None = None  # time.monotonic() by which the process has exited

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()
        elif self.started and sockets is not None:
            # One process given its socket (bound before its models loaded): uvicorn says where it listens only
            # when it bound the socket itself.
            self._log_started_message(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.started and self._on_started is not None:
            # A process of a pool (app.serving.supervisor) listens only once started: it has accepted nothing to drain.
            log.info("received %s before listening: exiting", signal.Signals(sig).name)
            logging.shutdown()
            os._exit(0)
        if self._draining or not self.started or self._loop is None:
            self.should_exit = self.force_exit = True  # a second signal, or not serving yet: stop now
            return
        self._draining = True
        settings = self.state.settings
        self._deadline = time.monotonic() + settings.shutdown_delay_s + settings.shutdown_timeout_s
        _start_watchdog(self._deadline + WATCHDOG_GRACE_S)
        # A signal handler can interrupt the loop mid-step: hand the work over instead of touching the loop here.
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, signal_name: str) -> None:
        log.info("received %s: draining", signal_name)
        for connection in self._our_connections():
            connection.close_after_answer()
        loop = asyncio.get_running_loop()
        self._drain_task = loop.create_task(self._drain_then_exit(), name="drain")
        loop.call_later(max(0.0, self._deadline - time.monotonic()), self._close_connections)

    async def _drain_then_exit(self) -> None:
        await self.state.drain(self.state.settings.shutdown_delay_s, self._deadline)
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        if self._deadline is not None:
            # uvicorn waits this long for connections and handlers, then cancels the handlers.
            self.config.timeout_graceful_shutdown = max(0.0, self._deadline - time.monotonic()) + ABORT_AFTER_CLOSE_S
        await self._take_backlog()
        await super().shutdown(sockets)

    async def _take_backlog(self) -> None:
        """Accept what the kernel has accepted for us before the listening sockets close, which would reset it:
        each such connection is served as any other, and with the server closing, its request gets 503."""
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return self.config.http_protocol_class(  # type: ignore[call-arg]
                config=self.config, server_state=self.server_state, app_state=self.lifespan.state
            )

        # asyncio stops accepting first, and the connections it has begun to accept attach to their server (a
        # step of a task each) before it closes: closed, it would refuse them, and drop them with their request.
        for server in self.servers:
            for listener in server.sockets:
                loop.remove_reader(listener.fileno())
        for _ in range(2):
            await asyncio.sleep(0)
        # A connection the kernel completes between the last accept and the close would be reset with its request
        # sent; so new ones are turned away first, and those under way complete into the backlog meanwhile.
        for server in self.servers:
            for listener in server.sockets:
                turn_away_new_connections(listener)
        await asyncio.sleep(HANDSHAKES_S)
        accepted: list[socket.socket] = []
        for server in self.servers:
            # Copies of the listening sockets keep them listening while the server closes; each is then emptied
            # and closed.
            listening = [socket.socket(fileno=os.dup(listener.fileno())) for listener in server.sockets]
            server.close()
            for sock in listening:
                with sock:
                    sock.setblocking(False)
                    while True:
                        try:
                            accepted.append(sock.accept()[0])
                        except OSError:  # nothing left (BlockingIOError), or the socket is gone
                            break
        connections = []
        for connection in accepted:
            connection.setblocking(False)
            connections.append(loop.connect_accepted_socket(protocol, connection))
        if connections:
            log.info("answering %d connections taken from the listen backlog", len(connections))
            await asyncio.gather(*connections, return_exceptions=True)

    def _our_connections(self) -> list:
        return [c for c in self.server_state.connections if hasattr(c, "close_at_deadline")]

    def _close_connections(self) -> None:
        left = self._our_connections()
        if left:
            log.warning("shutdown timeout reached: closing %d connections", len(left))
        for connection in left:
            connection.close_at_deadline()


# A classic BPF socket filter: drop a TCP segment whose flags are SYN without ACK (a connection's first packet),
# keep every other. A socket filter sees the TCP header at offset 0; byte 13 holds the flags.
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN: next, else skip one
    (0x06, 0, 0, 0),  # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: keep whole
)
_SO_ATTACH_FILTER = 26


def turn_away_new_connections(listener: socket.socket) -> None:
    """From now on `listener` drops each new connection's SYN (the client tries again a second later, and by
    then finds the socket closed, or another process of the pool), while handshakes under way and connections
    already in its backlog complete as before. Linux only; elsewhere nothing changes."""
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in _DROP_SYN))  # struct sock_filter[]
    fprog = struct.pack("HP", len(_DROP_SYN), ctypes.addressof(program))  # struct sock_fprog: length, pointer
    with contextlib.suppress(OSError, AttributeError):
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def _start_watchdog(deadline: float) -> None:
    """Ends the process if it is still running at `deadline`: a drain that always ends, even if the loop hangs."""

    def watch() -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        log.error("shutdown did not finish in time; exiting")
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="shutdown-watchdog", daemon=True).start()


def uvicorn_config(app, state: AppState) -> uvicorn.Config:
    settings = state.settings
    limits = HttpLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keep_alive_timeout_s=settings.keep_alive_timeout_s,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=limited_protocol(
            limits,
            on_refused=lambda reason: state.metrics.http_refused.labels(reason).inc(),
            is_draining=lambda: state.draining,
        ),
        timeout_keep_alive=limits.keep_alive_timeout_s,
        server_header=False,  # what runs here is nobody's business
        access_log=False,  # the app writes each request's line, with its model, queue wait and request id
        lifespan="on",
        log_config=None,  # uvicorn's lines go through the service's own handler (app.serving.logs), off the event loop
    )
