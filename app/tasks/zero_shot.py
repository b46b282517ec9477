"""Zero-shot classification with an NLI model, as transformers' ZeroShotClassificationPipeline.

Each text is paired with one hypothesis per candidate label ("This example is {label}.");
the pairs are ordinary sequences for the model's batcher, one output row each, and count
against max_inputs and the queue. Each text and each hypothesis is tokenized once; the pairs
are joined from their ids. The entailment logits become the scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

import numpy as np
from pydantic import BaseModel, Field

from app.errors import InputTooLong, InvalidInput
from app.serving.model_folder import ModelFolder
from app.tasks.specs import SPECS
from app.tasks.schemas import Options, Strict, Text
from app.tasks.base import Answer, Cost, Model, Task, Work, check_not_blank, texts_of
from app.engine.tokenize import TextEncoder, Tokens

DEFAULT_TEMPLATE = "This example is {}."


class ZeroShotParameters(BaseModel):
    model_config = Strict
    candidate_labels: Annotated[list[Text], Field(min_length=1)] | Text = Field(
        description="the labels to choose from: a list, or one string of comma-separated labels"
    )
    hypothesis_template: Text = Field(
        DEFAULT_TEMPLATE, description="the hypothesis each label is put into: exactly one {} where the label goes, no "
        "other brace"
    )
    multi_label: bool = Field(
        False, description="false: scores sum to 1 over the labels; true: each label scored on its own (entailment "
        "against contradiction)"
    )


class ZeroShotRequest(BaseModel):
    model_config = Strict
    inputs: Text | list[Text]
    parameters: ZeroShotParameters
    options: Options = None


class ZeroShotAnswer(BaseModel):
    sequence: str
    labels: list[str]
    scores: list[float]


class ZeroShotClassification(Task):
    spec = SPECS["zero-shot-classification"]
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

    def cost(self, body: ZeroShotRequest, model: Model) -> Cost:
        texts, options = texts_of(body.inputs), body.parameters
        labels = candidate_labels(options.candidate_labels)
        if not labels:
            raise InvalidInput("candidate_labels names no label; send at least one")
        before, after = template_parts(options.hypothesis_template)
        encoder = model.encoder
        most = encoder.max_seq_len - encoder.special_tokens_per_pair - 1  # a hypothesis leaves the text a token
        for index, label in enumerate(labels):
            if encoder.fewest_tokens(before, label, after) > most:
                raise InputTooLong(self._too_long(index, most))
        hypotheses = sum(len(before) + len(label) + len(after) for label in labels)
        return Cost(len(texts) * len(labels), sum(map(len, texts)) + hypotheses)

    async def prepare(self, model: Model, body: ZeroShotRequest, deadline: float) -> Work:
        texts, options, encoder = texts_of(body.inputs), body.parameters, model.encoder
        labels = candidate_labels(options.candidate_labels)
        check_not_blank(texts)
        before, after = template_parts(options.hypothesis_template)
        specials = encoder.special_tokens_per_pair
        most = encoder.max_seq_len - specials - 1
        # Each hypothesis is made and tokenized once, each text tokenized once (as far as any pair can hold it);
        # the pairs are joined from their ids.
        hypotheses = await model.tokens(
            [before + label + after for label in labels], deadline, most=most,
            too_long=lambda index: InputTooLong(self._too_long(index, most)),
        )
        tokens = await model.tokens(texts, deadline, most=encoder.max_seq_len - specials)
        return Work([pair_ids(encoder, text, hypothesis) for text in tokens for hypothesis in hypotheses], labels)

    def answer(self, model: Model, body: ZeroShotRequest, work: Work, rows: list[dict[str, np.ndarray]]) -> Answer:
        texts, labels = texts_of(body.inputs), work.context
        logits = np.stack([row["logits"] for row in rows]).reshape(len(texts), len(labels), -1)
        entail = entailment_id(model.folder.label2id)
        answers = [answer(text, labels, scores(per_text, entail, body.parameters.multi_label))
                   for text, per_text in zip(texts, logits)]
        return Answer(answers[0] if isinstance(body.inputs, str) else answers)

    @staticmethod
    def _too_long(index: int, most: int) -> str:
        return (f"the hypothesis for candidate_labels[{index}] is longer than {most} tokens, the most that leaves room "
                "for the text. Shorten the hypothesis_template or the labels")

    def info(self, model: Model) -> dict:
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


def template_parts(template: str) -> tuple[str, str]:
    """The text before and after the template's one `{}`. The pipeline calls `template.format(label)`; here a
    template holds exactly one `{}` and no other brace, so joining the parts with the label is that, and a
    template that would repeat the label, name a field, escape a brace or carry a format spec is refused."""
    before, field, after = template.partition("{}")
    if not field or any(brace in before or brace in after for brace in "{}"):
        raise InvalidInput('hypothesis_template must hold exactly one {} where the label goes, and no other brace, '
                           'as in "This example is {}."')
    return before, after


def pair_ids(encoder: TextEncoder, text: Tokens, hypothesis: Tokens) -> np.ndarray:
    """The tokenizer's pair of `text` and `hypothesis` truncated "only_first", from their ids: the text is cut
    so that the pair fits max_seq_len. `text` holds at least the tokens any pair can keep of it; a hypothesis
    too long to leave the text a token was refused before."""
    room = encoder.max_seq_len - encoder.special_tokens_per_pair - len(hypothesis)
    return encoder.pair(text.ids[:room], hypothesis.ids)


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
