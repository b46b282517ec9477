"""The ASGI app: `python -m app`, `uvicorn --factory app.main:create_app`, or `create_app(settings)` in tests."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.docs import install_docs
from app.http import BodySizeLimit, RequestMetrics, install_error_handlers
from app.inference import InferenceEndpoints
from app.metrics import Metrics
from app.model_folder import ModelFolderError
from app.routes import body_rules, build_router
from app.logs import configure_logging
from app.settings import Settings, exit_with, settings_or_exit
from app.state import AppState
from app.tasks import build_tasks

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, state: AppState | None = None) -> FastAPI:
    """The app for `settings`, its models loaded in the lifespan; or for a `state` already built.

    With neither it is the factory of `uvicorn --factory app.main:create_app`: settings come from
    the environment and models load at once, so a bad setting or model exits 1 with one line,
    before the port is bound, as `python -m app` does.
    """
    if settings is None and state is None:
        settings = settings_or_exit(cli=False)
        if settings.processes > 1:  # uvicorn runs this app; its own --workers is the pool here
            log.warning("ROBERTA_PROCESSES=%d is for python -m app; under uvicorn this is one process", settings.processes)
            settings = settings.model_copy(update={"processes": 1})
        state = state_or_exit(settings)
    settings = settings if settings is not None else state.settings
    metrics = state.metrics if state is not None else Metrics()
    tasks = state.tasks if state is not None else build_tasks(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        services = state if state is not None else AppState.build(settings, metrics, tasks)
        app.state.services = services
        await services.start(warm_first=settings.processes > 1)
        try:
            yield
        finally:
            await services.stop()

    app = ServiceApp(
        title="roberta-serve",
        version=__version__,
        description="Dynamic-batching inference for fine-tuned RoBERTa models on ONNX Runtime.",
        lifespan=lifespan,
        docs_url=None,  # app.docs serves them, offline and behind the same key as /metrics
        redoc_url=None,
        openapi_url=None,
        # No 307 to the path without its trailing slash: its Location would be built from the client's Host
        # header, and sent before the key is checked. `/models/x/` is a JSON 404 like any unknown path.
        redirect_slashes=False,
    )
    bodies = body_rules(tasks)
    fastapi = partial(FastAPI.__call__, app)
    app.front = RequestMetrics(
        BodySizeLimit(InferenceEndpoints(fastapi, tasks=tasks, bodies=bodies), max_bytes=settings.max_body_bytes),
        metrics=metrics, endpoints=frozenset(task.route for task in tasks.values()),
    )
    install_error_handlers(app, bodies)
    app.include_router(build_router(tasks))
    if settings.docs:
        install_docs(app)
    return app


class ServiceApp(FastAPI):
    """FastAPI behind the service's own ASGI layers: request metrics, the body limit, then the inference POSTs.

    Those run in front of FastAPI's stack, not inside it: an inference POST never uses its
    telemetry check, its error and body-limit middleware or its routing, and on two cores the
    event loop's CPU per request is CPU the model does not get. Every other request goes on
    to FastAPI, through the same two layers first.
    """

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            # HEAD is GET without the body: the app answers a GET, and the server, whose scope still says HEAD,
            # sends only the head (uvicorn drops the body of an answer to HEAD).
            scope = {**scope, "method": "GET"}
        scope["app"] = self  # as Starlette sets it: app.inference reads the services from it
        await self.front(scope, receive, send)


def state_or_exit(settings: Settings, metrics: Metrics | None = None) -> AppState:
    """Every model loaded; or one line naming the model and what is wrong, and exit 1."""
    try:
        return AppState.build(settings, metrics or Metrics())
    except ModelFolderError as exc:
        exit_with(str(exc))
