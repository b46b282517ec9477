"""System D: the server users write first — FastAPI + `transformers.pipeline` in PyTorch, one request at a time.

    python -m bench.systems.naive_server CHECKPOINT PORT [TASK]     # TASK: text-classification (default), fill-mask,
                                                           # token-classification; served where the service serves it

feature-extraction and text-ranking run sentence-transformers (SentenceTransformer.encode at /embed, CrossEncoder.predict
at /rerank), one request at a time, as a user wraps them first.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

ROUTES = {"text-classification": "/classify", "fill-mask": "/fill-mask", "token-classification": "/token-classification",
          "feature-extraction": "/embed", "text-ranking": "/rerank", "question-answering": "/question-answering"}


class Body(BaseModel):
    inputs: str


class QuestionAndContext(BaseModel):
    question: str
    context: str


class QuestionBody(BaseModel):
    inputs: QuestionAndContext


class RerankBody(BaseModel):
    query: str
    texts: list[str]


def plain(value):
    """The token-classification pipeline's scores are numpy floats, which FastAPI cannot encode."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value.item() if hasattr(value, "item") else value


def build(checkpoint: str, task: str = "text-classification") -> FastAPI:
    if task in ("feature-extraction", "text-ranking"):
        return build_sentence_transformers(checkpoint, task)
    from transformers import pipeline

    options = {"top_k": None} if task == "text-classification" else {}
    model = pipeline(task, model=checkpoint, device="cpu", **options)
    call = {"truncation": True} if task == "text-classification" else {}
    app = FastAPI()

    if task == "question-answering":
        @app.post(ROUTES[task])
        async def answer_question(body: QuestionBody):
            return plain(model(question=body.inputs.question, context=body.inputs.context))  # one request at a time
    else:
        @app.post(ROUTES[task])
        async def answer(body: Body):
            result = model(body.inputs, **call)  # blocks the loop: one request at a time
            return [result] if task == "text-classification" else plain(result)

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    return app


def build_sentence_transformers(checkpoint: str, task: str) -> FastAPI:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    app = FastAPI()
    if task == "feature-extraction":
        model = SentenceTransformer(checkpoint, device="cpu")

        @app.post("/embed")
        async def embed(body: Body):
            return model.encode([body.inputs]).tolist()  # blocks the loop: one request at a time
    else:
        model = CrossEncoder(checkpoint, device="cpu")

        @app.post("/rerank")
        async def rerank(body: RerankBody):
            scores = model.predict([(body.query, text) for text in body.texts])
            return sorted(({"index": i, "score": float(s)} for i, s in enumerate(scores)), key=lambda r: -r["score"])

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[1], *sys.argv[3:4]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
