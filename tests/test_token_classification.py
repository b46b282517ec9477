"""Token classification over HTTP against transformers' pipeline, for every aggregation strategy.

A tiny NER checkpoint with random weights (its classifier spread so tags vary from token to
token), texts chosen for what breaks offset arithmetic: unicode, emoji split into bytes,
repeated spaces and tabs, words cut into pieces, and a text longer than the model takes.
"""

from __future__ import annotations

import httpx
import pytest

from app.settings import Settings
from conftest import BACKENDS
from server import ServerThread

TEXTS = [
    "John Smith lives in Paris.",
    "Zoë   visited Tōkyō\tand  Zürich 🙂🙂 last May!",
    "the acting was brilliant but the plot felt slow",
    "  leading spaces, trailing spaces   ",
    "Numbers 12345 and e-mail: someone@example.org?",
]
LONG = " ".join(["Marie Curie moved from Warsaw to Paris in 1891 and studied physics."] * 12)
STRATEGIES = ["none", "simple", "first", "average", "max"]


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, exported_ner):
    settings = Settings(models=f"ner={exported_ner}", backend=request.param, precision="fp32", max_wait_ms=1)
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def pipelines(tiny_ner):
    from transformers import pipeline

    return {strategy: pipeline("token-classification", model=str(tiny_ner), aggregation_strategy=strategy) for strategy in STRATEGIES}


def assert_same_entities(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected), (served, expected)
    for ours, theirs in zip(served, expected):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            if key == "score":
                assert ours[key] == pytest.approx(float(value), abs=1e-4)
            else:
                assert ours[key] == value, (key, ours, theirs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_equals_the_pipeline(served, pipelines, strategy):
    response = httpx.post(f"{served.url}/models/ner", json={"inputs": TEXTS, "parameters": {"aggregation_strategy": strategy}})
    assert response.status_code == 200, response.text
    answers = response.json()
    assert any(answers), "the tiny model should find some entities"
    for text, answer in zip(TEXTS, answers):
        assert_same_entities(answer, pipelines[strategy](text))


def test_ignore_labels_and_the_default_endpoint(served, pipelines):
    body = {"inputs": TEXTS[1], "parameters": {"aggregation_strategy": "simple", "ignore_labels": ["PER", "MISC"]}}
    answer = httpx.post(f"{served.url}/token-classification", json=body).json()
    assert_same_entities(answer, pipelines["simple"](TEXTS[1], ignore_labels=["PER", "MISC"]))
    everything = httpx.post(f"{served.url}/token-classification", json={"inputs": TEXTS[0], "parameters": {"ignore_labels": []}})
    assert len(everything.json()) == len(pipelines["none"].tokenizer(TEXTS[0])["input_ids"]) - 2  # every token but <s> </s>


@pytest.mark.parametrize(("strategy", "stride"), [("first", 8), ("simple", 20), ("max", 0)])
def test_long_texts_with_a_stride_equal_the_pipeline(served, pipelines, strategy, stride):
    assert len(pipelines["none"].tokenizer(LONG)["input_ids"]) > 64  # longer than the model takes
    body = {"inputs": LONG, "parameters": {"aggregation_strategy": strategy, "stride": stride}}
    response = httpx.post(f"{served.url}/models/ner", json=body)
    assert response.status_code == 200, response.text
    assert_same_entities(response.json(), pipelines[strategy](LONG, stride=stride))


def test_what_the_pipeline_refuses_is_a_clear_4xx(served):
    def post(parameters, inputs=LONG):
        return httpx.post(f"{served.url}/models/ner", json={"inputs": inputs, "parameters": parameters})

    too_long = post({})
    assert too_long.status_code == 413 and "pass a stride" in too_long.json()["error"]
    assert post({"stride": 8}).status_code == 422  # the pipeline refuses a stride with strategy none too
    assert "less than 62" in post({"stride": 62, "aggregation_strategy": "first"}).json()["error"]
    assert post({"aggregation_strategy": "bogus"}).status_code == 422
    assert post({"top_k": 3}, "a text").json()["error"].startswith("'top_k' is a text-classification parameter")
    many = post({"stride": 61, "aggregation_strategy": "first"})  # a window per token: more than max_inputs
    assert many.status_code == 413 and many.json()["error_type"] == "too_many_inputs"


def test_a_text_longer_than_a_piece_of_tokenizer_work_equals_the_pipeline(served, pipelines):
    text = LONG + " the film was good and the acting was brilliant." * 160  # tokenized in two pieces (PIECE_CHARS)
    assert 8192 < len(text) and len(pipelines["none"].tokenizer(text)["input_ids"]) < 62 * 64  # within 64 windows
    body = {"inputs": text, "parameters": {"aggregation_strategy": "first", "stride": 0}}
    response = httpx.post(f"{served.url}/models/ner", json=body)
    assert response.status_code == 200, response.text
    assert_same_entities(response.json(), pipelines["first"](text, stride=0))


@pytest.fixture
def handed(served, monkeypatch) -> list[int]:
    """The characters of every text the tokenizer is handed, in calls."""
    encoder = served.state.models.get("ner").encoder
    calls: list[int] = []
    content = encoder.content

    def counting(texts, **options):
        calls.append(sum(map(len, texts)))
        return content(texts, **options)

    monkeypatch.setattr(encoder, "content", counting)
    return calls


def test_windows_are_counted_before_any_is_built_and_tokenizing_stops_at_the_first_text_over(served, handed):
    # 64 texts that the arithmetic allows a window each but make several: the first job of texts tells.
    many = {"inputs": ["a " * 300] * 64, "parameters": {"aggregation_strategy": "simple", "stride": 0}}
    refused = httpx.post(f"{served.url}/models/ner", json=many)
    assert refused.status_code == 413 and "more than 64 windows" in refused.json()["error"]
    assert len(handed) == 1 and handed[0] <= 8192
    # One 300 KB text: arithmetic alone says it makes more windows than allowed; nothing is tokenized.
    handed.clear()
    parameters = {"aggregation_strategy": "simple", "stride": 61}  # a window per token past the first 62
    huge = httpx.post(f"{served.url}/models/ner", json={"inputs": "supercalifragilistic " * 15_000, "parameters": parameters})
    assert huge.status_code == 413 and "at least" in huge.json()["error"] and handed == []


def test_one_small_model_alone_does_not_spin(served):
    # The tiny test models are far narrower than app.serving.model_folder.WIDE_HIDDEN_SIZE: like the embedded model, they
    # run faster with ONNX Runtime's threads waiting instead of spinning.
    model = served.state.models.get("ner")
    if model.engine.backend != "onnxruntime":
        pytest.skip("spinning is ONNX Runtime's")
    assert model.engine.folder.hidden_size < 512
    options = model.engine._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
