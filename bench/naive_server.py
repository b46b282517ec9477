"""System D: the server users write first — FastAPI + `transformers.pipeline` in PyTorch, one request at a time.

    python -m bench.naive_server CHECKPOINT PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Body(BaseModel):
    inputs: str


def build(checkpoint: str) -> FastAPI:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=checkpoint, top_k=None, device="cpu")
    app = FastAPI()

    @app.post("/classify")
    async def classify(body: Body):
        return [classifier(body.inputs, truncation=True)]  # blocks the loop: one request at a time

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
