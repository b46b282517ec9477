"""Where the pieces are put together: the ASGI app (`uvicorn --factory app.main:create_app`, or `create_app(settings)`
in tests) and the process that serves it (`python -m app`, alone or as one process of a pool)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.http.app import ServiceApp
from app.http.routes import build_routes
from app.http.server import DrainingServer, uvicorn_config
from app.serving.logs import configure_logging
from app.serving.metrics import Metrics
from app.serving.model_folder import ModelFolderError
from app.serving.tracing import TracingError
from app.serving.supervisor import bind_or_exit, claim_port, leave_metrics, member_started
from app.settings import Settings, exit_with, settings_or_exit
from app.serving.state import AppState
from app.tasks.registry import build_tasks

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, state: AppState | None = None) -> ServiceApp:
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

    def build_state() -> AppState:
        configure_logging(settings.log_level, settings.log_format)
        return state if state is not None else AppState.build(settings, metrics, tasks)

    return ServiceApp(settings, metrics, build_routes(tasks), build_state, warm_first=settings.processes > 1)


def state_or_exit(settings: Settings, metrics: Metrics | None = None) -> AppState:
    """Every model loaded and tracing configured; or one line naming what is wrong, and exit 1."""
    try:
        return AppState.build(settings, metrics or Metrics(), build_tasks(settings))
    except (ModelFolderError, TracingError) as exc:
        exit_with(str(exc))


def serve(settings: Settings) -> None:
    """`python -m app` as one process: the port claimed and bound first (a taken one is said in one line before any
    model loads), then the models, then serving until a signal has drained it."""
    claim = claim_port(settings.port)  # noqa: F841 (held until the process ends)
    sock = bind_or_exit(settings.host, settings.port, reuse_port=False)
    state = state_or_exit(settings)
    DrainingServer(uvicorn_config(create_app(state=state), state), state).run(sockets=[sock])


def serve_member(settings: Settings, metrics_dir: Path, ready, supervisor_pid: int) -> None:
    """One process of a pool (app.serving.supervisor): the models, then the shared port, then `ready` set once it
    listens."""
    member_started(supervisor_pid)
    configure_logging(settings.log_level, settings.log_format)
    state = state_or_exit(settings, Metrics(multiprocess_dir=metrics_dir))
    sock = bind_or_exit(settings.host, settings.port, reuse_port=True)
    try:
        DrainingServer(uvicorn_config(create_app(state=state), state), state, on_started=ready.set).run(sockets=[sock])
    finally:
        if os.getppid() != supervisor_pid:
            leave_metrics(metrics_dir)
