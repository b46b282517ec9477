"""What a task is: one module that turns a request body into sequences for a model and the rows back into an answer.

The serving core (app.model, app.batcher, app.runtime, app.state) knows no task; each
task module owns its request schema, its options and their checks, which output rows it
keeps, its postprocessing and what /models says about it. transformers' pipelines split a
task the same way (parameters, preprocess, forward, postprocess); here the forward step
is the shared batcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from app.model import ServedModel
from app.model_folder import ModelFolder
from app.settings import Settings


@dataclass(frozen=True)
class Answer:
    content: Any  # JSON-ready
    headers: dict[str, str] | None = None
    large: bool = False  # may be megabytes: render it off the event loop


class Task:
    """The interface every task implements; the defaults fit a task that is its models' own task."""

    name: ClassVar[str]  # transformers' pipeline name: "text-classification"
    route: ClassVar[str]  # the endpoint that serves this task's default model: "/classify"
    summary: ClassVar[str]
    counted: ClassVar[str] = "inputs"  # what `count` counts, for the 413 message
    request: ClassVar[type[BaseModel]]  # the body, in the Hugging Face Inference API's shape
    response: ClassVar[Any]  # for the OpenAPI document
    expected: ClassVar[Mapping[str, str]]  # what a union field accepts, for validation messages (app.validation)

    @classmethod
    def from_settings(cls, settings: Settings) -> Task:
        return cls()

    def serves(self, folder: ModelFolder) -> bool:
        """Can a model exported so answer this task? (Its own task, or, for zero-shot, an NLI classifier.)"""
        return folder.task == self.name

    def check(self, model: ServedModel) -> None:
        """At start-up, for every model it serves: raise ModelFolderError if this model cannot answer it."""

    def claims(self, body: Mapping) -> bool:
        """For a model that answers several tasks: is this raw body meant for this one (rather than its own)?"""
        return False

    def count(self, body: BaseModel) -> int:
        """Sequences the request will queue: what max_inputs and the queue are counted in."""
        return len(texts_of(body.inputs))

    async def __call__(self, model: ServedModel, body: BaseModel, deadline: float) -> Answer:
        raise NotImplementedError

    def info(self, model: ServedModel) -> dict:
        """What this task adds to the model's entry in /models."""
        return {}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, in float32, as transformers' pipelines compute it."""
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def texts_of(inputs: str | list) -> list:
    return [inputs] if isinstance(inputs, str) else list(inputs)
