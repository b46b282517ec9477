"""How a request is read: its few headers, the API key, the deadline, the body as JSON within its size, and
whether the client is still there.

The checks run in the order clients have always seen: API key (401), media type (415), size
(413), UTF-8 and JSON (400), then the body's schema (422, the route's), then the deadline header.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from starlette.types import Receive, Scope

from app.errors import (
    BadRequest,
    ClientClosedRequest,
    InvalidInput,
    InvalidJSON,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)

T = TypeVar("T")

TIMEOUT_HEADER = b"x-request-timeout"
WANTED_HEADERS = (b"content-type", b"content-length", TIMEOUT_HEADER)
# What nearly every client sends: recognised without parsing the header.
PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The few headers this service reads (names are lower case in ASGI); the first of a repeated one."""
    found: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        if key in WANTED_HEADERS and key not in found:
            found[key] = value
    return found


def check_api_key(scope: Scope, key: str) -> None:
    """401 unless the one Authorization header is `Bearer <key>`. Two of them are a 400: a proxy in front may
    read the last where this would read the first, so neither can be trusted to be the one meant."""
    authorizations: Sequence[bytes] = [value for name, value in scope["headers"] if name == b"authorization"]
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


async def read_json(headers: Mapping[bytes, bytes], receive: Receive, max_bytes: int):
    """The body as JSON: UTF-8 only (RFC 8259), never guessed from the bytes as json.loads would; 413 as soon as
    Content-Length or the bytes received pass `max_bytes`, so a large body is never held whole."""
    content_type = headers.get(b"content-type")
    if not is_json(content_type.decode("latin-1") if content_type is not None else None):
        raise UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`")
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(too_large(max_bytes))
    chunks, received = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest("the client closed the connection before sending the body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_bytes:
            raise PayloadTooLarge(too_large(max_bytes))
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if not body:
        raise InvalidJSON("the body is empty; send a JSON object such as {\"inputs\": \"...\"}")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidJSON("the body is not UTF-8; send JSON encoded as UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidJSON("the body is not valid JSON") from None


def too_large(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes"


def is_json(content_type: str | None) -> bool:
    """application/json and application/*+json (none given: JSON too)."""
    if not content_type:
        return True
    if content_type.lower() in PLAIN_JSON:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, or cancel it when the client hangs up first.

    Without this, queued sequences would still reach the model and compute answers nobody
    reads. `work` runs in the caller's task, which a hang-up cancels; a watcher task reading
    `receive()` tells the hang-up (the body has been read, so the next message is the disconnect).
    """
    current = asyncio.current_task()
    gone = False

    def hang_up() -> None:
        nonlocal gone
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(_disconnected(receive, then=hang_up))
    try:
        return await work
    except (asyncio.CancelledError, ServiceError):
        # `work` may fail on its way out; the client is gone either way. Cancelled by anyone else: still cancelled.
        if not gone or current.uncancel() > 0:
            raise
        raise ClientClosedRequest("the client closed the connection before the answer") from None
    finally:
        watcher.cancel()


async def _disconnected(receive: Receive, then: Callable[[], None]) -> None:
    """Calls `then` when the ASGI server reports `http.disconnect`.

    Called from here, in the watcher's own step, `then` runs only while the caller's task waits:
    never once it has moved on, since it cancels this task before it does.
    """
    while (await receive())["type"] != "http.disconnect":
        pass
    then()
