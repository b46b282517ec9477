"""Extractive question answering, as transformers' QuestionAnsweringPipeline (fast tokenizers).

The question and the context are each tokenized once. A context longer than a window holds is cut into
windows that overlap by `doc_stride` tokens, as the tokenizer's own truncation with a stride cuts the second
text of a pair; each window is the question and a stretch of the context, one sequence for the batcher
(counted against max_inputs). The start and end logits of every window then go through the pipeline's
postprocessing: softmax over the window's context tokens and its first token, the best spans of at most
`max_answer_len` tokens, spans snapped to whole words (`align_to_words`), the same answer text from several
windows added up, the best `top_k`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from app.engine.tokenize import Tokens
from app.errors import InputTooLong, InvalidInput, TooManyInputs
from app.settings import Settings
from app.tasks.base import Answer, Cost, Model, Task, Work
from app.tasks.schemas import Options, Strict, Text
from app.tasks.specs import SPECS

DEFAULT_MAX_SEQ_LEN = 384  # the pipeline's, where the model takes more
NULL_SCORE = 1000000.0  # the pipeline's starting "no answer" score: larger than any product of two probabilities


class QuestionAndContext(BaseModel):
    model_config = Strict
    question: Text
    context: Text


class QuestionAnsweringParameters(BaseModel):
    model_config = Strict
    top_k: int = Field(1, ge=1, le=100, description="answers to return (fewer where the context has fewer)")
    doc_stride: int | None = Field(None, ge=0, description="tokens two windows of a long context share; default: "
                                   "min(max_seq_len / 2, 128)")
    max_answer_len: int = Field(15, ge=1, description="the longest answer, in tokens")
    max_seq_len: int | None = Field(None, ge=1, description="tokens of one window, question included; default: "
                                    "min(the model's limit, 384)")
    max_question_len: int = Field(64, ge=1, description="accepted as the pipeline does; like the pipeline with a "
                                  "fast tokenizer, it does not cut the question")
    handle_impossible_answer: bool = Field(False, description="the empty answer may win (models trained on SQuAD 2.0)")
    align_to_words: bool = Field(True, description="snap answers to whole words")


class QuestionAnsweringRequest(BaseModel):
    model_config = Strict
    inputs: QuestionAndContext
    parameters: QuestionAnsweringParameters = Field(default_factory=QuestionAnsweringParameters)
    options: Options = None


class QuestionAnswer(BaseModel):
    score: float
    start: int
    end: int
    answer: str


@dataclass(frozen=True)
class Windows:
    """Where each window's context tokens sit: the window's first context token in the context, how many, and where
    they start in the window's sequence (after the question and the special tokens between)."""

    spans: list[tuple[int, int]]  # (first, end) context token of each window
    context_at: int  # the index in a window's sequence of its first context token
    context: Tokens  # the context's (ids, offsets, words)


class QuestionAnswering(Task):
    spec = SPECS["question-answering"]
    summary = "Answer a question with a span of its context"
    counted = "windows"
    request = QuestionAnsweringRequest
    response = QuestionAnswer | list[QuestionAnswer]
    expected = {"inputs": "a {question, context} object"}

    def __init__(self, max_windows: int) -> None:
        self.max_windows = max_windows

    @classmethod
    def from_settings(cls, settings: Settings) -> QuestionAnswering:
        return cls(settings.max_inputs)

    def cost(self, body: QuestionAnsweringRequest, model: Model) -> Cost:
        question, context, encoder = body.inputs.question, body.inputs.context, model.encoder
        length, stride = self.window(model, body.parameters)
        # The fewest tokens each text can have: the most room a window can leave, the fewest windows.
        room = length - encoder.special_tokens_per_pair - encoder.fewest_tokens(question)
        fewest = encoder.fewest_tokens(context)
        if fewest > room:
            self._check_room(room, stride, length)
        windows = encoder.window_count(fewest, stride, room=room)
        if windows > self.max_windows:
            raise TooManyInputs(self._too_many(f"at least {windows}", stride))
        return Cost(windows, len(question) + len(context))

    async def prepare(self, model: Model, body: QuestionAnsweringRequest, deadline: float) -> Work:
        question, context = body.inputs.question, body.inputs.context
        if not question.strip():
            raise InvalidInput("inputs.question is empty; send a question")
        if not context.strip():
            raise InvalidInput("inputs.context is empty; send a context")
        encoder = model.encoder
        length, stride = self.window(model, body.parameters)
        (asked,) = await model.tokens([question], deadline, most=length)
        room = length - encoder.special_tokens_per_pair - len(asked)
        if room < 1:
            raise self._refusal(room, stride, length)
        # A context of more tokens than this makes more windows than a request may hold (or, with no room, any).
        most = room + (self.max_windows - 1) * (room - stride) if room > stride else room
        (text,) = await model.tokens([context], deadline, most=most, offsets=True,
                                     too_long=lambda _: self._refusal(room, stride, length))
        count = encoder.window_count(len(text), stride, room=room)
        step = room - stride
        spans = [(i * step, min(i * step + room, len(text))) for i in range(count)]
        sequences = [encoder.pair(asked.ids, text.ids[a:b]) for a, b in spans]
        return Work(sequences, Windows(spans, encoder.second_at(len(asked)), text))

    def answer(self, model: Model, body: QuestionAnsweringRequest, work: Work, rows: list[dict[str, np.ndarray]]) -> Answer:
        options, windows = body.parameters, work.context
        found = answers(body.inputs.context, windows, work.sequences, rows, options.top_k, options.max_answer_len,
                        options.handle_impossible_answer, options.align_to_words)
        return Answer(found[0] if len(found) == 1 else found)

    @staticmethod
    def window(model: Model, options: QuestionAnsweringParameters) -> tuple[int, int]:
        """(tokens of one window, the stride): the request's, else the pipeline's defaults."""
        limit = model.encoder.max_seq_len
        if options.max_seq_len is not None and options.max_seq_len > limit:
            raise InvalidInput(f"max_seq_len {options.max_seq_len} is more than the model takes ({limit})")
        length = options.max_seq_len or min(limit, DEFAULT_MAX_SEQ_LEN)
        stride = options.doc_stride if options.doc_stride is not None else min(length // 2, 128)
        if stride > length:
            raise InvalidInput(f"doc_stride ({stride}) is larger than max_seq_len ({length})")
        return length, stride

    def _check_room(self, room: int, stride: int, length: int) -> None:
        """A context that needs cutting into windows needs a window with room for some of it, more than the stride
        (the tokenizer's own truncation refuses the same)."""
        if room < 1 or stride >= room:
            raise self._refusal(room, stride, length)

    def _refusal(self, room: int, stride: int, length: int) -> Exception:
        if room < 1:
            return InputTooLong(f"the question fills the whole {length}-token window; shorten it, or send a larger "
                                "max_seq_len")
        if stride >= room:
            return InvalidInput(f"doc_stride ({stride}) must be less than the {room} tokens of context a "
                                f"{length}-token window holds beside this question; send a smaller doc_stride")
        return TooManyInputs(self._too_many(f"more than {self.max_windows}", stride))

    def _too_many(self, windows: str, stride: int) -> str:
        return (f"with doc_stride {stride} this context makes {windows} windows; at most {self.max_windows} are allowed "
                "per request: send a shorter context, a smaller doc_stride or a larger max_seq_len")


def answers(context: str, windows: Windows, sequences: list[np.ndarray], rows: list[dict[str, np.ndarray]], top_k: int,
            max_answer_len: int, handle_impossible: bool, align_to_words: bool) -> list[dict]:
    """The pipeline's postprocess over every window of one question."""
    null_score, found = NULL_SCORE, []
    tokens = windows.context
    for (first, end), sequence, row in zip(windows.spans, sequences, rows):
        n = len(sequence)
        # 1 where a token may be in the answer: the window's context tokens, and its first token, which the pipeline
        # keeps for models that point there when there is no answer.
        allowed = np.zeros((1, n), dtype=np.int64)
        allowed[0, windows.context_at: windows.context_at + end - first] = 1
        allowed[0, 0] = 1
        starts, ends, scores, null_score = best_spans(row["start_logits"][:n][None], row["end_logits"][:n][None],
                                                      allowed, null_score, top_k * 2 + 10 if align_to_words else top_k,
                                                      handle_impossible, max_answer_len)
        for s, e, score in zip(starts, ends, scores):
            start, stop = characters(tokens, first, end, windows.context_at, int(s), int(e), align_to_words)
            text = context[start:stop]
            same = next((a for a in found if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += float(score)
            else:
                found.append({"score": float(score), "start": start, "end": stop, "answer": text})
    if handle_impossible:
        found.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(found, key=lambda a: a["score"], reverse=True)[:top_k]


def best_spans(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, null_score: float, top_k: int,
               handle_impossible: bool, max_answer_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One window's candidate spans, as the pipeline's select_starts_ends and decode_spans find them (the same
    numpy steps, so that ties and the order of candidates fall the same way)."""
    masked = allowed == 0
    start = np.where(masked, -10000.0, start)
    end = np.where(masked, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible:
        null_score = min(null_score, float(start[0, 0] * end[0, 0]))
    start[0, 0] = end[0, 0] = 0.0
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = [np.argmax(flat)]
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[0:top_k]
        order = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(order, candidates.shape)[1:]
    # The pipeline tests membership in `nonzero()` of the 2-D mask, a (rows, columns) pair: its row indices (all 0)
    # count as allowed positions too, so a span at the first token passes. Kept, so answers stay the pipeline's.
    places = allowed.nonzero()
    keep = np.isin(starts, places) & np.isin(ends, places)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends], null_score


def characters(tokens, first: int, end: int, context_at: int, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """The answer's characters in the context for window tokens s..e: whole words with `align_to_words` (as the
    words fall inside this window), else the tokens' own offsets. A position outside the context (the window's
    first token) has the offsets (0, 0), as the tokenizer gives its special tokens."""
    def offsets(index: int) -> tuple[int, int]:
        at = index - context_at
        return tuple(int(x) for x in tokens.offsets[first + at]) if 0 <= at < end - first else (0, 0)

    in_context = [0 <= index - context_at < end - first for index in (s, e)]
    if align_to_words and all(in_context):
        words = tokens.words[first:end]
        start_word, end_word = words[s - context_at], words[e - context_at]
        in_start = np.flatnonzero(words == start_word)
        in_end = np.flatnonzero(words == end_word)
        return int(tokens.offsets[first + in_start[0]][0]), int(tokens.offsets[first + in_end[-1]][1])
    return offsets(s)[0], offsets(e)[1]
