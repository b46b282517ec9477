"""The ASGI app: `uvicorn app.main:app`, or `create_app(settings)` in tests and `python -m app`."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.http import RequestMetrics, install_error_handlers
from app.metrics import Metrics
from app.routes import router
from app.settings import Settings
from app.state import AppState

log = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Nothing is loaded here: the lifespan reads settings (the environment, unless given) and builds the state."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        resolved = settings if settings is not None else Settings()
        _configure_logging(resolved.log_level)
        state = AppState.build(resolved, metrics)
        app.state.services = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="roberta-serve",
        version=__version__,
        description="Dynamic-batching inference for fine-tuned RoBERTa models on ONNX Runtime.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    install_error_handlers(app)
    app.include_router(router)
    return app


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(level.upper())


app = create_app()
