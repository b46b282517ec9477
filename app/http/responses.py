"""How every answer is made: JSON bodies, and the one function that turns an error into a response.

Every error a client can see is `{"error", "error_type"}` with the status from app.errors'
table; nothing leaks a traceback or a file path.
"""

from __future__ import annotations

import json
import logging

from starlette.responses import Response

from app.errors import ServiceError, error_json, status_of
from app.engine.threads import ThreadPool

log = logging.getLogger("app.http")


def json_response(content, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(render_json(content), status_code=status_code, media_type="application/json", headers=headers)


def error_response(error: Exception, openai: bool = False, request_id: str | None = None) -> Response:
    """The answer to anything a handler raised: a ServiceError as its table says, anything else a logged 500.
    `openai`: in OpenAI's error shape, which the openai SDK reads (the /v1/ routes; the request id is in their
    `X-Request-Id` header, where the SDK looks for it)."""
    if not isinstance(error, ServiceError):
        log.error("unhandled error", exc_info=error)
        error = ServiceError("internal error")
    status = status_of(error)
    body = (openai_error_json(error.message, error.error_type, status) if openai
            else error_json(error.message, error.error_type, request_id))
    return Response(body, status_code=status, media_type="application/json", headers=error.headers)


def openai_error_json(message: str, error_type: str, status: int) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}`: the SDK raises the status's error class with `.message`,
    `.type` and `.code` from it. `code` is the service's own error type."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _dumps({"error": {"message": message, "type": kind, "param": None, "code": error_type}})


async def json_off_loop(content, executor: ThreadPool, headers: dict[str, str] | None = None) -> Response:
    """A JSON response rendered on `executor`, one list item at a time.

    A fill-mask answer can be megabytes; json.dumps holds the GIL for as long as one call
    runs, so rendering it whole, even on another thread, would stall the event loop. Item
    by item, the loop gets its turn between them. The bytes equal json_response's.
    """
    body = await executor.run(render_json, content)
    return Response(body, media_type="application/json", headers=headers)


def render_json(content) -> bytes:
    if not isinstance(content, list):
        return _dumps(content)
    return b"[" + b",".join(_dumps(item) for item in content) + b"]"


def _dumps(content) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")
