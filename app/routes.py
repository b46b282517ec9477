"""The routes: the operational ones here, the inference ones declared here and answered by app.inference.

Every task gets its fixed endpoint (`/classify`, ...), which serves that task's default
model, and every model answers at `/models/{name}` in the Hugging Face Inference API's
shape, so `huggingface_hub.InferenceClient(model=".../models/NAME")` works unchanged.
Those POSTs never reach FastAPI (app.inference.InferenceEndpoints answers them in front of
it); their declarations here give the OpenAPI document their bodies, answers and errors.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import __version__, validation
from app.errors import error_body
from app.inference import check_api_key, parameters_of
from app.model import ServedModel
from app.schemas import ErrorBody
from app.state import AppState
from app.tasks import Task

ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)}


def get_state(request: Request) -> AppState:
    return request.app.state.services


# `async def` on purpose: FastAPI runs a plain `def` dependency on its thread pool, a thread hop per request.
async def require_api_key_if_protected(request: Request) -> None:
    settings = get_state(request).settings
    if settings.api_key is not None and settings.protect_health_and_metrics:
        check_api_key([value.encode("latin-1") for value in request.headers.getlist("authorization")], settings.api_key.get_secret_value())


def build_router(tasks: Mapping[str, Task]) -> APIRouter:
    """Every route: one POST per task (its default model), the model routes, and the operational ones."""
    router = APIRouter(dependencies=[Depends(require_api_key_if_protected)])
    inference = APIRouter(responses=ERRORS)
    for task in tasks.values():
        inference.add_api_route(
            task.route, _declared(task), methods=["POST"], response_model=task.response,
            summary=f"{task.summary} ({task.name}, the default model)",
        )
    inference.add_api_route(
        "/models/{name}", _post_model_declared, methods=["POST"], summary="Run the named model on a body of its task",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [{"$ref": f"#/components/schemas/{task.request.__name__}"} for task in tasks.values()]}}}}},
        responses={200: {"description": "the answer of the model's task", "content": {"application/json": {"schema": {}}}}},
    )
    router.add_api_route("/models", list_models, methods=["GET"], summary="The models served, with their tasks and state")
    router.add_api_route(
        "/models/{name}", get_model, methods=["GET"], summary="One model", responses={404: {"model": ErrorBody}}
    )
    router.add_api_route("/healthz", healthz, methods=["GET"], summary="Liveness: the process answers")
    router.add_api_route(
        "/readyz", readyz, methods=["GET"], summary="Readiness: models loaded, warm and healthy",
        responses={503: {"model": ErrorBody}},
    )
    router.add_api_route("/info", info, methods=["GET"], summary="Version, limits, and every model")
    router.add_api_route("/metrics", metrics, methods=["GET"], summary="Prometheus metrics", response_class=PlainTextResponse)
    router.include_router(inference)
    return router


class AnsweredElsewhere(RuntimeError):
    """An inference route reached FastAPI: app.inference.InferenceEndpoints is not in front of it."""


def _declared(task: Task):
    async def handler(body, request: Request) -> Response:
        raise AnsweredElsewhere(f"POST {task.route} is answered by app.inference.InferenceEndpoints")

    # FastAPI reads the body's type from the signature; each task's route gets its own.
    handler.__signature__ = inspect.Signature([
        inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=task.request),
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
    ])
    handler.__name__ = task.name.replace("-", "_")
    return handler


async def _post_model_declared(name: str) -> Response:
    raise AnsweredElsewhere("POST /models/{name} is answered by app.inference.InferenceEndpoints")


def describe_model(state: AppState, model: ServedModel) -> dict:
    tasks = state.models.tasks_of(model)
    description = model.info()
    description["tasks"] = [task.name for task in tasks]
    description["default_for"] = [task for task, name in state.models.defaults().items() if name == model.name]
    description["ready"] = model.warm and state.healthy(model) and not state.draining
    for task in tasks:
        description.update(task.info(model))
    return description


async def list_models(request: Request) -> dict:
    state = get_state(request)
    return {"models": [describe_model(state, model) for model in state.models]}


async def get_model(name: str, request: Request) -> dict:
    state = get_state(request)
    return describe_model(state, state.models.get(name))


async def healthz() -> dict:
    return {"status": "ok"}


async def readyz(request: Request):
    ready, reason = get_state(request).readiness()
    if not ready:
        return JSONResponse(error_body(reason, "not_ready"), status_code=503, headers={"Retry-After": "1"})
    return {"status": "ready"}


async def info(request: Request) -> dict:
    import onnxruntime

    state = get_state(request)
    return {
        "version": __version__,
        "onnxruntime": onnxruntime.__version__,
        "ready": state.readiness()[0],
        "processes": state.settings.processes,
        "max_inputs": state.settings.max_inputs,
        "request_timeout_s": state.settings.request_timeout_s,
        "defaults": state.models.defaults(),
        "models": {model.name: describe_model(state, model) for model in state.models},
    }


async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(get_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def body_rules(tasks: Mapping[str, Task]) -> dict[str, validation.BodyRules]:
    """Each task route's body, what its union fields accept and which parameters belong to other tasks."""
    return {
        task.route: validation.BodyRules(task.request, task.expected, parameters_of(tasks, {task.name}))
        for task in tasks.values()
    }
