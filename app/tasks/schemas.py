"""What every request body shares: strict parsing, text that a tokenizer can take, and the error body.

Each task's own body lives in its module (app.tasks). Unknown keys are rejected (422)
rather than ignored, so a misspelt parameter (`topk`) is an error instead of a silent
default. `options`, which older Inference API clients send, is accepted and ignored. Types
are strict: `"top_k": "5"` or `"truncation": "yes"` is a 422, not a guess.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Strict = ConfigDict(extra="forbid", strict=True)


def encodable(text: str) -> str:
    """JSON can carry lone UTF-16 surrogates ("\\ud800"); no tokenizer can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it holds a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(encodable)]

# Every body's `options`: older Inference API clients send it ({"wait_for_model": true, ...}); nothing here uses it.
Options = Annotated[dict | None, Field(description="accepted for Inference API compatibility; ignored")]


class ErrorBody(BaseModel):
    error: str
    error_type: str
    request_id: str = Field("", description="the request's id, as in the answer's X-Request-Id header")
