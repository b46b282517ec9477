"""Request and response bodies: the HTTP contract, compatible with transformers-style and huggingface_hub callers.

Unknown keys are rejected (422) rather than ignored, so a misspelt parameter
(`topk`) is an error instead of a silent default. `options`, which older Inference
API clients send, is accepted and ignored. Types are strict: `"top_k": "5"` or
`"truncation": "yes"` is a 422, not a guess.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Strict = ConfigDict(extra="forbid", strict=True)
MAX_FILL_MASK_TOP_K = 100  # answers per mask; the request as a whole is capped too (ROBERTA_MAX_MASK_ANSWERS)
MAX_TARGETS = 1000
MAX_TARGET_CHARS = 100  # a target is a word: only its first sub-token can be an answer


def _encodable(text: str) -> str:
    """JSON can carry lone UTF-16 surrogates ("\\ud800"); no tokenizer can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it holds a lone surrogate)") from None
    return text


def _a_word(text: str) -> str:
    if not text.strip():
        raise ValueError("a target must be a word, not empty or blank")
    return text


Text = Annotated[str, AfterValidator(_encodable)]
Target = Annotated[str, Field(max_length=MAX_TARGET_CHARS), AfterValidator(_encodable), AfterValidator(_a_word)]


class TextPair(BaseModel):
    model_config = Strict
    text: Text
    text_pair: Text | None = None


ClassifyInput = Text | TextPair


class ClassifyParameters(BaseModel):
    model_config = Strict
    top_k: int | None = Field(None, ge=1, description="labels per input; null, missing or more than there are: all")
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
    top_k: int = Field(5, ge=1, le=MAX_FILL_MASK_TOP_K, description="answers per mask")
    targets: Annotated[list[Target], Field(min_length=1, max_length=MAX_TARGETS)] | Target | None = Field(
        None, description="restrict answers to these words"
    )
    truncation: bool = Field(False, description="cut inputs longer than the model's limit instead of refusing them (413)")


class FillMaskRequest(BaseModel):
    model_config = Strict
    inputs: Text | list[Text]
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


# What a field accepts, said when a value matched none of its shapes (app.validation); `[]` is a list's item.
EXPECTED = {
    "/classify": {
        "inputs": "a string, a {text, text_pair} object, or a list of them",
        "inputs[]": "a string or a {text, text_pair} object",
    },
    "/fill-mask": {
        "inputs": "a string or a list of strings",
        "inputs[]": "a string",
        "parameters.targets": "a word or a list of words",
        "parameters.targets[]": "a word (a string)",
    },
}
REQUEST_BODIES: dict[str, type[BaseModel]] = {"/classify": ClassifyRequest, "/fill-mask": FillMaskRequest}
