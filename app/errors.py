"""Service errors and the one table that maps them to HTTP.

    ServiceError
    ├── BadRequest         400  bad_request   a request no handler can take as sent (two Authorization headers)
    ├── InvalidJSON        400  invalid_json
    ├── UnsupportedMediaType 415 unsupported_media_type   a POST body not sent as JSON
    ├── InvalidInput       422  validation   a body the schema or the model cannot take
    ├── TooManyInputs      413  too_many_inputs
    ├── TooManyAnswers     413  too_many_answers  fill-mask texts x masks x top_k over the ceiling
    ├── PayloadTooLarge    413  payload_too_large
    ├── InputTooLong       413  input_too_long   more tokens than the model takes, truncation off
    ├── Unauthorized       401  unauthorized
    ├── NotFound           404  not_found        no such route, or an endpoint whose model is not loaded
    ├── MethodNotAllowed   405  method_not_allowed  (Allow)
    ├── QueueFull          429  overloaded       (Retry-After)
    ├── NotReady           503  not_ready        warming up, unhealthy, or shutting down
    ├── DeadlineExceeded   504  timeout
    ├── ClientClosedRequest 499 client_closed   the client hung up first (logged and counted; nobody reads it)
    └── InferenceFailed    500  inference
Clients see `{"error": message, "error_type": type}`; messages never carry tracebacks or file paths.
"""

from __future__ import annotations

import json


class ServiceError(Exception):
    error_type = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    error_type = "bad_request"


class InvalidJSON(ServiceError):
    error_type = "invalid_json"


class UnsupportedMediaType(ServiceError):
    error_type = "unsupported_media_type"


class InvalidInput(ServiceError):
    error_type = "validation"


class TooManyInputs(ServiceError):
    error_type = "too_many_inputs"


class TooManyAnswers(ServiceError):
    error_type = "too_many_answers"


class PayloadTooLarge(ServiceError):
    error_type = "payload_too_large"


class InputTooLong(ServiceError):
    error_type = "input_too_long"


class Unauthorized(ServiceError):
    error_type = "unauthorized"


class NotFound(ServiceError):
    error_type = "not_found"


class MethodNotAllowed(ServiceError):
    error_type = "method_not_allowed"


class QueueFull(ServiceError):
    error_type = "overloaded"


class NotReady(ServiceError):
    error_type = "not_ready"


class DeadlineExceeded(ServiceError):
    error_type = "timeout"


class ClientClosedRequest(ServiceError):
    error_type = "client_closed"


class InferenceFailed(ServiceError):
    error_type = "inference"


HTTP_STATUS: dict[type[ServiceError], int] = {
    BadRequest: 400,
    InvalidJSON: 400,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    TooManyInputs: 413,
    TooManyAnswers: 413,
    PayloadTooLarge: 413,
    InputTooLong: 413,
    Unauthorized: 401,
    NotFound: 404,
    MethodNotAllowed: 405,
    QueueFull: 429,
    NotReady: 503,
    DeadlineExceeded: 504,
    ClientClosedRequest: 499,
    InferenceFailed: 500,
}


def status_of(error: ServiceError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_body(message: str, error_type: str, request_id: str | None = None) -> dict[str, str]:
    body = {"error": message, "error_type": error_type}
    if request_id:
        body["request_id"] = request_id
    return body


def error_json(message: str, error_type: str, request_id: str | None = None) -> bytes:
    """The error body as the bytes every answer carries, the HTTP protocol's own refusals included."""
    return json.dumps(error_body(message, error_type, request_id), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
