"""The ASGI app: `uvicorn --factory app.main:create_app`, `python -m app`, or `create_app(settings)` in tests."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.http import BodySizeLimit, RequestMetrics, install_error_handlers
from app.metrics import Metrics
from app.routes import router
from app.settings import Settings
from app.state import AppState

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, state: AppState | None = None) -> FastAPI:
    """Models load in the lifespan, unless `state` was built already (`python -m app` does, to fail before binding)."""
    settings = settings if settings is not None else (state.settings if state is not None else Settings())
    metrics = state.metrics if state is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        services = state if state is not None else AppState.build(settings, metrics)
        app.state.services = services
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="roberta-serve",
        version=__version__,
        description="Dynamic-batching inference for fine-tuned RoBERTa models on ONNX Runtime.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    install_error_handlers(app)
    app.include_router(router)
    return app


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(level.upper())
