"""Reranking over HTTP (TEI's /rerank, /models/{name}, Cohere's /v1/rerank) against sentence-transformers'
CrossEncoder on the same tiny folder, and the cohere SDK."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from app.settings import Settings
from conftest import BACKENDS
from server import ServerThread, metric_value

QUERY = "Which film had good acting?"
DOCUMENTS = [
    "The film was brilliant and the acting superb.",
    "Paris is lovely in May.",
    "a",
    "Unicode survives: naïve café, Tōkyō and an emoji 🙂.",
    "The plot was slow and the ending dull.",
]
LONG = " ".join(["the film was brilliant and the plot was slow"] * 20)


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, exported_reranker, exported_embedder):
    settings = Settings(models=f"reranker={exported_reranker},embedder={exported_embedder}", backend=request.param,
                        precision="fp32", max_wait_ms=1, max_inputs=16)
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def oracle(tiny_reranker):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_reranker), device="cpu")


def expected(oracle, documents, **options) -> np.ndarray:
    return np.asarray(oracle.predict([(QUERY, document) for document in documents], **options), dtype=np.float64)


def test_rerank_equals_cross_encoder_predict_best_first(served, oracle):
    response = httpx.post(f"{served.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS})
    assert response.status_code == 200, response.text
    scores = expected(oracle, DOCUMENTS)
    ranked = response.json()
    assert [item["index"] for item in ranked] == list(np.argsort(-scores, kind="stable"))
    assert [item["score"] for item in ranked] == pytest.approx(sorted(scores, reverse=True), abs=1e-4)
    assert all("text" not in item for item in ranked)


def test_raw_scores_are_the_logits_and_return_text_the_texts(served, oracle):
    import torch

    body = {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True}
    ranked = httpx.post(f"{served.url}/models/reranker", json=body).json()
    logits = expected(oracle, DOCUMENTS, activation_fn=torch.nn.Identity())
    assert {item["index"]: item["score"] for item in ranked} == pytest.approx(dict(enumerate(logits)), abs=1e-4)
    assert all(item["text"] == DOCUMENTS[item["index"]] for item in ranked)


def test_each_pair_is_a_sequence_for_the_batcher_and_counts_against_max_inputs(served):
    before = metric_value(served.url, "roberta_batch_size_sum", model="reranker")
    assert httpx.post(f"{served.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS}).status_code == 200
    assert metric_value(served.url, "roberta_batch_size_sum", model="reranker") - before == len(DOCUMENTS)
    too_many = httpx.post(f"{served.url}/rerank", json={"query": QUERY, "texts": ["x"] * 17})
    assert too_many.status_code == 413 and "17 pairs (query x texts)" in too_many.json()["error"]


def test_a_long_pair_is_a_413_unless_truncate_which_cuts_it_as_cross_encoder_does(served, oracle):
    refused = httpx.post(f"{served.url}/rerank", json={"query": QUERY, "texts": [DOCUMENTS[0], LONG]})
    assert refused.status_code == 413 and "inputs[1]" in refused.json()["error"]
    cut = httpx.post(f"{served.url}/rerank", json={"query": QUERY, "texts": [DOCUMENTS[0], LONG], "truncate": True})
    assert cut.status_code == 200, cut.text
    scores = {item["index"]: item["score"] for item in cut.json()}
    assert scores == pytest.approx(dict(enumerate(expected(oracle, [DOCUMENTS[0], LONG]))), abs=1e-4)


@pytest.mark.parametrize("body, message", [
    ({"query": " ", "texts": ["x"]}, "query is empty"),
    ({"query": "q", "texts": ["x", ""]}, "texts[1] is empty"),
    ({"query": "q", "texts": []}, "texts"),
    ({"query": "q", "texts": ["x"], "truncation_direction": "left"}, "truncation_direction"),
])
def test_bad_bodies_are_422s_that_say_what_is_wrong(served, body, message):
    response = httpx.post(f"{served.url}/rerank", json=body)
    assert response.status_code == 422 and message in response.json()["error"], response.text


def test_cohere_sdk_rerank_works_unchanged(served, oracle):
    import cohere

    client = cohere.Client(base_url=served.url, api_key="unused")
    scores = expected(oracle, DOCUMENTS)
    answer = client.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True)
    best = list(np.argsort(-scores, kind="stable"))[:3]
    assert [result.index for result in answer.results] == best
    assert [result.relevance_score for result in answer.results] == pytest.approx(list(scores[best]), abs=1e-4)
    assert [result.document.text for result in answer.results] == [DOCUMENTS[i] for i in best]


def test_cohere_documents_as_text_objects_and_the_default_reranker(served, oracle):
    body = {"query": QUERY, "documents": [{"text": document} for document in DOCUMENTS]}
    answer = httpx.post(f"{served.url}/v1/rerank", json=body)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert {r["index"]: r["relevance_score"] for r in results} == pytest.approx(dict(enumerate(expected(oracle, DOCUMENTS))), abs=1e-4)
    assert all("document" not in r for r in results) and answer.json()["id"]


def test_cohere_errors_for_an_embedding_model_and_an_unknown_field(served):
    import cohere

    client = cohere.Client(base_url=served.url, api_key="unused")
    with pytest.raises(cohere.core.api_error.ApiError) as wrong:
        client.rerank(model="embedder", query=QUERY, documents=DOCUMENTS)
    assert wrong.value.status_code == 422 and "needs a text-ranking model (reranker)" in wrong.value.body["error"]["message"]
    response = httpx.post(f"{served.url}/v1/rerank", json={"query": QUERY, "documents": ["x"], "max_chunks_per_doc": 2})
    assert response.status_code == 422 and "max_chunks_per_doc" in response.json()["error"]["message"]


def test_the_reranker_is_still_a_classifier(served, oracle):
    answer = httpx.post(f"{served.url}/models/reranker", json={"inputs": {"text": QUERY, "text_pair": DOCUMENTS[0]}})
    assert answer.status_code == 200, answer.text
    assert answer.json()[0][0]["score"] == pytest.approx(float(expected(oracle, DOCUMENTS[:1])[0]), abs=1e-4)
    model = httpx.get(f"{served.url}/models/reranker").json()
    assert model["tasks"] == ["text-classification", "text-ranking"] and model["score_activation"] == "sigmoid"
