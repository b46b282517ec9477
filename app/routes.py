"""Thin handlers: parse, pick the model, hand the body to its task, send the answer.

Every task gets its fixed endpoint (`/classify`, ...), which serves that task's default
model, and every model answers at `/models/{name}` in the Hugging Face Inference API's
shape, so `huggingface_hub.InferenceClient(model=".../models/NAME")` works unchanged.
"""

from __future__ import annotations

import inspect
import math
import secrets
import time
from collections.abc import Mapping

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from app import __version__, validation
from app.errors import InvalidInput, InvalidJSON, TooManyInputs, Unauthorized, UnsupportedMediaType, error_body
from app.http import Utf8JsonRoute, is_json, json_off_loop, unless_disconnected
from app.model import ServedModel
from app.schemas import ErrorBody
from app.state import AppState
from app.tasks import Task

ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)}
TIMEOUT_HEADER = "x-request-timeout"


def get_state(request: Request) -> AppState:
    return request.app.state.services


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency on its thread
# pool, a thread hop per request that costs more than the check itself.
async def require_api_key(request: Request) -> None:
    key = get_state(request).settings.api_key
    if key is None:
        return
    _check_api_key(request, key.get_secret_value())


async def require_api_key_if_protected(request: Request) -> None:
    settings = get_state(request).settings
    if settings.api_key is not None and settings.protect_health_and_metrics:
        _check_api_key(request, settings.api_key.get_secret_value())


def _check_api_key(request: Request, key: str) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise Unauthorized("missing or wrong API key; send `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"})


def deadline_of(request: Request, arrived: float) -> float:
    """The server's default deadline, or the one the client asks for in X-Request-Timeout (seconds)."""
    settings = get_state(request).settings
    asked = request.headers.get(TIMEOUT_HEADER)
    if asked is None:
        return arrived + settings.request_timeout_s
    try:
        seconds = float(asked)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= settings.max_request_timeout_s:  # also false for nan and inf
        raise InvalidInput(
            f"X-Request-Timeout must be a number of seconds above 0 and at most {settings.max_request_timeout_s:g}"
        )
    return arrived + seconds


def build_router(tasks: Mapping[str, Task]) -> APIRouter:
    """Every route: one POST per task (its default model), the model routes, and the operational ones."""
    router = APIRouter(dependencies=[Depends(require_api_key_if_protected)])
    inference = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, route_class=Utf8JsonRoute)
    for task in tasks.values():
        inference.add_api_route(
            task.route, _default_model_handler(task), methods=["POST"], response_model=task.response,
            summary=f"{task.summary} ({task.name}, the default model)",
        )
    inference.add_api_route(
        "/models/{name}", post_model, methods=["POST"], summary="Run the named model on a body of its task",
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


def _default_model_handler(task: Task):
    async def handler(body, request: Request) -> Response:
        arrived = time.monotonic()
        state = get_state(request)
        deadline = deadline_of(request, arrived)
        return await _run(request, state, task, state.model(task=task.name), body, deadline)

    # FastAPI reads the body's type from the signature; each task's route gets its own.
    handler.__signature__ = inspect.Signature([
        inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=task.request),
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
    ])
    handler.__name__ = task.name.replace("-", "_")
    return handler


async def post_model(name: str, request: Request) -> Response:
    arrived = time.monotonic()
    state = get_state(request)
    deadline = deadline_of(request, arrived)
    model = state.model(name)
    raw = await _json_body(request)
    task = state.models.task_for(model, raw if isinstance(raw, dict) else {})
    try:
        body = task.request.model_validate(raw)
    except ValidationError as exc:
        rules = validation.BodyRules(task.request, task.expected, parameters_elsewhere(state, model))
        raise InvalidInput(validation.describe(exc.errors(), rules, model_name=model.name)) from None
    return await _run(request, state, task, model, body, deadline)


async def _run(request: Request, state: AppState, task: Task, model: ServedModel, body: BaseModel, deadline: float) -> Response:
    count = task.count(body)
    if count == 0:
        raise InvalidInput("inputs is an empty list; send at least one text")
    if count > state.settings.max_inputs:
        raise TooManyInputs(f"{count} {task.counted} in one request; at most {state.settings.max_inputs} are allowed")
    request.state.model = model.name
    with state.admit():
        answer = await unless_disconnected(request, task(model, body, deadline))
    if answer.large:  # up to megabytes: rendered off the event loop
        return await json_off_loop(answer.content, state.executor, headers=answer.headers)
    return JSONResponse(answer.content, headers=answer.headers)


async def _json_body(request: Request):
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`")
    if not await request.body():
        raise InvalidJSON("the body is empty; send a JSON object such as {\"inputs\": \"...\"}")
    try:
        return await request.json()
    except (ValueError, RecursionError):
        raise InvalidJSON("the body is not valid JSON") from None


def parameters_elsewhere(state: AppState, model: ServedModel) -> dict[str, str]:
    """Parameter name -> the task that takes it, for the tasks `model` does not answer."""
    return _parameters_of(state.tasks, {task.name for task in state.models.tasks_of(model)})


def _parameters_of(tasks: Mapping[str, Task], leave_out: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for task in tasks.values():
        parameters = task.request.model_fields.get("parameters")
        annotation = parameters.annotation if parameters is not None else None
        if task.name not in leave_out and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for field in annotation.model_fields:
                found.setdefault(field, task.name)
    return found


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
        "max_inputs": state.settings.max_inputs,
        "request_timeout_s": state.settings.request_timeout_s,
        "defaults": state.models.defaults(),
        "models": {model.name: describe_model(state, model) for model in state.models},
    }


async def metrics(request: Request) -> PlainTextResponse:
    registry = get_state(request).metrics.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def body_rules(tasks: Mapping[str, Task]) -> dict[str, validation.BodyRules]:
    """Each task route's body, what its union fields accept and which parameters belong to other tasks."""
    return {
        task.route: validation.BodyRules(task.request, task.expected, _parameters_of(tasks, {task.name}))
        for task in tasks.values()
    }

