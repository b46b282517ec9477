"""Zero-shot classification with an NLI model, as transformers' ZeroShotClassificationPipeline.

Each text is paired with one hypothesis per candidate label ("This example is {label}.");
the pairs are ordinary sequences for the model's batcher, one output row each, and count
against max_inputs and the queue. The entailment logits become the scores.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Annotated

import numpy as np
from pydantic import BaseModel, Field

from app.errors import InvalidInput
from app.model import ServedModel
from app.model_folder import ModelFolder
from app.schemas import Strict, Text
from app.tasks.base import Answer, Task, texts_of

DEFAULT_TEMPLATE = "This example is {}."


class ZeroShotParameters(BaseModel):
    model_config = Strict
    candidate_labels: Annotated[list[Text], Field(min_length=1)] | Text = Field(
        description="the labels to choose from: a list, or one string of comma-separated labels"
    )
    hypothesis_template: Text = Field(DEFAULT_TEMPLATE, description="the hypothesis each label is put into, at {}")
    multi_label: bool = Field(
        False, description="false: scores sum to 1 over the labels; true: each label scored on its own (entailment "
        "against contradiction)"
    )


class ZeroShotRequest(BaseModel):
    model_config = Strict
    inputs: Text | list[Text]
    parameters: ZeroShotParameters
    options: dict | None = Field(None, description="accepted for Inference API compatibility; ignored")


class ZeroShotAnswer(BaseModel):
    sequence: str
    labels: list[str]
    scores: list[float]


class ZeroShotClassification(Task):
    name = "zero-shot-classification"
    route = "/zero-shot-classification"
    summary = "Classify texts into labels chosen per request, with an NLI model"
    counted = "sequences (texts x labels)"
    request = ZeroShotRequest
    response = ZeroShotAnswer | list[ZeroShotAnswer]
    expected = {
        "inputs": "a string or a list of strings",
        "inputs[]": "a string",
        "parameters.candidate_labels": "a list of labels, or one string of comma-separated labels",
        "parameters.candidate_labels[]": "a label (a string)",
    }

    def serves(self, folder: ModelFolder) -> bool:
        return folder.task == "text-classification" and entailment_id(folder.label2id) >= 0

    def claims(self, body: Mapping) -> bool:
        parameters = body.get("parameters")
        return isinstance(parameters, Mapping) and "candidate_labels" in parameters

    def count(self, body: ZeroShotRequest) -> int:
        return len(texts_of(body.inputs)) * len(candidate_labels(body.parameters.candidate_labels))

    async def __call__(self, model: ServedModel, body: ZeroShotRequest, deadline: float) -> Answer:
        texts, options = texts_of(body.inputs), body.parameters
        labels = candidate_labels(options.candidate_labels)
        if not labels:
            raise InvalidInput("candidate_labels names no label; send at least one")
        hypotheses = hypotheses_of(options.hypothesis_template, labels)
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"inputs[{index}] is empty; send some text")
        pairs = [(text, hypothesis) for text in texts for hypothesis in hypotheses]
        # As the pipeline: a text too long is cut to fit beside its hypothesis; a hypothesis too long is refused.
        encoded = await model.encode(pairs, truncation="only_first", shorten="Shorten the hypothesis_template or the labels")
        rows = await model.infer([e.ids for e in encoded], deadline)
        logits = np.stack(rows).reshape(len(texts), len(labels), -1)
        entail = entailment_id(model.folder.label2id)
        answers = [answer(text, labels, scores(per_text, entail, options.multi_label)) for text, per_text in zip(texts, logits)]
        return Answer(answers[0] if isinstance(body.inputs, str) else answers)

    def info(self, model: ServedModel) -> dict:
        return {"entailment_label": model.folder.labels[entailment_id(model.folder.label2id)]}


def entailment_id(label2id: Mapping[str, int]) -> int:
    """The pipeline's rule: the first label, in label2id's order, that starts with "entail"; -1 if none does."""
    for label, index in label2id.items():
        if label.lower().startswith("entail"):
            return index
    return -1


def candidate_labels(value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        return [label.strip() for label in value.split(",") if label.strip()]
    return list(value)


def hypotheses_of(template: str, labels: Sequence[str]) -> list[str]:
    """`template.format(label)`, as the pipeline does, once the template is known to hold only plain `{}` fields
    (a format spec such as `{:>999999999}` would have one request allocate gigabytes)."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
    except ValueError:
        fields = [("?", "", None)]
    if any(name not in ("", "0") or spec or conversion for name, spec, conversion in fields):
        raise InvalidInput("hypothesis_template may hold only {} where the label goes (no names, indexes or format specs)")
    try:
        hypotheses = [template.format(label) for label in labels]
    except (IndexError, KeyError, ValueError) as exc:
        raise InvalidInput(f"hypothesis_template must hold one {{}} where the label goes ({type(exc).__name__})") from None
    if template.format(labels[0]) == template:
        raise InvalidInput("hypothesis_template must hold {} where the label goes, as in \"This example is {}.\"")
    return hypotheses


def scores(logits: np.ndarray, entail: int, multi_label: bool) -> np.ndarray:
    """[labels, classes] logits of one text -> a score per label."""
    logits = logits.astype(np.float32, copy=False)
    if multi_label or len(logits) == 1:
        contradiction = -1 if entail == 0 else 0
        pair = np.exp(logits[:, [contradiction, entail]])
        return (pair / pair.sum(-1, keepdims=True))[:, 1]
    entailment = np.exp(logits[:, entail])
    return entailment / entailment.sum(-1, keepdims=True)


def answer(text: str, labels: Sequence[str], label_scores: np.ndarray) -> dict:
    order = list(reversed(label_scores.argsort()))
    return {"sequence": text, "labels": [labels[i] for i in order], "scores": label_scores[order].tolist()}
