"""Text classification: labels and scores for texts or text pairs, as transformers' TextClassificationPipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from app.tasks.specs import SPECS
from app.tasks.schemas import Options, Strict, Text
from app.tasks.base import Answer, Cost, Model, Task, Work, check_not_blank, softmax
from app.engine.tokenize import TextInput

ACTIVATIONS = ("softmax", "sigmoid", "none")


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
    options: Options = None


class LabelScore(BaseModel):
    label: str
    score: float


class TextClassification(Task):
    spec = SPECS["text-classification"]
    summary = "Classify texts or text pairs"
    request = ClassifyRequest
    response = list[list[LabelScore]]
    expected = {
        "inputs": "a string, a {text, text_pair} object, or a list of them",
        "inputs[]": "a string or a {text, text_pair} object",
    }

    def cost(self, body: ClassifyRequest, model: Model) -> Cost:
        inputs = _inputs(body)
        return Cost(len(inputs), sum(len(item) if isinstance(item, str) else sum(map(len, item)) for item in inputs))

    async def prepare(self, model: Model, body: ClassifyRequest, deadline: float) -> Work:
        inputs = _inputs(body)
        check_not_blank(inputs)
        encoded = await model.encode(inputs, body.parameters.truncation, deadline)
        return Work([e.ids for e in encoded])

    def answer(self, model: Model, body: ClassifyRequest, work: Work, rows: list[dict[str, np.ndarray]]) -> Answer:
        function = body.parameters.function_to_apply or self.default_activation(model)
        return Answer([classify(row["logits"], model.folder.labels, function, body.parameters.top_k) for row in rows])

    def info(self, model: Model) -> dict:
        return {"default_activation": self.default_activation(model)}

    @staticmethod
    def default_activation(model: Model) -> str:
        return default_activation(model.folder.problem_type, len(model.folder.labels))


def _inputs(body: ClassifyRequest) -> list[TextInput]:
    return [_as_text_input(item) for item in (body.inputs if isinstance(body.inputs, list) else [body.inputs])]


def _as_text_input(item: str | TextPair) -> TextInput:
    if isinstance(item, str):
        return item
    return item.text if item.text_pair is None else (item.text, item.text_pair)


def default_activation(problem_type: str | None, num_labels: int) -> str:
    """transformers' TextClassificationPipeline rule, in the same order."""
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    if problem_type == "single_label_classification" or num_labels > 1:
        return "softmax"
    return "none"


def activate(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "softmax":
        return softmax(logits)
    logits = logits.astype(np.float32, copy=False)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise ValueError(f"unknown activation {function!r}; use one of {ACTIVATIONS}")


def label_scores(scores: np.ndarray, labels: Sequence[str], top_k: int | None) -> list[dict]:
    """Labels by descending score, cut to top_k (None: all)."""
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


def classify(logits: np.ndarray, labels: Sequence[str], function: str, top_k: int | None) -> list[dict]:
    return label_scores(activate(logits, function), labels, top_k)
