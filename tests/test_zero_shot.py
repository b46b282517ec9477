"""Zero-shot classification over HTTP against transformers' pipeline, on a tiny NLI checkpoint."""

from __future__ import annotations

import httpx
import pytest

from app.settings import Settings
from conftest import BACKENDS
from server import ServerThread, metric_value

TEXT = "The new phone's battery lasts two days, but the camera is poor. 🙂"


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, exported_nli):
    settings = Settings(models=f"nli={exported_nli}", backend=request.param, precision="fp32", max_wait_ms=1, max_inputs=16)
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def oracle(tiny_nli):
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=str(tiny_nli))


def assert_same(answer: dict, expected: dict) -> None:
    assert answer["sequence"] == expected["sequence"]
    theirs = dict(zip(expected["labels"], expected["scores"]))
    ours = dict(zip(answer["labels"], answer["scores"]))
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert answer["labels"] == expected["labels"]


@pytest.mark.parametrize(
    "parameters",
    [
        {"candidate_labels": ["battery", "camera", "price", "screen"]},
        {"candidate_labels": ["battery", "camera", "price"], "multi_label": True},
        {"candidate_labels": ["complaint"]},  # one label: scored against contradiction, as multi_label
        {"candidate_labels": "phones, cameras , ,food", "hypothesis_template": "Dieser Text handelt von {}."},
    ],
)
def test_answers_equal_the_pipeline(served, oracle, parameters):
    response = httpx.post(f"{served.url}/models/nli", json={"inputs": TEXT, "parameters": parameters})
    assert response.status_code == 200, response.text
    assert_same(response.json(), oracle(TEXT, **parameters))


def test_a_list_of_texts_and_the_same_model_still_classifies(served, oracle):
    texts = [TEXT, "Paris is lovely in May."]
    parameters = {"candidate_labels": ["travel", "tech"]}
    answers = httpx.post(f"{served.url}/zero-shot-classification", json={"inputs": texts, "parameters": parameters}).json()
    for answer, expected in zip(answers, oracle(texts, **parameters)):
        assert_same(answer, expected)
    plain = httpx.post(f"{served.url}/models/nli", json={"inputs": TEXT}).json()  # no candidate_labels: its own labels
    assert {item["label"] for item in plain[0]} == {"contradiction", "neutral", "entailment"}


def test_pairs_go_through_the_batcher_and_count_against_max_inputs(served):
    before = metric_value(served.url, "roberta_batch_size_sum", model="nli")
    labels = [f"label {i}" for i in range(8)]
    assert httpx.post(f"{served.url}/models/nli", json={"inputs": [TEXT, TEXT], "parameters": {"candidate_labels": labels}}).status_code == 200
    assert metric_value(served.url, "roberta_batch_size_sum", model="nli") - before == 16  # 2 texts x 8 labels
    too_many = httpx.post(f"{served.url}/models/nli", json={"inputs": [TEXT] * 3, "parameters": {"candidate_labels": labels}})
    assert too_many.status_code == 413 and "24 sequences (texts x labels)" in too_many.json()["error"]


@pytest.mark.parametrize(
    "template", ["no placeholder", "{:>999999999}", "{name}", "{0}", "{} {", "{}{}", "{{}}", "{0}" * 1000, "}{}"]
)
def test_a_template_without_exactly_one_field_and_no_other_brace_is_a_422(served, template):
    body = {"inputs": TEXT, "parameters": {"candidate_labels": ["a"], "hypothesis_template": template}}
    response = httpx.post(f"{served.url}/models/nli", json=body)
    assert response.status_code == 422 and "exactly one {}" in response.json()["error"]


def test_a_long_text_is_tokenized_once_only_as_far_as_a_pair_holds_it(served, oracle, monkeypatch):
    encoder = served.state.models.get("nli").encoder
    handed: list[int] = []
    content = encoder.content

    def counting(texts, **options):
        handed.extend(len(text) for text in texts)
        return content(texts, **options)

    monkeypatch.setattr(encoder, "content", counting)
    long_text = " ".join([TEXT] * 2000)  # about 130,000 characters, 64 tokens long after a few dozen
    labels = [f"topic {i}" for i in range(8)]
    answer = httpx.post(f"{served.url}/models/nli", json={"inputs": long_text, "parameters": {"candidate_labels": labels}})
    assert response_ok(answer)
    assert_same(answer.json(), oracle(long_text, candidate_labels=labels))
    hypotheses = sum(len(f"This example is {label}.") for label in labels)
    assert sum(handed) <= 8192 + hypotheses < len(long_text)  # one piece of the text (app.serving.model.PIECE_CHARS), once


def test_a_hypothesis_that_leaves_the_text_one_token_is_served_and_one_more_is_a_413(served, oracle, tiny_nli):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_nli))
    most = 64 - 4 - 1  # max_seq_len, the pair's special tokens, one token left for the text

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    words = "the film was good and the acting was brilliant " * 10
    template = next(words[:n] + "{}" for n in range(len(words), 0, -1) if length(words[:n] + "a") == most)
    fits = {"candidate_labels": ["a"], "hypothesis_template": template}
    answer = httpx.post(f"{served.url}/models/nli", json={"inputs": TEXT, "parameters": fits})
    assert response_ok(answer)
    assert_same(answer.json(), oracle(TEXT, **fits))
    assert length(template.replace("{}", "a battery")) > most
    over = {"candidate_labels": ["a", "a battery"], "hypothesis_template": template}
    refused = httpx.post(f"{served.url}/models/nli", json={"inputs": TEXT, "parameters": over})
    assert refused.status_code == 413 and "candidate_labels[1]" in refused.json()["error"]


def response_ok(response: httpx.Response) -> bool:
    assert response.status_code == 200, response.text
    return True


def test_a_long_text_is_cut_beside_its_hypothesis_but_a_hypothesis_too_long_is_a_413(served, oracle):
    long_text = " ".join([TEXT] * 6)
    parameters = {"candidate_labels": ["battery", "camera"]}
    answer = httpx.post(f"{served.url}/models/nli", json={"inputs": long_text, "parameters": parameters}).json()
    assert_same(answer, oracle(long_text, **parameters))
    too_long = {"candidate_labels": ["battery"], "hypothesis_template": TEXT * 3 + " {}"}
    response = httpx.post(f"{served.url}/models/nli", json={"inputs": "short", "parameters": too_long})
    assert response.status_code == 413 and response.json()["error_type"] == "input_too_long"


def test_a_misspelt_zero_shot_parameter_gets_a_hint_to_the_one_meant(served):
    response = httpx.post(f"{served.url}/models/nli", json={"inputs": "a phone", "parameters": {"candidate_label": ["a", "b"]}})
    assert response.status_code == 422
    assert "did you mean 'candidate_labels', a zero-shot-classification parameter?" in response.json()["error"]
    response = httpx.post(f"{served.url}/zero-shot-classification",
                          json={"inputs": "a phone", "parameters": {"candidate_labels": ["a"], "multilabel": True}})
    assert response.status_code == 422 and "did you mean 'multi_label'?" in response.json()["error"]
