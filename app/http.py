"""HTTP plumbing shared by every route: request metrics and the one error format.

Every error a client can see, FastAPI's own included, is `{"error", "error_type"}`
with the status from app.errors' table; nothing leaks a traceback or a file path.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import validation
from app.errors import (
    ClientClosedRequest,
    InvalidInput,
    InvalidJSON,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    error_body,
    status_of,
)
from app.metrics import Metrics
from app.workers import Workers

log = logging.getLogger("app.http")

T = TypeVar("T")

ENDPOINTS = frozenset({"/healthz", "/readyz", "/info", "/metrics", "/models", "/docs", "/redoc", "/openapi.json"})
MODEL_ENDPOINT = "/models/{name}"
# FastAPI answers 400 itself only when the body cannot be decoded at all (bytes that are not UTF-8).
PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})
HTTP_ERROR_TYPES = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class RequestMetrics:
    """Counts every request by endpoint, model and status and times it end to end (pure ASGI: no buffering).

    The endpoint label is a route's path, so the label set stays bounded whatever paths clients send;
    the model is the one a handler chose (`request.state.model`), known only once it ran.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = ENDPOINTS | endpoints
        # (endpoint, model, status) -> its counter and histogram: labels() takes a lock and builds a key each call.
        # Bounded like the label set: endpoints are route paths, models the ones loaded, statuses the ones sent.
        self._children: dict[tuple[str, str, int], tuple] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope["path"]
            endpoint = path if path in self.endpoints else MODEL_ENDPOINT if path.startswith("/models/") else "other"
            model = scope.get("state", {}).get("model", "")
            children = self._children.get((endpoint, model, status))
            if children is None:
                children = (self.metrics.requests.labels(endpoint, model, str(status)),
                            self.metrics.request_latency.labels(endpoint, model))
                self._children[(endpoint, model, status)] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


class BodySizeLimit:
    """413 for bodies over `max_bytes`: at once from Content-Length, or as soon as a chunked body passes it.

    The body is never held whole. (Starlette's own `max_body_size` answers in plain text
    whenever Content-Length is over the limit; this keeps the JSON error format.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for key, value in scope["headers"] if key == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(PayloadTooLarge(self._message()))(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI lets an HTTPException out of body parsing unchanged; our handler formats it.
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, receive_within_limit, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"


async def unless_disconnected(scope: Scope, receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, or cancel it when the client hangs up first.

    Starlette does not cancel a handler whose client left; without this, queued
    sequences would still reach the model and compute answers nobody reads.
    `work` runs in the caller's task, which a hang-up cancels; a watcher task reading
    `receive()` tells the hang-up (the body has been read, so the next message is the disconnect).
    """
    current = asyncio.current_task()
    gone = False

    def hang_up() -> None:
        nonlocal gone
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(_disconnected(receive, then=hang_up))
    try:
        return await work
    except (asyncio.CancelledError, ServiceError):
        # `work` may fail on its way out; the client is gone either way. Cancelled by anyone else: still cancelled.
        if not gone or current.uncancel() > 0:
            raise
        raise ClientClosedRequest("the client closed the connection before the answer") from None
    finally:
        watcher.cancel()


async def _disconnected(receive: Receive, then: Callable[[], None]) -> None:
    """Calls `then` when the ASGI server reports `http.disconnect` (the body has already been read).

    Called from here, in the watcher's own step, `then` runs only while the caller's task waits:
    never once it has moved on, since it cancels this task before it does.
    """
    while (await receive())["type"] != "http.disconnect":
        pass
    then()


def install_error_handlers(app: FastAPI, bodies: Mapping[str, validation.BodyRules]) -> None:
    """`bodies`: each POST route's rules for validation messages (app.validation)."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if request.method == "POST" and not is_json(request.headers.get("content-type")):
            return error_response(UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`"))
        if any(error.get("type") == "json_invalid" for error in errors):
            return error_response(InvalidJSON("the body is not valid JSON"))
        body_missing = any(error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",) for error in errors)
        if exc.body is None and body_missing:
            return error_response(InvalidJSON("the body is empty; send a JSON object such as {\"inputs\": \"...\"}"))
        return error_response(InvalidInput(validation.describe(errors, bodies.get(request.url.path))))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(str(exc.detail), error_type), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal error", "internal"), status_code=500)


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.error_type), status_code=status_of(error), headers=error.headers)


async def json_off_loop(content, executor: Workers, headers: dict[str, str] | None = None) -> Response:
    """A JSON response rendered on `executor`, one list item at a time.

    A fill-mask answer can be megabytes; json.dumps holds the GIL for as long as one call
    runs, so rendering it whole, even on another thread, would stall the event loop. Item
    by item, the loop gets its turn between them. The bytes equal JSONResponse's.
    """
    body = await executor.run(render_json, content)
    return Response(body, media_type="application/json", headers=headers)


def render_json(content) -> bytes:
    if not isinstance(content, list):
        return _dumps(content)
    return b"[" + b",".join(_dumps(item) for item in content) + b"]"


def _dumps(content) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def is_json(content_type: str | None) -> bool:
    """The media types FastAPI parses as JSON: application/json and application/*+json (none given: JSON too)."""
    if not content_type:
        return True
    if content_type.lower() in PLAIN_JSON:  # what nearly every client sends: no header parsing
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))
