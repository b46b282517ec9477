"""Reranking with a cross-encoder: a query scored against each document, as sentence-transformers' CrossEncoder.

A cross-encoder is a text classifier of one label (the export's text-classification graph); each (query,
document) pair is one sequence for the batcher and counts against max_inputs. The score is the label's
logit through CrossEncoder's activation (sigmoid unless the model's config names another). Two bodies:

- TEI's `/rerank` (`query`, `texts`, `raw_scores`, `return_text`, `truncate`) -> `[{index, score, text}]`, best
  first, at `/rerank` and `/models/{name}`;
- Cohere's `/v1/rerank` (`model`, `query`, `documents`, `top_n`, `return_documents`) -> `{id, results[{index,
  relevance_score, document}], meta}`, the CohereRerank dialect.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field

from app.serving.model_folder import ModelFolder
from app.errors import InvalidInput
from app.tasks.base import Answer, Cost, Dialect, Model, Task, Work
from app.tasks.schemas import Options, Strict, Text
from app.tasks.specs import SPECS
from app.tasks.text_classification import activate

SHORTEN = "Shorten the query or the text, or send truncate: true to cut the pair"


class RerankRequest(BaseModel):
    model_config = Strict
    query: Text
    texts: Annotated[list[Text], Field(min_length=1)]
    raw_scores: bool = Field(False, description="the model's logit instead of its activation's score")
    return_text: bool = Field(False, description="each result carries its text")
    truncate: bool = Field(False, description="cut pairs longer than the model's limit (the longer text first) "
                           "instead of refusing them (413)")
    truncation_direction: Literal["right", "Right"] = Field("right", description="pairs are cut at their end only")
    options: Options = None


class Ranked(BaseModel):
    index: int
    score: float
    text: str | None = None


class Rerank(Task):
    spec = SPECS["text-ranking"]
    summary = "Rank texts by relevance to a query, with a cross-encoder"
    counted = "pairs (query x texts)"
    request = RerankRequest
    response = list[Ranked]
    expected = {"texts": "a list of strings", "texts[]": "a string"}

    def serves(self, folder: ModelFolder) -> bool:
        return folder.task == "text-classification" and len(folder.labels) == 1

    def claims(self, body: Mapping) -> bool:
        return "query" in body and "texts" in body

    def cost(self, body: RerankRequest, model: Model) -> Cost:
        return Cost(len(body.texts), sum(len(body.query) + len(text) for text in body.texts))

    async def prepare(self, model: Model, body: RerankRequest, deadline: float) -> Work:
        if not body.query.strip():
            raise InvalidInput("query is empty; send a query")
        for index, text in enumerate(body.texts):
            if not text.strip():
                raise InvalidInput(f"texts[{index}] is empty; send some text")
        encoded = await model.encode([(body.query, text) for text in body.texts], body.truncate, deadline, SHORTEN)
        return Work([e.ids for e in encoded])

    def answer(self, model: Model, body: RerankRequest, work: Work, rows: list[dict[str, np.ndarray]]) -> Answer:
        scores = self.scores(model, rows, body.raw_scores)
        order = np.argsort(-scores, kind="stable")
        return Answer([{"index": int(i), "score": float(scores[i]), **({"text": body.texts[i]} if body.return_text else {})}
                       for i in order])

    def info(self, model: Model) -> dict:
        return {"score_activation": self.activation(model)}

    @staticmethod
    def activation(model: Model) -> str:
        """CrossEncoder's: what the export recorded from the model's config, else sigmoid (its default for one
        label, and the text-classification pipeline's)."""
        return model.folder.manifest.get("activation") or "sigmoid"

    def scores(self, model: Model, rows: list[dict[str, np.ndarray]], raw: bool) -> np.ndarray:
        logits = np.stack([row["logits"] for row in rows])[:, 0]
        return activate(logits, "none" if raw else self.activation(model))


class Document(BaseModel):
    model_config = Strict
    text: Text


class CohereRerankRequest(BaseModel):
    model_config = Strict
    model: str | None = Field(None, description="the name of a served cross-encoder (GET /v1/models); default: the "
                              "default reranker")
    query: Text
    documents: Annotated[list[Text | Document], Field(min_length=1)] = Field(
        description="the documents: strings, or {text} objects")
    top_n: int | None = Field(None, ge=1, description="the best this many results; default: all")
    return_documents: bool = Field(False, description="each result carries its document as {text}")


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None


class CohereRerankAnswer(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict


class CohereRerank(Dialect):
    route = "/v1/rerank"
    summary = "Rerank in Cohere's shape (the cohere SDK's rerank; infinity, vLLM and LiteLLM speak it too)"
    request = CohereRerankRequest
    response = CohereRerankAnswer
    expected = {"documents": "a list of strings or {text} objects", "documents[]": "a string or a {text} object"}

    def model_name(self, body: CohereRerankRequest) -> str | None:
        return body.model

    def task_body(self, body: CohereRerankRequest, model: Model) -> RerankRequest:
        texts = [document if isinstance(document, str) else document.text for document in body.documents]
        # Cohere never refuses a long document: a pair longer than the model takes is cut (the longer text first).
        return RerankRequest(query=body.query, texts=texts, truncate=True)

    def render(self, model: Model, body: CohereRerankRequest, work: Work, answer: Answer) -> Answer:
        ranked = answer.content[: body.top_n] if body.top_n is not None else answer.content
        results = [{"index": item["index"], "relevance_score": item["score"],
                    **({"document": {"text": _text(body.documents[item["index"]])}} if body.return_documents else {})}
                   for item in ranked]
        return Answer({"id": str(uuid.uuid4()), "results": results,
                       "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}})


def _text(document: str | Document) -> str:
    return document if isinstance(document, str) else document.text


Rerank.dialects = (CohereRerank(),)
