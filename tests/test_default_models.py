"""The embedded default models: they export, serve, and answer through HTTP as they do offline."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.settings import Settings
from app.engine.tokenize import TextEncoder
from conftest import REPO
from server import ServerThread

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier

MODELS = REPO / "models"
DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"
POSITIVE = ["what a wonderful film", "a moving, beautifully acted story", "one of the best movies of the year"]
NEGATIVE = ["a dull, lifeless mess", "the worst film i have ever seen", "boring and far too long"]


@pytest.fixture(scope="session", params=["fp32", "int8"])
def served_default(request, default_exports):
    settings = Settings(
        classify_model=default_exports / "roberta-mini-sst2",
        fill_mask_model=default_exports / "roberta-mini-mlm",
        precision=request.param,
        max_wait_ms=5,
    )
    with ServerThread(settings) as server:
        yield request.param, server


def dev_set() -> tuple[list[str], np.ndarray]:
    rows = DEV.read_text(encoding="utf-8").splitlines()[1:]
    pairs = [row.rsplit("\t", 1) for row in rows if row.strip()]
    return [text.strip() for text, _ in pairs], np.array([int(label) for _, label in pairs])


def test_shipped_checkpoints_fit_the_size_budget():
    files = [p for p in MODELS.rglob("*") if p.is_file() and "roberta-mini" in str(p)]
    assert any(p.name == "model.safetensors" for p in files)
    assert sum(p.stat().st_size for p in files) <= 40 * 1024 * 1024


def test_clear_sentiment_comes_back_right_over_http(served_default):
    _, server = served_default
    answers = httpx.post(f"{server.url}/classify", json={"inputs": POSITIVE + NEGATIVE, "parameters": {"top_k": 1}}).json()
    assert [a[0]["label"] for a in answers] == ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)


def test_fill_mask_gives_words(served_default):
    _, server = served_default
    answers = httpx.post(f"{server.url}/fill-mask", json={"inputs": "She opened the <mask> and walked in."}).json()
    assert len(answers) == 5
    assert all(a["token_str"].strip().isalpha() for a in answers[:3])


def test_sst2_dev_accuracy_through_the_service_equals_offline(served_default, default_exports):
    precision, server = served_default
    texts, labels = dev_set()
    folder = default_exports / "roberta-mini-sst2"
    encoder = TextEncoder(folder / "tokenizer.json", 128, json.loads((folder / "tokenizer_config.json").read_text()))
    session = ort.InferenceSession(str(folder / ("model.onnx" if precision == "fp32" else "model.int8.onnx")))
    offline = []
    for encoded in encoder.encode(texts):  # one sentence at a time: no batching, no padding
        ids = encoded.ids[None, :]
        offline.append(int(session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0].argmax()))
    offline = np.array(offline)

    async def through_service():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            semaphore = asyncio.Semaphore(32)

            async def one(text):
                async with semaphore:
                    response = await client.post("/classify", json={"inputs": text, "parameters": {"top_k": 1}})
                    return 1 if response.json()[0][0]["label"] == "positive" else 0

            return np.array(await asyncio.gather(*(one(t) for t in texts)))

    served = asyncio.run(through_service())
    offline_accuracy, served_accuracy = (offline == labels).mean(), (served == labels).mean()
    if precision == "fp32":
        assert (served == offline).all(), "batching changed fp32 answers"
    else:  # dynamic INT8 quantizes activations per batch: batch mates may move a borderline answer
        assert abs(served_accuracy - offline_accuracy) <= 0.01 and (served == offline).mean() >= 0.98
    assert served_accuracy >= 0.80
