"""Every route, declared once next to its handler: what it answers, who may call it, and what the OpenAPI
document says about it.

Every task gets its fixed endpoint (`/classify`, ...), which serves that task's default
model, and every model answers at `/models/{name}` in the Hugging Face Inference API's
shape, so `huggingface_hub.InferenceClient(model=".../models/NAME")` works unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope

from app import __version__
from app.http import validation
from app.errors import InvalidInput, NotReady, error_json
from app.http.requests import deadline_of, read_json, request_headers, unless_disconnected
from app.http.responses import json_off_loop, json_response
from app.serving.tracing import RequestRecord
from app.tasks.base import Answer, Dialect, Task, Work, answer_request

if TYPE_CHECKING:  # annotations only: handlers use the state the app hands them
    from app.serving.model import ServedModel
    from app.serving.state import AppState

MODELS_PREFIX = "/models/"
MODEL_ROUTE = "/models/{name}"
INFERENCE_ERRORS = (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)


@dataclass
class Call:
    """One request as a handler sees it."""

    state: AppState
    scope: Scope
    receive: Receive
    record: RequestRecord  # its id, arrival, model, wait in the queue, spans
    name: str | None = None  # the `{name}` of /models/{name}

    @property
    def arrived(self) -> float:
        return self.record.started


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    inference: bool  # the API key guards it whenever one is set; else only with protect_health_and_metrics
    task: Task | None = None  # a task's fixed endpoint
    body: Any = None  # for the document: the request body's type, or a list of types it may be
    answer: Any = None  # for the document: the 200 answer's type (None: any JSON)
    errors: tuple[int, ...] = ()  # statuses it may answer besides 200 (the document adds 401 where the key guards all)
    media_type: str = "application/json"
    in_schema: bool = True
    names_model: bool = False  # the body names its model (a dialect's): it answers wherever a model does the task


async def read_body(call: Call, rules: validation.BodyRules) -> tuple[BaseModel, float]:
    """The request's body, read and checked against `rules.model`, and its deadline."""
    settings = call.state.settings
    headers = request_headers(call.scope)
    with call.state.tracing.span(call.record, "validate"):
        raw = await read_json(headers, call.receive, settings.max_body_bytes)
        body = _validate(rules.model, raw, rules)
    return body, deadline_of(headers, call.arrived, settings.request_timeout_s, settings.max_request_timeout_s)


def task_route(task: Task, rules: validation.BodyRules) -> Route:
    async def answer(call: Call) -> Response:
        body, deadline = await read_body(call, rules)
        return await run_task(call, task, call.state.model(task=task.name), body, deadline)

    return Route("POST", task.route, answer, f"{task.summary} ({task.name}, the default model)", inference=True,
                 task=task, body=task.request, answer=task.response, errors=INFERENCE_ERRORS)


def dialect_route(task: Task, dialect: Dialect) -> Route:
    """Another API's route for a task (OpenAI's /v1/embeddings): its body becomes the task's, the task answers, and
    the answer goes back in that API's shape. The model is the one the body names, else the task's default."""
    rules = validation.BodyRules(dialect.request, dialect.expected)

    async def answer(call: Call) -> Response:
        state = call.state
        body, deadline = await read_body(call, rules)
        model = state.model(dialect.model_name(body), task=task.name)
        if not task.serves(model.folder):
            raise InvalidInput(f"model {model.name!r} is a {model.task} model; {dialect.route} needs a {task.name} model "
                               f"({', '.join(m.name for m in state.models if task.serves(m.folder)) or 'none is loaded'})")
        task_body = dialect.task_body(body, model)

        def render(work: Work, answer: Answer) -> Answer:
            return dialect.render(model, body, work, answer)

        return await run_task(call, task, model, task_body, deadline, render)

    return Route("POST", dialect.route, answer, dialect.summary, inference=True, task=task, body=dialect.request,
                 answer=dialect.response, errors=INFERENCE_ERRORS, names_model=True)


async def post_model(call: Call) -> Response:
    state, settings = call.state, call.state.settings
    headers = request_headers(call.scope)
    deadline = deadline_of(headers, call.arrived, settings.request_timeout_s, settings.max_request_timeout_s)
    model = state.model(call.name)
    with state.tracing.span(call.record, "validate"):
        raw = await read_json(headers, call.receive, settings.max_body_bytes)
        task = state.models.task_for(model, raw if isinstance(raw, dict) else {})
        try:
            body = task.request.model_validate(raw)
        except ValidationError as exc:  # the rules for the message, only when there is one to write
            elsewhere = validation.parameters_of(state.tasks, {answered.name for answered in state.models.tasks_of(model)})
            rules = validation.BodyRules(task.request, task.expected, elsewhere, validation.parameters_of(state.tasks, set()))
            raise InvalidInput(validation.describe(exc.errors(), rules, model_name=model.name)) from None
    return await run_task(call, task, model, body, deadline)


async def run_task(call: Call, task: Task, model: ServedModel, body: BaseModel, deadline: float,
                   render: Callable[[Work, Answer], Answer] | None = None) -> Response:
    """The one path every inference request takes once its body is valid: counted and admitted before anything
    of it is built, run while the client stays, answered (in a dialect's shape with `render`)."""
    state = call.state
    call.record.model = model.name  # for the request metrics' model label and the access line
    with state.admit(model, task.cost(body, model), task.counted):
        answer = await unless_disconnected(
            call.receive, answer_request(task, model, body, deadline, render, call.record, state.tracing))
    if task.large_answers:  # up to megabytes: rendered off the event loop
        return await json_off_loop(answer.content, state.executor, headers=answer.headers)
    return json_response(answer.content, headers=answer.headers)


def _validate(schema: type[BaseModel], raw, rules: validation.BodyRules):
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(validation.describe(exc.errors(), rules)) from None


def describe_model(state: AppState, model: ServedModel) -> dict:
    tasks = state.models.tasks_of(model)
    description = model.info()
    description["tasks"] = [task.name for task in tasks]
    description["default_for"] = [task for task, name in state.models.defaults().items() if name == model.name]
    description["ready"] = model.warm and state.healthy(model) and not state.draining
    for task in tasks:
        description.update(task.info(model))
    return description


async def list_models(call: Call) -> Response:
    return json_response({"models": [describe_model(call.state, model) for model in call.state.models]})


async def get_model(call: Call) -> Response:
    return json_response(describe_model(call.state, call.state.models.get(call.name)))


async def openai_models(call: Call) -> Response:
    """The models in OpenAI's list shape (the openai SDK's models.list): their names are what `model` takes."""
    return json_response({"object": "list", "data": [
        {"id": model.name, "object": "model", "created": 0, "owned_by": "roberta-serve"} for model in call.state.models]})


async def healthz(call: Call) -> Response:
    return json_response({"status": "ok"})


async def readyz(call: Call) -> Response:
    ready, reason = call.state.readiness()
    if not ready:
        error = NotReady(reason, headers={"Retry-After": "1"})
        return Response(error_json(reason, error.error_type, call.record.id), status_code=503, media_type="application/json",
                        headers=error.headers)
    return json_response({"status": "ready"})


async def info(call: Call) -> Response:
    import onnxruntime

    state = call.state
    return json_response({
        "version": __version__,
        "onnxruntime": onnxruntime.__version__,
        "ready": state.readiness()[0],
        "processes": state.settings.processes,
        "max_inputs": state.settings.max_inputs,
        "request_timeout_s": state.settings.request_timeout_s,
        "defaults": state.models.defaults(),
        "models": {model.name: describe_model(state, model) for model in state.models},
    })


async def metrics(call: Call) -> Response:
    accept = next((value for key, value in call.scope["headers"] if key == b"accept"), b"")
    body, content_type = call.state.metrics.exposition(accept.decode("latin-1"))
    return Response(body, headers={"content-type": content_type})


def build_routes(tasks: Mapping[str, Task]) -> list[Route]:
    """Every route but the docs pages (app.http.docs): a POST per task, the model routes, the operational ones."""
    every = validation.parameters_of(tasks, set())
    return [
        *(task_route(task, validation.BodyRules(task.request, task.expected, validation.parameters_of(tasks, {name}), every))
          for name, task in tasks.items()),
        *(dialect_route(task, dialect) for task in tasks.values() for dialect in task.dialects),
        Route("POST", MODEL_ROUTE, post_model, "Run the named model on a body of its task", inference=True,
              body=[task.request for task in tasks.values()], errors=INFERENCE_ERRORS),
        Route("GET", "/models", list_models, "The models served, with their tasks and state", inference=False),
        Route("GET", MODEL_ROUTE, get_model, "One model", inference=False, errors=(404,)),
        Route("GET", "/v1/models", openai_models, "The models, in OpenAI's list shape", inference=False),
        Route("GET", "/healthz", healthz, "Liveness: the process answers", inference=False),
        Route("GET", "/readyz", readyz, "Readiness: models loaded, warm and healthy", inference=False, errors=(503,)),
        Route("GET", "/info", info, "Version, limits, and every model", inference=False),
        Route("GET", "/metrics", metrics, "Prometheus metrics", inference=False, media_type="text/plain"),
    ]
