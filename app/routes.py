"""Thin handlers: parse, pick the model, call it, shape the answer."""

from __future__ import annotations

import math
import secrets
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__
from app.errors import InvalidInput, TooManyInputs, Unauthorized, error_body
from app.http import Utf8JsonRoute, json_off_loop, unless_disconnected
from app.schemas import ClassifyRequest, ErrorBody, FillMaskRequest, FillMaskResponse, LabelScore, TextPair
from app.service import ClassifyOptions, FillMaskOptions
from app.state import AppState
from app.tokenize import TextInput

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


router = APIRouter(dependencies=[Depends(require_api_key_if_protected)])
inference = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, route_class=Utf8JsonRoute)


@inference.post("/classify", response_model=list[list[LabelScore]], summary="Classify texts or text pairs")
async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
    arrived = time.monotonic()
    state = get_state(request)
    deadline = deadline_of(request, arrived)
    options = ClassifyOptions(
        top_k=body.parameters.top_k,
        function_to_apply=body.parameters.function_to_apply,
        truncation=body.parameters.truncation,
    )
    inputs = _classify_inputs(body.inputs)
    _check_count(len(inputs), state)
    with state.admit("text-classification") as service:
        answers = await unless_disconnected(request, service.classify(inputs, options, deadline))
    return JSONResponse(answers)


@inference.post("/fill-mask", response_model=FillMaskResponse, summary="Fill the mask token in texts")
async def fill_mask(body: FillMaskRequest, request: Request) -> Response:
    arrived = time.monotonic()
    state = get_state(request)
    deadline = deadline_of(request, arrived)
    targets = body.parameters.targets
    options = FillMaskOptions(
        top_k=body.parameters.top_k,
        targets=(targets,) if isinstance(targets, str) else (tuple(targets) if targets is not None else None),
        truncation=body.parameters.truncation,
    )
    texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    _check_count(len(texts), state)
    with state.admit("fill-mask") as service:
        answers, warning = await unless_disconnected(request, service.fill_mask(texts, options, deadline))
    headers = {"X-Warning": warning} if warning else None
    content = answers[0] if isinstance(body.inputs, str) else answers
    return await json_off_loop(content, state.executor, headers=headers)  # up to megabytes: not on the event loop


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded, warm and healthy", responses={503: {"model": ErrorBody}})
async def readyz(request: Request):
    ready, reason = get_state(request).readiness()
    if not ready:
        return JSONResponse(error_body(reason, "not_ready"), status_code=503, headers={"Retry-After": "1"})
    return {"status": "ready"}


@router.get("/info", summary="Models, precisions, providers in use and batching settings")
async def info(request: Request) -> dict:
    import onnxruntime

    state = get_state(request)
    return {
        "version": __version__,
        "onnxruntime": onnxruntime.__version__,
        "ready": state.readiness()[0],
        "max_inputs": state.settings.max_inputs,
        "request_timeout_s": state.settings.request_timeout_s,
        "models": {task: service.info() for task, service in state.services.items()},
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    registry = get_state(request).metrics.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


router.include_router(inference)


def _classify_inputs(inputs) -> list[TextInput]:
    items = inputs if isinstance(inputs, list) else [inputs]
    return [_as_text_input(item) for item in items]


def _as_text_input(item: str | TextPair) -> TextInput:
    if isinstance(item, str):
        return item
    return item.text if item.text_pair is None else (item.text, item.text_pair)


def _check_count(count: int, state: AppState) -> None:
    if count == 0:
        raise InvalidInput("inputs is an empty list; send at least one text")
    if count > state.settings.max_inputs:
        raise TooManyInputs(f"{count} inputs in one request; at most {state.settings.max_inputs} are allowed")


