"""What a task is: one module that turns a request body into sequences for a model and the rows back into an answer.

The serving core (app.serving.model, app.engine.batcher, app.engine.onnx_runtime, app.serving.state) knows no task; each
task module owns its request schema, its options and their checks, which output rows it
keeps, its postprocessing and what /models says about it. transformers' pipelines split a
task the same way (parameters, preprocess, forward, postprocess). Here a task writes two
hooks, `prepare` (the body's sequences) and `answer` (the rows back into the answer). One
path shared by every task counts and admits the request and renders its answer
(app.http.routes.run_task) and runs the sequences through the model's batcher between
the two hooks (`answer_request`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel

from app.engine.tokenize import Encoded, TextEncoder, TextInput, Tokens
from app.errors import InvalidInput, ServiceError
from app.serving.model_folder import ModelFolder
from app.serving.tracing import RequestRecord, Tracing
from app.settings import Settings
from app.tasks.specs import TaskSpec


class Model(Protocol):
    """What a task may use of a served model (app.serving.model.ServedModel is the one implementation): its
    export, its tokenizer, and the three ways to work that keep the event loop free."""

    name: str
    folder: ModelFolder
    encoder: TextEncoder
    takes_positions: bool  # the graph computes rows at given token positions (fill-mask's mask_positions)

    async def encode(self, inputs: list[TextInput], truncation: bool, deadline: float, shorten: str = ...) -> list[Encoded]:
        """Each input's ids with its special tokens; 413 for one too long unless `truncation`."""

    async def tokens(self, texts: Sequence[str], deadline: float, *, most: int, offsets: bool = False,
                     too_long: Callable[[int], ServiceError] | None = None) -> list[Tokens]:
        """Each text's tokens (no special tokens), at most `most`; see ServedModel.tokens."""

    async def infer(self, sequences: list[np.ndarray], deadline: float, positions=None,
                    record: RequestRecord | None = None) -> list[dict[str, np.ndarray]]:
        """Each sequence's share of every output of the graph, by name (the spec's `outputs`), through the batcher."""

    async def off_loop(self, function, *args, **kwargs):
        """`function(*args, **kwargs)` on the model's threads."""


@dataclass(frozen=True)
class Work:
    """What one request queues: its sequences (token ids, special tokens included), for a graph that takes them
    the token positions to compute rows at (fill-mask's masks), and what `answer` needs besides the rows."""

    sequences: list[np.ndarray]
    context: Any = None
    positions: list[np.ndarray] | None = None


@dataclass(frozen=True)
class Answer:
    content: Any  # JSON-ready
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Cost:
    """What one request will cost, counted from the body's lengths and the model's limits before anything is built.

    The serving core checks it against the ceilings (max_inputs, the queue's room, and
    max_body_bytes for the text handed to the tokenizer) before the task runs. Each model input
    then holds at most max_seq_len tokens (longer ones are cut or refused), so a request makes
    the model run at most sequences x max_seq_len tokens.
    """

    sequences: int  # model inputs the request will queue, at least: texts, text x label pairs, windows
    characters: int  # text the tokenizer will be handed, at most: each text once, each hypothesis once


def cost_of_texts(texts: Sequence[str]) -> Cost:
    return Cost(len(texts), sum(map(len, texts)))


class Dialect(ABC):
    """Another API's body and answer for a task, at a route of its own (OpenAI's /v1/embeddings, Cohere's
    /v1/rerank): the body is turned into the task's own, the task does the work, and its answer is turned back.
    No work of its own, so a dialect cannot answer differently from the task."""

    route: ClassVar[str]
    summary: ClassVar[str]
    request: ClassVar[type[BaseModel]]
    response: ClassVar[Any]
    expected: ClassVar[Mapping[str, str]] = {}

    def model_name(self, body: BaseModel) -> str | None:
        """The model the body names (OpenAI's and Cohere's `model`); None: the task's default model."""
        return None

    @abstractmethod
    def task_body(self, body: BaseModel, model: Model) -> BaseModel:
        """The task's own body for this one; raise InvalidInput for what the task cannot be asked."""

    @abstractmethod
    def render(self, model: Model, body: BaseModel, work: Work, answer: Answer) -> Answer:
        """The task's answer in this API's shape (`work`: the sequences run, for token counts)."""


class Task(ABC):
    """The interface every task implements; the defaults fit a task that is its models' own task."""

    spec: ClassVar[TaskSpec]  # what the task is, as the exporter and the tests know it too (app.tasks.specs)
    name: ClassVar[str]  # the spec's: transformers' pipeline name, "text-classification"
    route: ClassVar[str]  # the spec's: the endpoint that serves this task's default model, "/classify"
    summary: ClassVar[str]
    counted: ClassVar[str] = "inputs"  # what Cost.sequences counts, for the 413 message
    request: ClassVar[type[BaseModel]]  # the body, in the Hugging Face Inference API's shape
    response: ClassVar[Any]  # for the OpenAPI document
    expected: ClassVar[Mapping[str, str]]  # what a union field accepts, for validation messages (app.http.validation)
    large_answers: ClassVar[bool] = False  # answers may be megabytes: shaped and rendered off the event loop
    dialects: ClassVar[tuple[Dialect, ...]] = ()  # the other APIs' routes that this task answers

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            cls.name, cls.route = cls.spec.name, cls.spec.route

    @classmethod
    def from_settings(cls, settings: Settings) -> Task:
        return cls()

    def serves(self, folder: ModelFolder) -> bool:
        """Can a model exported so answer this task? (Its own task, or, for zero-shot, an NLI classifier.)"""
        return folder.task == self.name

    def check(self, model: Model) -> None:
        """At start-up, for every model it serves: raise ModelFolderError if this model cannot answer it."""

    def claims(self, body: Mapping) -> bool:
        """For a model that answers several tasks: is this raw body meant for this one (rather than its own)?"""
        return False

    @abstractmethod
    def cost(self, body: BaseModel, model: Model) -> Cost:
        """Before any encoding, pair or window is made: what the request will cost, by arithmetic on the body's
        lengths and the model's limits alone. Raise here what that arithmetic already refuses (a text surely
        longer than the model takes, a template that cannot take the label)."""

    @abstractmethod
    async def prepare(self, model: Model, body: BaseModel, deadline: float) -> Work:
        """Once `cost` was within the ceilings: the sequences to run, each of the body's texts tokenized once (on
        the model's threads, through `model.encode` or `model.tokens`). Raise here what only the tokens show."""

    @abstractmethod
    def answer(self, model: Model, body: BaseModel, work: Work, rows: list[dict[str, np.ndarray]]) -> Answer:
        """The rows the model computed, one per sequence of `work` in its order, shaped into the task's answer.
        No I/O: on the event loop, or on the model's threads for `large_answers`."""

    def info(self, model: Model) -> dict:
        """What this task adds to the model's entry in /models."""
        return {}


NO_TRACING = Tracing()


async def answer_request(task: Task, model: Model, body: BaseModel, deadline: float,
                         render: Callable[[Work, Answer], Answer] | None = None,
                         record: RequestRecord | None = None, tracing: Tracing = NO_TRACING) -> Answer:
    """The path every task's request takes once it is admitted: its sequences, the model's rows for them, the
    answer (in a dialect's shape when `render` is given). `record`: the request's, its steps traced by `tracing`."""
    with tracing.span(record, "tokenize"):
        work = await task.prepare(model, body, deadline)
    rows = await model.infer(work.sequences, deadline, work.positions, record)
    if record is not None and record.span is not None and record.ran is not None:
        tracing.interval(record, "queue", record.queued, record.ran)
    with tracing.span(record, "postprocess"):
        if task.large_answers:
            return await model.off_loop(_answer, task, model, body, work, rows, render)
        return _answer(task, model, body, work, rows, render)


def _answer(task: Task, model: Model, body: BaseModel, work: Work, rows: list[dict[str, np.ndarray]],
            render: Callable[[Work, Answer], Answer] | None) -> Answer:
    answer = task.answer(model, body, work, rows)
    return answer if render is None else render(work, answer)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, in float32, as transformers' pipelines compute it."""
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def check_not_blank(inputs: Sequence[str | tuple[str, ...]], what: str = "some text") -> None:
    """422 for the first input (a text, or a pair of them) with nothing but whitespace: no model answers it."""
    for index, item in enumerate(inputs):
        if any(not text.strip() for text in (item if isinstance(item, tuple) else (item,))):
            raise InvalidInput(f"inputs[{index}] is empty; send {what}")


def texts_of(inputs: str | list) -> list:
    return [inputs] if isinstance(inputs, str) else list(inputs)
