"""The inference POSTs as plain ASGI: every request's path without FastAPI's routing, dependencies and Request.

The event loop's CPU per request is what the service cannot spend on the model's cores:
at c=64 on two cores it was 1.2-1.4 ms per /classify, about 30% of it FastAPI and Starlette
(py-spy: route matching, the dependency solver, the Request and its body parsing). Here a
task's route and `/models/{name}` take the body straight from the ASGI messages, in the same
order of checks and with the same errors as FastAPI did: API key (401), media type (415),
UTF-8 and JSON (400), the body's schema (422, app.validation's messages), the deadline header,
then the model. FastAPI keeps every other route, and these in its OpenAPI document
(app.routes declares them there).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import validation
from app.errors import (
    BadRequest,
    ClientClosedRequest,
    InvalidInput,
    InvalidJSON,
    PayloadTooLarge,
    ServiceError,
    TooManyInputs,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
)
from app.http import HTTP_ERROR_TYPES, error_response, is_json, json_off_loop, unless_disconnected
from app.model import ServedModel
from app.state import AppState
from app.tasks import Task

log = logging.getLogger("app.inference")

MODELS_PREFIX = "/models/"
TIMEOUT_HEADER = b"x-request-timeout"
WANTED_HEADERS = (b"content-type", TIMEOUT_HEADER)


class InferenceEndpoints:
    """In front of the FastAPI app: answers `POST <task route>` and `POST /models/{name}`, passes on the rest."""

    def __init__(self, app: ASGIApp, tasks: Mapping[str, Task], bodies: Mapping[str, validation.BodyRules]) -> None:
        self.app = app
        self.by_route = {task.route: task for task in tasks.values()}
        self.bodies = bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        task = self.by_route.get(path)
        name = path[len(MODELS_PREFIX):] if task is None and path.startswith(MODELS_PREFIX) else None
        if task is None and (not name or "/" in name):
            await self.app(scope, receive, send)
            return
        try:
            response = await self._answer(scope["app"].state.services, scope, receive, task, name)
        except ServiceError as exc:
            response = error_response(exc)
        except HTTPException as exc:  # BodySizeLimit's 413, raised from receive
            response = JSONResponse(error_body(str(exc.detail), HTTP_ERROR_TYPES.get(exc.status_code, "http_error")),
                                    status_code=exc.status_code, headers=exc.headers)
        except Exception:
            log.exception("unhandled error")
            response = JSONResponse(error_body("internal error", "internal"), status_code=500)
        await response(scope, receive, send)

    async def _answer(self, state: AppState, scope: Scope, receive: Receive, task: Task | None, name: str | None) -> Response:
        arrived = time.monotonic()
        headers = request_headers(scope)
        settings = state.settings
        if settings.api_key is not None:
            check_api_key([value for key, value in scope["headers"] if key == b"authorization"], settings.api_key.get_secret_value())
        if task is not None:
            raw = await read_json(headers, receive)
            body = self._validate(task.request, raw, self.bodies.get(task.route))
            deadline = deadline_of(headers, arrived, settings.request_timeout_s, settings.max_request_timeout_s)
            model = state.model(task=task.name)
        else:
            deadline = deadline_of(headers, arrived, settings.request_timeout_s, settings.max_request_timeout_s)
            model = state.model(name)
            raw = await read_json(headers, receive)
            task = state.models.task_for(model, raw if isinstance(raw, dict) else {})
            try:
                body = task.request.model_validate(raw)
            except ValidationError as exc:  # the rules for the message, only when there is one to write
                rules = validation.BodyRules(task.request, task.expected, parameters_elsewhere(state, model))
                raise InvalidInput(validation.describe(exc.errors(), rules, model_name=model.name)) from None
        return await run_task(state, scope, receive, task, model, body, deadline)

    @staticmethod
    def _validate(schema: type[BaseModel], raw, rules: validation.BodyRules | None):
        try:
            return schema.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput(validation.describe(exc.errors(), rules)) from None


async def run_task(state: AppState, scope: Scope, receive: Receive, task: Task, model: ServedModel, body: BaseModel,
                   deadline: float) -> Response:
    # What the request will cost, counted before anything of it is built, against the ceilings.
    cost = task.cost(body, model)
    settings = state.settings
    if cost.sequences == 0:
        raise InvalidInput("inputs is an empty list; send at least one text")
    if cost.sequences > settings.max_inputs:
        raise TooManyInputs(f"{cost.sequences} {task.counted} in one request; at most {settings.max_inputs} are allowed")
    if cost.characters > settings.max_body_bytes:
        raise PayloadTooLarge(f"this request makes {cost.characters} characters of text to tokenize (all its task builds "
                              f"from the body); at most {settings.max_body_bytes} are allowed: send less text")
    model.batcher.check_room(cost.sequences)  # refuse before tokenizing: overload should cost little
    scope.setdefault("state", {})["model"] = model.name  # for RequestMetrics' model label
    with state.admit():
        answer = await unless_disconnected(scope, receive, task(model, body, deadline))
    if answer.large:  # up to megabytes: rendered off the event loop
        return await json_off_loop(answer.content, state.executor, headers=answer.headers)
    return JSONResponse(answer.content, headers=answer.headers)


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The few headers this path reads (names are lower case in ASGI); the first of a repeated one."""
    found: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        if key in WANTED_HEADERS and key not in found:
            found[key] = value
    return found


def check_api_key(authorizations: Sequence[bytes], key: str) -> None:
    """401 unless the one Authorization header is `Bearer <key>`. Two of them are a 400: a proxy in front may
    read the last where this would read the first, so neither can be trusted to be the one meant."""
    if len(authorizations) > 1:
        raise BadRequest("send one Authorization header, not several")
    scheme, _, given = (authorizations[0] if authorizations else b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode("latin-1"), key.encode()):
        raise Unauthorized("missing or wrong API key; send `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"})


def deadline_of(headers: Mapping[bytes, bytes], arrived: float, default_s: float, most_s: float) -> float:
    """The server's default deadline, or the one the client asks for in X-Request-Timeout (seconds)."""
    asked = headers.get(TIMEOUT_HEADER)
    if asked is None:
        return arrived + default_s
    try:
        seconds = float(asked.decode("latin-1"))
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= most_s:  # also false for nan and inf
        raise InvalidInput(f"X-Request-Timeout must be a number of seconds above 0 and at most {most_s:g}")
    return arrived + seconds


async def read_json(headers: Mapping[bytes, bytes], receive: Receive):
    """The body as JSON: UTF-8 only (RFC 8259), never guessed from the bytes as json.loads would."""
    content_type = headers.get(b"content-type")
    if not is_json(content_type.decode("latin-1") if content_type is not None else None):
        raise UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`")
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest("the client closed the connection before sending the body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if not body:
        raise InvalidJSON("the body is empty; send a JSON object such as {\"inputs\": \"...\"}")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8; send JSON encoded as UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidJSON("the body is not valid JSON") from None


def parameters_elsewhere(state: AppState, model: ServedModel) -> dict[str, str]:
    """Parameter name -> the task that takes it, for the tasks `model` does not answer."""
    return parameters_of(state.tasks, {task.name for task in state.models.tasks_of(model)})


def parameters_of(tasks: Mapping[str, Task], leave_out: set[str]) -> dict[str, str]:
    """Parameter name -> the first task that takes it, among `tasks` other than those in `leave_out`."""
    found: dict[str, str] = {}
    for task in tasks.values():
        parameters = task.request.model_fields.get("parameters")
        annotation = parameters.annotation if parameters is not None else None
        if task.name not in leave_out and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for field in annotation.model_fields:
                found.setdefault(field, task.name)
    return found
