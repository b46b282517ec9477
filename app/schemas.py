"""Request and response bodies: the HTTP contract, compatible with transformers-style and huggingface_hub callers.

Unknown keys are rejected (422) rather than ignored, so a misspelt parameter
(`topk`) is an error instead of a silent default. `options`, which older Inference
API clients send, is accepted and ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Strict = ConfigDict(extra="forbid")


class TextPair(BaseModel):
    model_config = Strict
    text: str
    text_pair: str | None = None


ClassifyInput = str | TextPair


class ClassifyParameters(BaseModel):
    model_config = Strict
    top_k: int | None = Field(None, ge=1, description="labels per input; null or missing: all")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="default: from the model config, as transformers' pipeline decides"
    )
    truncation: bool = Field(False, description="cut inputs longer than the model's limit instead of refusing them (413)")


class ClassifyRequest(BaseModel):
    model_config = Strict
    inputs: ClassifyInput | list[ClassifyInput]
    parameters: ClassifyParameters = Field(default_factory=ClassifyParameters)
    options: dict | None = Field(None, description="accepted for Inference API compatibility; ignored")


class LabelScore(BaseModel):
    label: str
    score: float


class FillMaskParameters(BaseModel):
    model_config = Strict
    top_k: int = Field(5, ge=1, description="answers per mask")
    targets: list[str] | str | None = Field(None, description="restrict answers to these words")
    truncation: bool = Field(False, description="cut inputs longer than the model's limit instead of refusing them (413)")


class FillMaskRequest(BaseModel):
    model_config = Strict
    inputs: str | list[str]
    parameters: FillMaskParameters = Field(default_factory=FillMaskParameters)
    options: dict | None = Field(None, description="accepted for Inference API compatibility; ignored")


class FillMaskAnswer(BaseModel):
    score: float
    token: int
    token_str: str
    sequence: str


# A text with one mask -> list of answers; several masks -> one list per mask; a list of texts -> one of those each.
FillMaskText = list[FillMaskAnswer] | list[list[FillMaskAnswer]]
FillMaskResponse = FillMaskText | list[FillMaskText]


class ErrorBody(BaseModel):
    error: str
    error_type: str
