"""Token classification (NER, tagging): one label per token, or entities grouped from them, as transformers'
TokenClassificationPipeline. Every row of a text's output is kept, one per token.

Offsets, tokens and the words of grouped entities come from the exported tokenizer, so no
transformers is needed at serve time; the grouping rules are the pipeline's, step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from app.errors import InputTooLong, InvalidInput, TooManyInputs
from app.tasks.specs import SPECS
from app.tasks.schemas import Options, Strict, Text
from app.settings import Settings
from app.tasks.base import Answer, Cost, Model, Task, Work, check_not_blank, softmax, texts_of
from app.engine.tokenize import TextEncoder, Window

Strategy = Literal["none", "simple", "first", "average", "max"]
MAX_IGNORE_LABELS = 1000


class TokenClassificationParameters(BaseModel):
    model_config = Strict
    aggregation_strategy: Strategy = Field(
        "none", description="none: one answer per token; simple: adjacent tokens of one entity grouped; first, "
        "average, max: words take the label of their first token, the average scores, or their surest token"
    )
    ignore_labels: list[Text] | None = Field(
        None, max_length=MAX_IGNORE_LABELS, description='labels left out of the answer; default ["O"]'
    )
    stride: int | None = Field(
        None, ge=0, description="texts longer than the model takes are cut into windows overlapping by this many "
        "tokens (not with aggregation_strategy none); without it they are refused (413)"
    )


class TokenClassificationRequest(BaseModel):
    model_config = Strict
    inputs: Text | list[Text]
    parameters: TokenClassificationParameters = Field(default_factory=TokenClassificationParameters)
    options: Options = None


class Entity(BaseModel):
    entity: str | None = None  # aggregation_strategy none
    entity_group: str | None = None  # every other strategy
    score: float
    index: int | None = None  # aggregation_strategy none: the token's position, special tokens counted
    word: str
    start: int
    end: int


class TokenClassification(Task):
    spec = SPECS["token-classification"]
    summary = "Label the tokens of texts, or the entities they form"
    request = TokenClassificationRequest
    response = list[Entity] | list[list[Entity]]
    expected = {"inputs": "a string or a list of strings", "inputs[]": "a string"}

    def __init__(self, max_windows: int) -> None:
        self.max_windows = max_windows  # sequences one request may queue: texts, or their windows with a stride

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenClassification:
        return cls(settings.max_inputs)

    def cost(self, body: TokenClassificationRequest, model: Model) -> Cost:
        texts, options, encoder = texts_of(body.inputs), body.parameters, model.encoder
        if options.stride is not None:
            if options.aggregation_strategy == "none":
                raise InvalidInput('stride needs an aggregation_strategy other than "none" (as transformers\' pipeline)')
            if options.stride >= encoder.room:
                raise InvalidInput(f"stride must be less than {encoder.room}, the tokens of text one window holds")
        windows = 0
        for index, text in enumerate(texts):
            fewest = encoder.fewest_tokens(text)
            if options.stride is None and fewest > encoder.room:
                raise InputTooLong(self._too_long(index, encoder.max_seq_len))
            windows += encoder.window_count(fewest, options.stride)
        if windows > self.max_windows:
            raise TooManyInputs(self._too_many(f"at least {windows}", options.stride))
        return Cost(windows, sum(map(len, texts)))

    async def prepare(self, model: Model, body: TokenClassificationRequest, deadline: float) -> Work:
        texts, options, encoder = texts_of(body.inputs), body.parameters, model.encoder
        check_not_blank(texts)
        if options.stride is None:
            most = encoder.room
            too_long = lambda index: InputTooLong(self._too_long(index, encoder.max_seq_len))  # noqa: E731
        else:  # a text with more tokens than this makes more windows than a request may hold
            most = encoder.most_tokens(self.max_windows - (len(texts) - 1), options.stride)
            too_long = lambda index: TooManyInputs(self._too_many(f"more than {self.max_windows}", options.stride))  # noqa: E731
        # Each text tokenized once; its windows are counted from its length, and cut from its ids only then.
        tokens = await model.tokens(texts, deadline, most=most, offsets=True, too_long=too_long)
        windows = sum(encoder.window_count(len(text), options.stride) for text in tokens)
        if windows > self.max_windows:
            raise TooManyInputs(self._too_many(str(windows), options.stride))
        cut = [encoder.windows(text, stride=options.stride) for text in tokens]
        return Work([window.ids for text_windows in cut for window in text_windows], cut)

    def answer(self, model: Model, body: TokenClassificationRequest, work: Work,
               rows: list[dict[str, np.ndarray]]) -> Answer:
        options, answers, first = body.parameters, [], 0
        for text, text_windows in zip(texts_of(body.inputs), work.context):
            outputs = [row["logits"] for row in rows[first : first + len(text_windows)]]
            first += len(text_windows)
            answers.append(
                entities(text, text_windows, outputs, model.encoder, model.folder.labels, options.aggregation_strategy,
                         ["O"] if options.ignore_labels is None else options.ignore_labels)
            )
        return Answer(answers[0] if isinstance(body.inputs, str) else answers)

    def info(self, model: Model) -> dict:
        return {"aggregation_strategies": list(Strategy.__args__)}

    @staticmethod
    def _too_long(index: int, limit: int) -> str:
        return f"inputs[{index}] is longer than {limit} tokens, the most the model takes. Shorten it or pass a stride"

    def _too_many(self, windows: str, stride: int | None) -> str:
        return (f"with stride {stride} these texts make {windows} windows; at most {self.max_windows} are allowed per "
                "request: send fewer or shorter texts, or a smaller stride")


def entities(
    text: str,
    windows: Sequence[Window],
    logits: Sequence[np.ndarray],
    encoder: TextEncoder,
    labels: Sequence[str],
    strategy: str,
    ignore_labels: Sequence[str],
) -> list[dict]:
    """One text's answer from its windows' logits ([padded length, labels] each): the pipeline's postprocess."""
    found = []
    for window, rows in zip(windows, logits):
        scores = softmax(rows[: len(window)])
        grouped = aggregate(pre_entities(text, window, scores, encoder), strategy, labels, encoder)
        found += [e for e in grouped if e.get("entity") not in ignore_labels and e.get("entity_group") not in ignore_labels]
    if len(windows) > 1:
        found = aggregate_overlapping(found)
    return [_json_ready(entity) for entity in found]


def pre_entities(text: str, window: Window, scores: np.ndarray, encoder: TextEncoder) -> list[dict]:
    """Every token that is not special: its scores, place in the text, and whether it continues a word."""
    found = []
    for index, token_scores in enumerate(scores):
        if window.special[index]:
            continue
        token_id = int(window.ids[index])
        word = encoder.id_to_token(token_id) or ""
        start, end = (int(x) for x in window.offsets[index])
        word_ref = text[start:end]
        if encoder.marks_subwords:
            is_subword = len(word) != len(word_ref)
        else:  # the pipeline's heuristic for tokenizers that do not mark word pieces (byte-level BPE)
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if token_id == encoder.unk_id:
            word, is_subword = word_ref, False
        found.append({"word": word, "scores": token_scores, "start": start, "end": end, "index": index, "is_subword": is_subword})
    return found


def aggregate(found: list[dict], strategy: str, labels: Sequence[str], encoder: TextEncoder) -> list[dict]:
    if strategy in ("none", "simple"):
        tagged = []
        for entity in found:
            best = int(entity["scores"].argmax())
            tagged.append({
                "entity": labels[best], "score": entity["scores"][best], "index": entity["index"],
                "word": entity["word"], "start": entity["start"], "end": entity["end"],
            })
    else:
        tagged = aggregate_words(found, strategy, labels, encoder)
    return tagged if strategy == "none" else group_entities(tagged, encoder)


def aggregate_words(found: list[dict], strategy: str, labels: Sequence[str], encoder: TextEncoder) -> list[dict]:
    """A word's tokens take one label: its first token's, its surest token's, or their average scores'."""
    words, group = [], None
    for entity in found:
        if group is None:
            group = [entity]
        elif entity["is_subword"]:
            group.append(entity)
        else:
            words.append(_aggregate_word(group, strategy, labels, encoder))
            group = [entity]
    if group is not None:
        words.append(_aggregate_word(group, strategy, labels, encoder))
    return words


def _aggregate_word(group: list[dict], strategy: str, labels: Sequence[str], encoder: TextEncoder) -> dict:
    if strategy == "first":
        scores = group[0]["scores"]
    elif strategy == "max":
        scores = max(group, key=lambda entity: entity["scores"].max())["scores"]
    else:  # average
        scores = np.nanmean(np.stack([entity["scores"] for entity in group]), axis=0)
    best = int(scores.argmax())
    return {
        "entity": labels[best], "score": scores[best], "word": encoder.tokens_to_string([e["word"] for e in group]),
        "start": group[0]["start"], "end": group[-1]["end"],
    }


def _tag(label: str) -> tuple[str, str]:
    """("B", "PER") for B-PER; a label without a B-/I- prefix counts as a continuation."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def group_entities(tagged: list[dict], encoder: TextEncoder) -> list[dict]:
    """Adjacent tokens (or words) of the same entity become one; a B- tag starts a new one."""
    groups, current = [], []
    for entity in tagged:
        if current:
            bi, tag = _tag(entity["entity"])
            if not (tag == _tag(current[-1]["entity"])[1] and bi != "B"):
                groups.append(_group(current, encoder))
                current = []
        current.append(entity)
    if current:
        groups.append(_group(current, encoder))
    return groups


def _group(members: list[dict], encoder: TextEncoder) -> dict:
    return {
        "entity_group": members[0]["entity"].split("-", 1)[-1],
        "score": np.mean(np.nanmean([entity["score"] for entity in members])),
        "word": encoder.tokens_to_string([entity["word"] for entity in members]),
        "start": members[0]["start"],
        "end": members[-1]["end"],
    }


def aggregate_overlapping(found: list[dict]) -> list[dict]:
    """Entities from overlapping windows: of those that overlap, the longest (then the surest) stays."""
    if not found:
        return found
    found = sorted(found, key=lambda entity: entity["start"])
    kept, previous = [], found[0]
    for entity in found:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            kept.append(previous)
            previous = entity
    kept.append(previous)
    return kept


def _json_ready(entity: dict) -> dict:
    return {key: float(value) if key == "score" else value for key, value in entity.items()}
