"""The OpenAPI document, made from the route table and the task schemas: the routes this process serves.

A task's fixed route is in it only when a loaded model answers that task; the body of
`POST /models/{name}` is one of the bodies of the tasks the loaded models answer. Every
error is the service's `ErrorBody`.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter

from app import __version__
from app.tasks.schemas import ErrorBody

if TYPE_CHECKING:
    from app.http.routes import Route

REF = "#/components/schemas/{model}"
TITLE = "roberta-serve"
DESCRIPTION = "Dynamic-batching inference for fine-tuned RoBERTa models on ONNX Runtime."


def openapi_document(routes: Sequence[Route], served_tasks: set[str], protected: bool,
                     answered_tasks: set[str] | None = None) -> dict:
    """`served_tasks`: the tasks with a default model (their routes answer); `answered_tasks`: the tasks any model
    answers (a route whose body names its model answers those). `protected`: every route needs the API key (401
    documented everywhere); else only the inference routes, and only when a key is set, which the caller says by
    passing the inference routes' 401 in their errors."""
    answered_tasks = served_tasks if answered_tasks is None else answered_tasks
    components: dict[str, Any] = {}
    paths: dict[str, dict] = {}
    for route in routes:
        if not route.in_schema or (route.task is not None and
                                   route.task.name not in (answered_tasks if route.names_model else served_tasks)):
            continue
        operation: dict[str, Any] = {"summary": route.summary, "operationId": _operation_id(route)}
        if "{name}" in route.path:
            operation["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        if route.body is not None:
            bodies = route.body if isinstance(route.body, list) else [route.body]
            if route.task is None:
                bodies = [body for body in bodies if _task_of(body, routes) in served_tasks]
            schemas = [_schema(body, "validation", components) for body in bodies]
            schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        answer = _schema(route.answer, "serialization", components) if route.answer is not None else {}
        content = {route.media_type: {"schema": answer if route.media_type == "application/json" else {"type": "string"}}}
        responses: dict[str, Any] = {"200": {"description": "the answer", "content": content}}
        statuses = set(route.errors) | ({401} if protected else set())
        for status in sorted(statuses):
            responses[str(status)] = {"description": HTTPStatus(status).phrase,
                                      "content": {"application/json": {"schema": _schema(ErrorBody, "serialization", components)}}}
        operation["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }


def _schema(kind: Any, mode: str, components: dict[str, Any]) -> dict:
    """`kind`'s JSON schema; the models it names go into `components`, and a model itself is referenced."""
    schema = TypeAdapter(kind).json_schema(ref_template=REF, mode=mode)
    components.update(schema.pop("$defs", {}))
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        components[kind.__name__] = schema
        return {"$ref": REF.format(model=kind.__name__)}
    return schema


def _task_of(body: Any, routes: Sequence[Route]) -> str | None:
    return next((route.task.name for route in routes if route.task is not None and route.body is body), None)


def _operation_id(route: Route) -> str:
    name = route.task.name if route.task is not None else route.handler.__name__
    return f"{name.replace('-', '_')}_{route.method.lower()}"
