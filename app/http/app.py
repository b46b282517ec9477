"""The ASGI app: one router, one place where errors become answers, every request counted and timed.

A request's path is looked up in a table (a dict by method and path, and `/models/{name}`),
not matched against patterns, and its handler gets the state the lifespan built. On two
cores the event loop's CPU per request is CPU the model does not get, so the path from the
server to a handler is a lookup and a call.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.errors import MethodNotAllowed, NotFound, PayloadTooLarge, ServiceError
from app.http import docs
from app.http.openapi import TITLE, openapi_document
from app.http.requests import check_api_key, too_large
from app.http.responses import error_response, json_response
from app.http.routes import MODEL_ROUTE, MODELS_PREFIX, Call, Route
from app.serving.logs import log_line
from app.serving.metrics import Metrics
from app.serving.tracing import CURRENT, RequestRecord, request_id
from app.settings import Settings
from app.tasks.base import NO_TRACING

if TYPE_CHECKING:
    from app.serving.state import AppState

log = logging.getLogger("app.http")
access_log = logging.getLogger("app.access")


def access_fields(record: RequestRecord, status: int, size: int, seconds: float) -> dict:
    """What the access line says of a request besides its method, path and status."""
    wait = record.queue_wait_s
    fields = {"method": record.method, "route": record.route, "model": record.model or None, "status": status,
              "bytes": size, "duration_ms": round(seconds * 1000, 3),
              "queue_ms": round(wait * 1000, 3) if wait is not None else None,
              "batch_size": record.batch_size or None, "request_id": record.id}
    if record.trace_id is not None:
        fields["trace_id"], fields["span_id"] = record.trace_id, record.span_id
    return fields

DOCS_ROUTES = ("/docs", "/redoc", "/openapi.json")
OPENAI_PREFIX = "/v1/"  # routes in OpenAI's shape (and Cohere's /v1/rerank): errors too
MAX_LOGGED_PATH = 256  # characters of a request's path in its access line; a decoded newline is written escaped
# Probes and scrapes, every few seconds from every replica: logged, not traced.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class ServiceApp:
    """The service's ASGI app. `build_state` runs in the lifespan (or the state was built before, by
    `python -m app`, which loads the models before it binds the port)."""

    def __init__(self, settings: Settings, metrics: Metrics, routes: Sequence[Route],
                 build_state: Callable[[], AppState], warm_first: bool = False) -> None:
        self.settings = settings
        self.metrics = metrics
        self.routes = list(routes)
        self._build_state = build_state
        self._warm_first = warm_first
        self.services: AppState | None = None
        self._fixed = {(route.method, route.path): route for route in self.routes if route.path != MODEL_ROUTE}
        self._model = {route.method: route for route in self.routes if route.path == MODEL_ROUTE}
        self._allowed: dict[str, list[str]] = {}
        for method, path in self._fixed:
            self._allowed.setdefault(path, []).append(method)
        self._docs = settings.docs
        if self._docs:
            self._allowed.update({path: ["GET"] for path in DOCS_ROUTES})
        self._key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self._labels = frozenset(self._allowed) | {"/models"}
        # (endpoint, model, status) -> its counter and histogram: labels() takes a lock and builds a key each call.
        # Bounded like the label set: endpoints are route paths, models the ones loaded, statuses the ones sent.
        self._children: dict[tuple[str, str, int], tuple] = {}
        self._document: dict | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here; the server closes the connection
        method, path = scope["method"], scope["path"]
        if method == "HEAD":
            # HEAD is GET without the body: the app answers a GET, and the server, whose scope still says HEAD,
            # sends only the head (uvicorn drops the body of an answer to HEAD).
            scope = {**scope, "method": "GET"}
        record = RequestRecord(request_id(scope["headers"]), method, self._endpoint(path))
        tracing = self.services.tracing if self.services is not None else NO_TRACING
        if tracing.enabled and record.route not in UNTRACED:
            tracing.start(record, scope["headers"])
        current = CURRENT.set(record)  # for the lines logged while it is answered (app.serving.logs)
        status, size = 500, 0

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            try:
                response = await self._answer(scope, receive, record)
            except Exception as exc:  # a ServiceError as its table says; anything else a logged 500
                response = error_response(exc, openai=path.startswith(OPENAI_PREFIX), request_id=record.id)
            response.raw_headers.append((b"x-request-id", record.id.encode("ascii")))
            size = len(getattr(response, "body", b""))
            await response(scope, receive, send_and_record)
        finally:
            seconds = time.monotonic() - record.started
            self._record(record, status, seconds)
            tracing.finish(record, status)
            if access_log.isEnabledFor(logging.INFO):
                shown = path[:MAX_LOGGED_PATH] if path.isprintable() else path[:MAX_LOGGED_PATH].encode("unicode_escape").decode()
                log_line(access_log, logging.INFO, f"{method} {shown} {status}", access_fields(record, status, size, seconds))
            CURRENT.reset(current)

    def _endpoint(self, path: str) -> str:
        """The path as the metrics and the access line name its route: bounded, whatever clients send."""
        return path if path in self._labels else MODEL_ROUTE if path.startswith(MODELS_PREFIX) else "other"

    async def _answer(self, scope: Scope, receive: Receive, record: RequestRecord) -> Response:
        method, path = scope["method"], scope["path"]
        declared = next((value for key, value in scope["headers"] if key == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            raise PayloadTooLarge(too_large(self.settings.max_body_bytes))  # before anything reads it
        route, name = self._route(method, path)
        state = self.services
        if state is None:  # a request before the lifespan started: only a server without one sends it
            raise ServiceError("the app has not started")
        if self._key is not None and (route is None and self.settings.protect_health_and_metrics or
                                      route is not None and (route.inference or self.settings.protect_health_and_metrics)):
            check_api_key(scope, self._key)
        if route is None:
            return self._docs_page(path)
        return await route.handler(Call(state, scope, receive, record, name))

    def _route(self, method: str, path: str) -> tuple[Route | None, str | None]:
        """The route and `{name}`; None for the docs pages; 404 or 405 for anything else."""
        route = self._fixed.get((method, path))
        if route is not None:
            return route, None
        if path.startswith(MODELS_PREFIX):
            name = path[len(MODELS_PREFIX):]
            if name and "/" not in name:
                route = self._model.get(method)
                if route is None:
                    raise MethodNotAllowed("use GET or POST on /models/{name}", headers={"Allow": "GET, POST"})
                return route, name
        if self._docs and (path in DOCS_ROUTES or path.startswith(docs.ASSETS)):
            if method != "GET":
                raise MethodNotAllowed(f"use GET on {path}", headers={"Allow": "GET"})
            return None, None
        allowed = self._allowed.get(path)
        if allowed is not None:
            raise MethodNotAllowed(f"use {' or '.join(allowed)} on {path}", headers={"Allow": ", ".join(allowed)})
        raise NotFound(self._not_found(method, path))

    def _not_found(self, method: str, path: str) -> str:
        models = self.services.models if self.services is not None else None
        served = set(models.defaults()) if models is not None else set()
        answered = models.answered() if models is not None else set()
        routes = sorted({f"{route.method} {route.path}" for route in self.routes
                         if route.task is None or route.task.name in (answered if route.names_model else served)})
        close = difflib.get_close_matches(path[:100], [route.split(" ", 1)[1] for route in routes], n=1, cutoff=0.7)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"no route {method} {path[:100]}; {hint}the routes are: {', '.join(routes)}"

    def _docs_page(self, path: str) -> Response:
        if path == "/openapi.json":
            return json_response(self.openapi())
        if path == "/docs":
            return docs.swagger_page(TITLE)
        if path == "/redoc":
            return docs.redoc_page(TITLE)
        return docs.asset(path)

    def openapi(self) -> dict:
        """The document for the models loaded (made once they are: the lifespan has run)."""
        if self._document is None:
            models = self.services.models if self.services is not None else None
            served = set(models.defaults()) if models is not None else set()
            answered = models.answered() if models is not None else set()
            protected = self._key is not None and self.settings.protect_health_and_metrics
            self._document = openapi_document(self.routes, served, protected, answered)
        return self._document

    def _record(self, record: RequestRecord, status: int, seconds: float) -> None:
        endpoint, model = record.route, record.model
        children = self._children.get((endpoint, model, status))
        if children is None:
            children = (self.metrics.requests.labels(endpoint, model, str(status)),
                        self.metrics.request_latency.labels(endpoint, model))
            self._children[(endpoint, model, status)] = children
        children[0].inc()
        # A traced request's id beside its bucket (an exemplar, in the OpenMetrics exposition): a slow bucket on a
        # dashboard leads to its trace.
        children[1].observe(seconds, {"trace_id": record.trace_id} if record.trace_id is not None else None)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.services = self._build_state()
                    await self.services.start(warm_first=self._warm_first)
                except Exception as exc:
                    log.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.services is not None:
                    await self.services.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
