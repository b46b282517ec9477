"""The service over real HTTP (uvicorn on 127.0.0.1) on tiny exported models, against transformers' pipelines."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import pipeline

from app.serving.metrics import HTTP_REFUSALS
from app.settings import Settings
from conftest import BACKENDS
from server import ServerThread, metric_value

TEXTS = ["the film was good.", "this movie is awful, sadly.", "a", "her voice felt moving and I loved it from start to finish."]


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, exported_classifier, exported_mlm):
    settings = Settings(
        classify_model=exported_classifier,
        fill_mask_model=exported_mlm,
        backend=request.param,
        precision="fp32",
        max_wait_ms=20,
        max_batch_size=16,
    )
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def classifier_pipeline(tiny_classifier):
    return pipeline("text-classification", model=str(tiny_classifier), top_k=None)


@pytest.fixture(scope="module")
def fill_mask_pipeline(tiny_mlm):
    return pipeline("fill-mask", model=str(tiny_mlm))


def post(server, path, body, **kwargs):
    return httpx.post(f"{server.url}{path}", json=body, timeout=30, **kwargs)


def as_dict(answer):
    return {item["label"]: item["score"] for item in answer}


@pytest.mark.parametrize("function", [None, "softmax", "sigmoid", "none"])
def test_classify_equals_the_transformers_pipeline(served, classifier_pipeline, function):
    parameters = {} if function is None else {"function_to_apply": function}
    response = post(served, "/classify", {"inputs": TEXTS, "parameters": parameters})
    assert response.status_code == 200, response.text
    answers = response.json()
    kwargs = {} if function is None else {"function_to_apply": function}
    expected = classifier_pipeline(TEXTS, **kwargs)
    assert len(answers) == len(TEXTS)
    for got, want in zip(answers, expected):
        assert [x["label"] for x in got] == [x["label"] for x in want]
        for label, score in as_dict(want).items():
            assert as_dict(got)[label] == pytest.approx(score, abs=1e-4)


def test_classify_shapes_single_inputs_pairs_and_top_k(served, classifier_pipeline):
    single = post(served, "/classify", {"inputs": "the plot was dull."}).json()
    assert len(single) == 1 and len(single[0]) == 2  # always a list of lists
    top1 = post(served, "/classify", {"inputs": ["the plot was dull."], "parameters": {"top_k": 1}}).json()
    assert top1[0] == single[0][:1]
    pair = post(served, "/classify", {"inputs": {"text": "the plot", "text_pair": "was dull"}}).json()
    want = classifier_pipeline({"text": "the plot", "text_pair": "was dull"})
    assert as_dict(pair[0]) == pytest.approx(as_dict(want), abs=1e-4)


def test_fill_mask_equals_the_transformers_pipeline(served, fill_mask_pipeline):
    text = "The film was <mask>."
    got = post(served, "/fill-mask", {"inputs": text}).json()
    want = fill_mask_pipeline(text)
    assert [a["token"] for a in got] == [a["token"] for a in want]
    for mine, theirs in zip(got, want):
        assert mine["token_str"] == theirs["token_str"] and mine["sequence"] == theirs["sequence"]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)


def test_fill_mask_several_masks_and_lists(served, fill_mask_pipeline):
    text = "The <mask> was <mask>."
    got = post(served, "/fill-mask", {"inputs": text, "parameters": {"top_k": 3}}).json()
    want = fill_mask_pipeline(text, top_k=3)
    assert len(got) == 2 and all(len(row) == 3 for row in got)
    assert [[a["token"] for a in row] for row in got] == [[a["token"] for a in row] for row in want]
    assert [[a["sequence"] for a in row] for row in got] == [[a["sequence"] for a in row] for row in want]
    # A list of texts: one entry each, and a one-item list stays a list.
    listed = post(served, "/fill-mask", {"inputs": ["The film was <mask>.", text]}).json()
    assert len(listed) == 2 and isinstance(listed[0][0], dict) and isinstance(listed[1][0], list)
    one = post(served, "/fill-mask", {"inputs": ["The film was <mask>."]}).json()
    assert len(one) == 1 and one[0] == post(served, "/fill-mask", {"inputs": "The film was <mask>."}).json()


def test_fill_mask_targets_follow_the_pipeline_and_warn(served, fill_mask_pipeline):
    text = "The film was <mask>."
    targets = [" good", "brilliantness"]
    response = post(served, "/fill-mask", {"inputs": text, "parameters": {"targets": targets}})
    assert response.status_code == 200
    want = fill_mask_pipeline(text, targets=targets)
    assert sorted(a["token"] for a in response.json()) == sorted(a["token"] for a in want)
    assert "brilliantness" in response.headers["x-warning"]


def test_fill_mask_rows_are_computed_at_mask_positions_only(exported_mlm):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported_mlm / "model.onnx"))
    assert [node.name for node in session.get_inputs()] == ["input_ids", "attention_mask", "mask_positions"]
    ids = np.array([[0, 8, 4, 2], [0, 9, 9, 2]])
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                      "mask_positions": np.array([[0, 2], [1, 1], [1, 2]])})[0]
    assert logits.shape[0] == 3  # one row per asked position, never batch x length


def mask_answers(answers: list) -> list[dict]:
    """Every answer of a list of texts, texts with one mask (a flat list) and several (a list per mask) alike."""
    rows = [row for text in answers for row in (text if isinstance(text[0], list) else [text])]
    return [answer for row in rows for answer in row]


def test_concurrent_requests_are_batched_and_answer_as_sequential_ones(served):
    sentences = [f"{t} number {i}" for i in range(6) for t in TEXTS]
    sequential = [post(served, "/classify", {"inputs": s}).json() for s in sentences]
    before = metric_value(served.url, "roberta_batch_size_sum", model="cls")
    batches_before = metric_value(served.url, "roberta_batch_size_count", model="cls")

    async def burst():
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/classify", json={"inputs": s}) for s in sentences))
        return [r.json() for r in responses]

    concurrent = asyncio.run(burst())
    for one, other in zip(sequential, concurrent):
        assert as_dict(one[0]) == pytest.approx(as_dict(other[0]), abs=1e-5)
    sequences = metric_value(served.url, "roberta_batch_size_sum", model="cls") - before
    batches = metric_value(served.url, "roberta_batch_size_count", model="cls") - batches_before
    assert sequences == len(sentences)
    assert sequences / batches > 1.5, f"{batches} batches for {sequences} sequences: not batched"


def test_huggingface_hub_inference_client_works_unchanged(served):
    from huggingface_hub import InferenceClient

    labels = InferenceClient(model=f"{served.url}/classify").text_classification("the ending was brilliant.")
    assert {item.label for item in labels} == {"negative", "positive"}
    assert sum(item.score for item in labels) == pytest.approx(1.0, abs=1e-4)
    answers = InferenceClient(model=f"{served.url}/fill-mask").fill_mask("The film was <mask>.", top_k=3)
    assert len(answers) == 3 and all(isinstance(a.token, int) and a.sequence for a in answers)


def test_errors_are_json_with_a_type(served):
    cases = [
        ("/classify", {"inputs": "x", "parameters": {"top_k": 0}}, 422, "validation"),
        ("/classify", {"text": "x"}, 422, "validation"),
        ("/classify", {"inputs": []}, 422, "validation"),
        ("/classify", {"inputs": ["x"] * 65}, 413, "too_many_inputs"),
        ("/classify", {"inputs": "good " * 200}, 413, "input_too_long"),
        ("/fill-mask", {"inputs": "no mask here"}, 422, "validation"),
    ]
    for path, body, status, error_type in cases:
        response = post(served, path, body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error_type"] == error_type and response.json()["error"]
    assert "<mask>" in post(served, "/fill-mask", {"inputs": "no mask here"}).json()["error"]
    truncated = post(served, "/classify", {"inputs": "good " * 200, "parameters": {"truncation": True}})
    assert truncated.status_code == 200
    bad_json = httpx.post(f"{served.url}/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error_type"] == "invalid_json"


def test_health_readiness_and_info(served):
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{served.url}/readyz").status_code == 200
    info = httpx.get(f"{served.url}/info").json()
    classify = info["models"]["cls"]
    assert classify["labels"] == ["negative", "positive"] and classify["precision"] == "fp32"
    assert classify["providers"] == ["cpu"] and classify["max_seq_len"] == 64
    assert classify["batching"]["max_batch_size"] == 16
    # Measured at start-up, not the batcher's stand-in default (1e9 a run): on a CPU a larger run costs more.
    assert 0 <= classify["batching"]["run_overhead_tokens"] < 1e9
    assert info["models"]["mlm"]["mask_token"] == "<mask>"
    from app.engine.threads import usable_cores

    # a single-threaded run per core; two models loaded, so no solo session
    assert (classify["concurrent_runs"], classify["intra_op_threads"]) == (usable_cores(), 1)
    assert classify["solo_session"] is False


def test_info_shows_no_paths_and_no_library_versions_but_onnxruntime(served, exported_classifier):
    import onnxruntime

    text = httpx.get(f"{served.url}/info").text
    info = json.loads(text)
    assert info["onnxruntime"] == onnxruntime.__version__
    assert info["models"]["cls"]["export"]["source"] == "cls"  # the checkpoint folder's name
    assert str(exported_classifier.parent) not in text and "/tmp" not in text
    for library in ("torch", "transformers", "python", "optimum", "tokenizers"):
        assert f'"{library}"' not in text


def test_the_document_lists_only_the_routes_a_loaded_model_serves_and_the_services_error_body(served):
    schema = httpx.get(f"{served.url}/openapi.json").json()
    assert {"/classify", "/fill-mask", "/models/{name}", "/readyz"} <= set(schema["paths"])
    assert "/token-classification" not in schema["paths"] and "/zero-shot-classification" not in schema["paths"]
    bodies = schema["paths"]["/models/{name}"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert {body["$ref"].rsplit("/", 1)[1] for body in bodies} == {"ClassifyRequest", "FillMaskRequest"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["paths"]["/classify"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}


def test_a_misspelt_route_is_a_json_404_that_names_the_routes_there_are(served):
    response = httpx.post(f"{served.url}/classifiy", json={"inputs": "x"})
    assert response.status_code == 404 and response.json()["error_type"] == "not_found"
    message = response.json()["error"]
    assert message.startswith("no route POST /classifiy; did you mean /classify? the routes are: ")
    assert "POST /classify" in message and "POST /fill-mask" in message and "GET /healthz" in message
    assert "/token-classification" not in message  # no loaded model serves it


def test_docs_pages_work_offline(served):
    page = httpx.get(f"{served.url}/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    redoc = httpx.get(f"{served.url}/redoc").text
    for html in (page.text, redoc):
        assert not re.search(r"(src|href)=\"https?://", html), "the page loads something from another host"
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = httpx.get(f"{served.url}/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000
    schema = httpx.get(f"{served.url}/openapi.json").json()
    assert {"/classify", "/fill-mask"} <= set(schema["paths"])


def test_docs_can_be_turned_off(exported_classifier):
    with ServerThread(Settings(classify_model=exported_classifier, docs=False)) as server:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert httpx.get(f"{server.url}{path}").status_code == 404, path


def test_metrics_parse_and_name_what_the_readme_lists(served):
    post(served, "/classify", {"inputs": "fine"})
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{served.url}/metrics").text)}
    for name in [
        "roberta_requests",
        "roberta_request_duration_seconds",
        "roberta_queue_wait_seconds",
        "roberta_tokenize_duration_seconds",
        "roberta_inference_duration_seconds",
        "roberta_batch_size",
        "roberta_batch_padded_tokens",
        "roberta_batch_padding_ratio",
        "roberta_queue_depth",
        "roberta_queue_capacity",
        "roberta_rejected",
        "roberta_dropped_sequences",
        "roberta_model_info",
        "roberta_ready",
    ]:
        assert name in families, name
    requests = {tuple(sorted(s.labels.items())): s.value for s in families["roberta_requests"].samples if s.name.endswith("_total")}
    assert requests[(("endpoint", "/classify"), ("model", "cls"), ("status", "200"))] >= 1
    providers = [s.labels for s in families["roberta_model_info"].samples]
    backend = served.state.models.get("cls").engine.backend
    assert {"model": "cls", "task": "text-classification", "backend": backend, "precision": "fp32", "provider": "cpu"} in providers
    refused = {s.labels["reason"]: s.value for s in families["roberta_http_refused"].samples if s.name.endswith("_total")}
    assert set(refused) == set(HTTP_REFUSALS), "every reason is there from the start, at 0, for rate() and alerts"
    capacity = {s.labels["model"]: s.value for s in families["roberta_queue_capacity"].samples}
    assert capacity == {"cls": Settings.model_fields["max_queue"].default, "mlm": Settings.model_fields["max_queue"].default}



def test_json_rendered_item_by_item_equals_jsonresponse():
    from starlette.responses import JSONResponse

    from app.http.responses import render_json

    for content in ([[{"score": 0.5, "token": 3, "token_str": " café", "sequence": "ü 🙂"}]] * 3, [], {"a": [1, 2]}):
        assert render_json(content) == JSONResponse(content).body


def _work_until_cancelled(log: list):
    async def work():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    return work()


def test_a_hang_up_cancels_the_work_and_raises_499():
    from app.errors import ClientClosedRequest
    from app.http.requests import unless_disconnected

    async def main():
        log = []
        hung_up = asyncio.Event()

        async def receive():
            await hung_up.wait()
            return {"type": "http.disconnect"}

        waiting = asyncio.ensure_future(unless_disconnected(receive, _work_until_cancelled(log)))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        hung_up.set()
        with pytest.raises(ClientClosedRequest):
            await waiting
        assert log == ["cancelled"]
        return asyncio.all_tasks()

    left = asyncio.run(main())
    assert len(left) == 1  # only main itself: no watcher left behind


def test_an_answer_passes_and_a_cancel_from_elsewhere_stays_a_cancel():
    from app.http.requests import unless_disconnected

    async def main():
        async def receive():
            await asyncio.Event().wait()  # the client stays

        async def answer():
            await asyncio.sleep(0)
            return 42

        assert await unless_disconnected(receive, answer()) == 42
        log = []
        outer = asyncio.ensure_future(unless_disconnected(receive, _work_until_cancelled(log)))
        await asyncio.sleep(0.01)
        outer.cancel()  # a shutdown, not the client
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert log == ["cancelled"]
        assert len(asyncio.all_tasks()) == 1  # no watcher left behind

    asyncio.run(main())
