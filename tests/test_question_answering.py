"""Extractive question answering over HTTP against transformers' question-answering pipeline, on a tiny
checkpoint: every parameter, unicode and emoji, contexts longer than a window."""

from __future__ import annotations

import httpx
import pytest

from app.settings import Settings
from conftest import BACKENDS
from server import ServerThread, metric_value

CONTEXT = ("Marie Curie moved to Paris in 1891. She studied physics, won two Nobel prizes, and her café "
           "naïve friends in Tōkyō sent 🙂 letters.")
QUESTION = "Where did Marie Curie move?"
LONG = " ".join(f"Sentence {i}: the film was brilliant, the plot slow, and the café in Tōkyō was closed 🙂." for i in range(5))


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, exported_qa, exported_classifier):
    settings = Settings(models=f"qa={exported_qa},sentiment={exported_classifier}", backend=request.param,
                        precision="fp32", max_wait_ms=1, max_inputs=64)
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def oracle(tiny_qa):
    from transformers import pipeline

    return pipeline("question-answering", model=str(tiny_qa))


def assert_same(ours, theirs) -> None:
    ours = ours if isinstance(ours, list) else [ours]
    theirs = theirs if isinstance(theirs, list) else [theirs]
    assert [(a["answer"], a["start"], a["end"]) for a in ours] == [(a["answer"], a["start"], a["end"]) for a in theirs]
    assert [a["score"] for a in ours] == pytest.approx([a["score"] for a in theirs], abs=1e-4)


@pytest.mark.parametrize("question, context, parameters", [
    (QUESTION, CONTEXT, {}),
    (QUESTION, CONTEXT, {"top_k": 5}),
    ("What did she win? 🙂", CONTEXT, {"top_k": 3, "align_to_words": False}),
    (QUESTION, CONTEXT, {"top_k": 4, "max_answer_len": 3}),
    (QUESTION, CONTEXT, {"handle_impossible_answer": True, "top_k": 2}),
    ("Which café was closed?", LONG, {}),  # longer than a window: cut with the default stride
    ("Which café was closed?", LONG, {"top_k": 6, "doc_stride": 5, "max_seq_len": 48}),
    ("Which café was closed?", LONG, {"top_k": 3, "doc_stride": 0, "max_question_len": 4, "handle_impossible_answer": True}),
    ("Tōkyō?", "Tōkyō", {"top_k": 20}),  # more candidates asked than there are
])
def test_answers_equal_the_pipeline(served, oracle, question, context, parameters):
    response = httpx.post(f"{served.url}/question-answering",
                          json={"inputs": {"question": question, "context": context}, "parameters": parameters})
    assert response.status_code == 200, response.text
    assert_same(response.json(), oracle(question=question, context=context, **parameters))


def test_inference_client_question_answering_works_unchanged(served, oracle):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{served.url}/models/qa")
    answer = client.question_answering(question=QUESTION, context=CONTEXT)
    expected = oracle(question=QUESTION, context=CONTEXT)
    assert (answer.answer, answer.start, answer.end) == (expected["answer"], expected["start"], expected["end"])
    several = client.question_answering(question=QUESTION, context=CONTEXT, top_k=3)
    assert [a.answer for a in several] == [a["answer"] for a in oracle(question=QUESTION, context=CONTEXT, top_k=3)]


def test_windows_go_through_the_batcher_and_count_against_max_inputs(served):
    before = metric_value(served.url, "roberta_batch_size_sum", model="qa")
    body = {"inputs": {"question": "Which café?", "context": LONG}, "parameters": {"doc_stride": 5, "max_seq_len": 48}}
    assert httpx.post(f"{served.url}/models/qa", json=body).status_code == 200
    windows = metric_value(served.url, "roberta_batch_size_sum", model="qa") - before
    assert windows > 3
    too_many = httpx.post(f"{served.url}/models/qa", json={**body, "inputs": {"question": "Which café?", "context": LONG * 8}})
    assert too_many.status_code == 413 and "windows; at most 64" in too_many.json()["error"]


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": {"question": " ", "context": CONTEXT}}, 422, "inputs.question is empty"),
    ({"inputs": {"question": QUESTION, "context": ""}}, 422, "inputs.context is empty"),
    ({"inputs": {"question": QUESTION}}, 422, "context"),
    ({"inputs": QUESTION}, 422, "{question, context}"),
    ({"inputs": {"question": QUESTION, "context": CONTEXT}, "parameters": {"max_seq_len": 65}}, 422, "more than the model takes (64)"),
    ({"inputs": {"question": QUESTION, "context": LONG}, "parameters": {"doc_stride": 60}}, 422, "doc_stride (60) must be less"),
    ({"inputs": {"question": QUESTION, "context": CONTEXT}, "parameters": {"doc_stride": 70, "max_seq_len": 64}}, 422, "larger than max_seq_len"),
    ({"inputs": {"question": LONG, "context": CONTEXT}}, 413, "the question fills the whole 64-token window"),
    ({"inputs": {"question": QUESTION, "context": CONTEXT}, "parameters": {"top_k": 0}}, 422, "top_k"),
    ({"inputs": {"question": QUESTION, "context": CONTEXT}, "parameters": {"aggregation_strategy": "simple"}}, 422, "aggregation_strategy"),
])
def test_bad_bodies_are_4xx_that_say_what_is_wrong(served, body, status, message):
    response = httpx.post(f"{served.url}/models/qa", json=body)
    assert response.status_code == status and message in response.json()["error"], response.text
