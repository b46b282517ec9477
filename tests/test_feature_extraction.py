"""Sentence embeddings over HTTP (/embed, /models/{name}, OpenAI's /v1/embeddings) against sentence-transformers'
own `encode` on the same tiny folder, and the clients that call them (huggingface_hub, the openai SDK)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from app.settings import Settings
from conftest import BACKENDS
from server import ServerThread, metric_value

TEXTS = [
    "Hello world.",
    "Unicode survives: naïve café, Tōkyō and an emoji 🙂.",
    "a",
    "The movie was surprisingly good, and the acting was superb, but the ending dragged on for far too long.",
    "Spaces   between,\ttabs and  José's 🙂🙂 emoji.",
]
LONG = " ".join(["the film was brilliant and the plot was slow"] * 20)  # over the tiny model's 64 tokens


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, exported_embedder, exported_classifier):
    settings = Settings(models=f"embedder={exported_embedder},sentiment={exported_classifier}", backend=request.param,
                        precision="fp32", max_wait_ms=1, max_inputs=16)
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def oracle(tiny_embedder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_embedder), device="cpu")


def assert_close(ours, theirs) -> None:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4
    cosine = (ours * theirs).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
    assert cosine.min() >= 0.9999


def test_embed_equals_sentence_transformers(served, oracle):
    response = httpx.post(f"{served.url}/embed", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    assert_close(response.json(), oracle.encode(TEXTS))
    assert np.allclose(np.linalg.norm(response.json(), axis=1), 1.0, atol=1e-5)  # the folder's Normalize module


def test_one_text_is_a_list_of_one_vector_and_alone_equals_in_company(served, oracle):
    alone = httpx.post(f"{served.url}/embed", json={"inputs": TEXTS[1]}).json()
    assert len(alone) == 1
    together = httpx.post(f"{served.url}/embed", json={"inputs": TEXTS}).json()
    assert np.abs(np.asarray(alone[0]) - np.asarray(together[1])).max() <= 1e-5


@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_a_prompt_is_put_before_each_text_as_sentence_transformers_does(served, oracle, prompt_name):
    response = httpx.post(f"{served.url}/embed", json={"inputs": TEXTS, "prompt_name": prompt_name})
    assert response.status_code == 200, response.text
    assert_close(response.json(), oracle.encode(TEXTS, prompt_name=prompt_name))
    plain = httpx.post(f"{served.url}/embed", json={"inputs": TEXTS}).json()
    assert np.abs(np.asarray(plain) - np.asarray(response.json())).max() > 1e-3  # the prompt changed the vectors


def test_an_unknown_prompt_is_a_422_that_names_the_models_prompts(served):
    response = httpx.post(f"{served.url}/embed", json={"inputs": "x", "prompt_name": "question"})
    assert response.status_code == 422
    assert "'question'" in response.json()["error"] and "passage, query" in response.json()["error"]


def test_normalize_false_is_the_pooled_vector_before_normalize(served, oracle):
    from sentence_transformers import SentenceTransformer

    pooled_only = SentenceTransformer(modules=[oracle[0], oracle[1]], device="cpu")
    response = httpx.post(f"{served.url}/embed", json={"inputs": TEXTS, "normalize": False})
    assert_close(response.json(), pooled_only.encode(TEXTS))
    assert not np.allclose(np.linalg.norm(response.json(), axis=1), 1.0, atol=1e-3)


def test_a_long_text_is_a_413_unless_truncate_which_cuts_it_as_sentence_transformers_does(served, oracle):
    refused = httpx.post(f"{served.url}/embed", json={"inputs": [TEXTS[0], LONG]})
    assert refused.status_code == 413 and "inputs[1]" in refused.json()["error"]
    cut = httpx.post(f"{served.url}/embed", json={"inputs": [TEXTS[0], LONG], "truncate": True})
    assert cut.status_code == 200, cut.text
    assert_close(cut.json(), oracle.encode([TEXTS[0], LONG]))


def test_truncation_direction_left_keeps_the_last_tokens(served, oracle):
    import torch

    tokenizer, encoder = oracle.tokenizer, oracle[0].auto_model
    ids = tokenizer(LONG, add_special_tokens=False)["input_ids"][-62:]
    ids = torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(encoder(input_ids=ids).last_hidden_state.mean(dim=1), dim=1).numpy()
    response = httpx.post(f"{served.url}/embed", json={"inputs": LONG, "truncate": True, "truncation_direction": "left"})
    assert response.status_code == 200, response.text
    assert_close(response.json(), expected)


def test_inference_client_feature_extraction_works_unchanged(served, oracle):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{served.url}/models/embedder")
    assert_close(client.feature_extraction(TEXTS[1]), oracle.encode([TEXTS[1]]))
    assert_close(client.feature_extraction(TEXTS[0], prompt_name="query"), oracle.encode([TEXTS[0]], prompt_name="query"))


def test_openai_sdk_embeddings_create_works_unchanged(served, oracle):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused")
    answer = client.embeddings.create(model="embedder", input=TEXTS)  # the SDK asks for base64 and decodes it
    assert [item.index for item in answer.data] == list(range(len(TEXTS)))
    assert_close([item.embedding for item in answer.data], oracle.encode(TEXTS))
    assert answer.model == "embedder"
    tokens = sum(len(ids) for ids in oracle.tokenizer(TEXTS)["input_ids"])
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens
    floats = client.embeddings.create(model="embedder", input=TEXTS[0], encoding_format="float")
    assert_close([floats.data[0].embedding], oracle.encode([TEXTS[0]]))


def test_openai_base64_is_little_endian_float32(served, oracle):
    body = {"model": "embedder", "input": [TEXTS[2]], "encoding_format": "base64"}
    data = httpx.post(f"{served.url}/v1/embeddings", json=body).json()["data"]
    assert_close([np.frombuffer(base64.b64decode(data[0]["embedding"]), dtype="<f4")], oracle.encode([TEXTS[2]]))


def test_openai_dimensions_cuts_and_makes_unit_length_again(served, oracle):
    body = {"model": "embedder", "input": TEXTS, "dimensions": 8, "encoding_format": "float"}
    vectors = np.asarray([item["embedding"] for item in httpx.post(f"{served.url}/v1/embeddings", json=body).json()["data"]])
    full = oracle.encode(TEXTS)[:, :8]
    assert_close(vectors, full / np.linalg.norm(full, axis=1, keepdims=True))
    too_many = httpx.post(f"{served.url}/v1/embeddings", json={**body, "dimensions": 33})
    assert too_many.status_code == 422 and "dimensions 33 is more than the model's 32" in too_many.json()["error"]["message"]


def test_openai_errors_come_in_openais_shape_and_the_sdk_raises_its_classes(served):
    import openai

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert "no model is named 'text-embedding-3-small'" in missing.value.message and missing.value.code == "not_found"
    body = httpx.post(f"{served.url}/v1/embeddings", json={"model": "embedder", "input": 5}).json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and "input" in body["error"]["message"]


def test_openai_errors_for_the_wrong_model_and_too_many_inputs(served):
    import openai

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as wrong_task:
        client.embeddings.create(model="sentiment", input="x")
    assert "needs a feature-extraction model (embedder)" in wrong_task.value.message
    assert wrong_task.value.type == "invalid_request_error" and wrong_task.value.code == "validation"
    with pytest.raises(openai.APIStatusError) as too_many:
        client.embeddings.create(model="embedder", input=["x"] * 17)
    assert too_many.value.status_code == 413 and "at most 16" in too_many.value.message


def test_v1_models_lists_the_models_in_openais_shape(served):
    from openai import OpenAI

    names = [model.id for model in OpenAI(base_url=f"{served.url}/v1", api_key="unused").models.list()]
    assert sorted(names) == ["embedder", "sentiment"]


def test_texts_go_through_the_batcher_and_count_against_max_inputs(served):
    before = metric_value(served.url, "roberta_batch_size_sum", model="embedder")
    assert httpx.post(f"{served.url}/embed", json={"inputs": TEXTS}).status_code == 200
    assert metric_value(served.url, "roberta_batch_size_sum", model="embedder") - before == len(TEXTS)
    too_many = httpx.post(f"{served.url}/embed", json={"inputs": ["x"] * 17})
    assert too_many.status_code == 413 and too_many.json()["error_type"] == "too_many_inputs"


def test_a_parameter_of_another_task_is_a_422(served):
    response = httpx.post(f"{served.url}/models/embedder", json={"inputs": "x", "parameters": {"top_k": 2}})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("'top_k' is a text-classification parameter, and model 'embedder' does "
                                               "not do text-classification; its body has no parameters object; accepted: inputs")
    misspelt = httpx.post(f"{served.url}/models/embedder", json={"inputs": "x", "normalise": True})
    assert misspelt.status_code == 422 and "did you mean 'normalize'?" in misspelt.json()["error"]


def test_models_describes_the_embedding(served):
    model = httpx.get(f"{served.url}/models/embedder").json()
    assert model["tasks"] == ["feature-extraction"]
    assert model["embedding"]["pooling"] == "mean" and model["embedding"]["dimensions"] == 32
    assert model["embedding"]["prompts"]["query"] == "query: "


def test_with_two_embedding_models_and_no_default_v1_embeddings_still_answers_and_is_documented(exported_embedder):
    settings = Settings(models=f"one={exported_embedder},two={exported_embedder}", backend="onnxruntime", max_wait_ms=1)
    with ServerThread(settings) as server:
        paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
        assert "/v1/embeddings" in paths and "/embed" not in paths
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"model": "two", "input": "x"})
        assert answer.status_code == 200 and answer.json()["model"] == "two"
        refused = httpx.post(f"{server.url}/embed", json={"inputs": "x"})
        assert refused.status_code == 404 and "one, two" in refused.json()["error"]
