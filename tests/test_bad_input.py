"""Bad input against a real `python -m app` process: every case is a 4xx JSON error, and the server keeps serving."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from server import ServerProcess

MAX_BODY = 1_048_576
LEAKS = re.compile(r"Traceback|File \"|/(?:work|tmp|home|usr|opt|root)/")


@pytest.fixture(scope="module")
def server(exported_classifier, exported_mlm):
    flags = ["--classify-model", str(exported_classifier), "--fill-mask-model", str(exported_mlm), "--precision", "fp32"]
    with ServerProcess(*flags, "--max-body-bytes", str(MAX_BODY)) as process:
        yield process


def send(server, path, body=None, *, content=None, headers=None, timeout=60):
    if content is None:
        content = json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=timeout)


def assert_error(response, status, error_type):
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert set(body) == {"error", "error_type", "request_id"} and body["error_type"] == error_type and body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert not LEAKS.search(body["error"]), body["error"]


CLASSIFY_REFUSED = [
    pytest.param(b"{not json", 400, "invalid_json", id="invalid-json"),
    pytest.param(b'{"inputs": "caf\xe9"}', 400, "invalid_json", id="not-utf8"),
    pytest.param(b"", 400, "invalid_json", id="empty-body"),
    pytest.param('{"inputs": "a film"}'.encode("utf-16"), 400, "invalid_json", id="utf-16-with-bom"),
    pytest.param('{"inputs": "a film"}'.encode("utf-16-le"), 400, "invalid_json", id="utf-16-without-bom"),
    pytest.param('{"inputs": "a film"}'.encode("utf-32"), 400, "invalid_json", id="utf-32"),
    pytest.param({"inputs": 5}, 422, "validation", id="inputs-number"),
    pytest.param({"inputs": [1, 2]}, 422, "validation", id="inputs-list-of-numbers"),
    pytest.param({"inputs": {"text": 3}}, 422, "validation", id="pair-of-wrong-type"),
    pytest.param({"inputs": "x", "parameters": {"truncation": "yes"}}, 422, "validation", id="truncation-string"),
    pytest.param(["x"], 422, "validation", id="body-is-a-list"),
    pytest.param({}, 422, "validation", id="missing-inputs"),
    pytest.param({"text": "x"}, 422, "validation", id="misnamed-inputs"),
    pytest.param({"inputs": ""}, 422, "validation", id="empty-string"),
    pytest.param({"inputs": "   \n"}, 422, "validation", id="blank-string"),
    pytest.param({"inputs": []}, 422, "validation", id="empty-list"),
    pytest.param({"inputs": ["x"] * 65}, 413, "too_many_inputs", id="too-many-inputs"),
    pytest.param({"inputs": "good " * 200}, 413, "input_too_long", id="too-many-tokens"),
    pytest.param({"inputs": "x", "parameters": {"top_k": 0}}, 422, "validation", id="top_k-zero"),
    pytest.param({"inputs": "x", "parameters": {"top_k": -3}}, 422, "validation", id="top_k-negative"),
    pytest.param({"inputs": "x", "parameters": {"top_k": 1.5}}, 422, "validation", id="top_k-float"),
    pytest.param({"inputs": "x", "parameters": {"top_k": "2"}}, 422, "validation", id="top_k-string"),
    pytest.param({"inputs": "x", "parameters": {"top_k": True}}, 422, "validation", id="top_k-bool"),
    pytest.param({"inputs": "x", "parameters": {"topk": 2}}, 422, "validation", id="unknown-parameter"),
    pytest.param({"inputs": "x", "stream": True}, 422, "validation", id="unknown-field"),
    pytest.param({"inputs": "x", "parameters": {"function_to_apply": "relu"}}, 422, "validation", id="unknown-function"),
    pytest.param(b'{"inputs": "\\ud800 lone surrogate"}', 422, "validation", id="lone-surrogate"),
]


@pytest.mark.parametrize("body, status, error_type", CLASSIFY_REFUSED)
def test_classify_refuses_bad_input_with_a_typed_json_error(server, body, status, error_type):
    response = send(server, "/classify", content=body) if isinstance(body, bytes) else send(server, "/classify", body)
    assert_error(response, status, error_type)


FILL_MASK_REFUSED = [
    pytest.param({"inputs": "no mask here"}, 422, "validation", id="no-mask"),
    pytest.param({"inputs": "<mask> " * 9}, 422, "validation", id="too-many-masks"),
    pytest.param({"inputs": "the <mask>", "parameters": {"targets": []}}, 422, "validation", id="targets-empty-list"),
    pytest.param({"inputs": "the <mask>", "parameters": {"targets": [""]}}, 422, "validation", id="targets-empty-word"),
    pytest.param({"inputs": "the <mask>", "parameters": {"targets": ["  ", ""]}}, 422, "validation", id="targets-blank"),
    pytest.param({"inputs": "the <mask>", "parameters": {"targets": [7]}}, 422, "validation", id="targets-number"),
    pytest.param({"inputs": "the <mask>", "parameters": {"top_k": 0}}, 422, "validation", id="top_k-zero"),
    pytest.param({"inputs": "the <mask>", "parameters": {"top_k": -1}}, 422, "validation", id="top_k-negative"),
    pytest.param({"inputs": "the <mask>", "parameters": {"top_k": 10**12}}, 422, "validation", id="top_k-huge"),
    pytest.param({"inputs": "the <mask>", "parameters": {"top_k": 2.0}}, 422, "validation", id="top_k-float"),
    pytest.param({"inputs": ["the <mask>", ""]}, 422, "validation", id="one-empty-text"),
    pytest.param({"inputs": "the <mask> " + "word " * 100}, 413, "input_too_long", id="too-many-tokens"),
    pytest.param({"inputs": ["<mask> " * 8] * 3, "parameters": {"top_k": 100}}, 413, "too_many_answers",
                 id="too-many-answers"),
    pytest.param({"inputs": "the <mask>", "parameters": {"targets": ["x" * 101]}}, 422, "validation",
                 id="target-too-long"),
    pytest.param({"inputs": "the <mask>", "parameters": {"targets": ["good"] * 1001}}, 422, "validation",
                 id="too-many-targets"),
]


@pytest.mark.parametrize("body, status, error_type", FILL_MASK_REFUSED)
def test_fill_mask_refuses_bad_input_with_a_typed_json_error(server, body, status, error_type):
    assert_error(send(server, "/fill-mask", body), status, error_type)


def test_answers_up_to_the_ceiling_are_given(server):
    # 2 texts x 8 masks x 100 = 1,600 answers: under the default ceiling of 2,048.
    response = send(server, "/fill-mask", {"inputs": ["<mask> " * 8] * 2, "parameters": {"top_k": 100}})
    assert response.status_code == 200
    assert sum(len(row) for text in response.json() for row in text) == 1600


def test_a_thousand_unknown_targets_give_a_short_warning_every_client_can_read(server):
    targets = [f"zq{index:04d}" + "x" * 90 for index in range(1000)]
    response = send(server, "/fill-mask", {"inputs": "the <mask>.", "parameters": {"targets": targets}})
    assert response.status_code == 200
    warning = response.headers["x-warning"]
    assert len(warning.encode()) <= 1024 and warning.isascii()
    assert warning.startswith("1000 target(s) not in the vocabulary") and "..." in warning
    assert "x" * 41 not in warning  # never echoed past 40 characters


@pytest.mark.parametrize("content_type", ["text/plain", "text/json", "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_gets_415(server, content_type):
    response = httpx.post(f"{server.url}/classify", content=b'{"inputs": "a film"}', headers={"content-type": content_type})
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json"])
def test_json_media_types_and_a_utf8_byte_order_mark_are_taken(server, content_type):
    body = '\ufeff{"inputs": "a film"}'.encode()
    assert httpx.post(f"{server.url}/classify", content=body, headers={"content-type": content_type}).status_code == 200


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/classify", {"inputs": 5}, "inputs must be a string, a {text, text_pair} object, or a list of them"),
        ("/classify", {"inputs": [1, 2]}, "inputs[0] must be a string or a {text, text_pair} object; inputs[1] must be"),
        ("/fill-mask", {"inputs": ["a <mask>", 3]}, "inputs[1] must be a string"),
        ("/fill-mask", {"inputs": "a <mask>", "parameters": {"targets": 7}}, "parameters.targets must be a word or a list of words"),
        ("/classify", {"inputs": "x", "parameters": {"topk": 2}},
         "unknown field 'topk' in parameters; accepted: top_k, function_to_apply, truncation"),
        ("/classify", {}, "inputs is required"),
        ("/classify", ["x"], "the body must be a JSON object"),
    ],
)
def test_validation_messages_name_the_field_and_what_it_accepts(server, path, body, message):
    response = send(server, path, body)
    assert_error(response, 422, "validation")
    assert response.json()["error"].startswith(message)
    assert "function-after" not in response.text and "TextPair" not in response.text


def test_what_a_client_sent_is_never_echoed_back_at_length(server):
    key = "k" * 1_000_000
    response = send(server, "/classify", {"inputs": "a film", key: 1})
    assert_error(response, 422, "validation")
    assert len(response.content) < 300 and "k" * 41 not in response.text


def test_a_body_over_the_limit_is_refused_from_its_declared_length(server):
    body = json.dumps({"inputs": "a" * (MAX_BODY + 10)}).encode()
    assert_error(send(server, "/classify", content=body), 413, "payload_too_large")


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(server):
    sent = 0

    def chunks():
        # No Content-Length: the server only learns the size by reading, and must stop early.
        nonlocal sent
        yield b'{"inputs": "'
        for _ in range(64):
            sent += 65536
            yield b"a" * 65536
        yield b'"}'

    response = httpx.post(
        f"{server.url}/classify", content=chunks(), headers={"content-type": "application/json"}, timeout=60
    )
    assert_error(response, 413, "payload_too_large")


def test_a_huge_integer_top_k_for_classify_returns_every_label(server):
    response = send(server, "/classify", {"inputs": "fine", "parameters": {"top_k": 10**30}})
    assert response.status_code == 200 and len(response.json()[0]) == 2


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a film\x00 with NUL\x00 bytes", id="nul-bytes"),
        pytest.param("هذا الفيلم رائع جدا", id="right-to-left-arabic"),
        pytest.param("\u202eevil\u202c override and \u200f marks", id="bidi-controls"),
        pytest.param("Z\u0351\u0300a\u0301\u0302l\u0303g\u0304o" * 3, id="combining-characters"),
        pytest.param("e\u0301" * 20, id="decomposed-accents"),
        pytest.param("\U0001f600\U0001f44d\u200d\U0001f3fd" * 5, id="emoji-with-joiners"),
    ],
)
def test_unusual_but_valid_text_is_answered(server, text):
    response = send(server, "/classify", {"inputs": text})
    assert response.status_code == 200, response.text
    assert {item["label"] for item in response.json()[0]} == {"negative", "positive"}
    masked = send(server, "/fill-mask", {"inputs": f"{text} <mask>"})
    assert masked.status_code == 200, masked.text


def test_a_megabyte_of_emoji_is_refused_as_too_long_or_too_large(server):
    emoji = "\U0001f600" * 250_000  # 1,000,000 bytes of UTF-8
    raw = json.dumps({"inputs": emoji}, ensure_ascii=False).encode()
    assert len(raw) < MAX_BODY
    assert_error(send(server, "/classify", content=raw), 413, "input_too_long")
    escaped = json.dumps({"inputs": emoji}).encode()  # \ud83d\ude00 escapes: 3 MB
    assert_error(send(server, "/classify", content=escaped), 413, "payload_too_large")
    truncated = send(server, "/classify", content=json.dumps({"inputs": emoji, "parameters": {"truncation": True}}, ensure_ascii=False).encode())
    assert truncated.status_code == 200


def test_the_server_still_serves_after_all_of_it(server):
    assert server.process.poll() is None
    response = send(server, "/classify", {"inputs": ["a good film", "a bad film"]})
    assert response.status_code == 200 and len(response.json()) == 2
    assert "Traceback" not in server.output


def test_unknown_paths_wrong_methods_and_unloaded_models_are_json_too(server, exported_classifier):
    assert_error(httpx.post(f"{server.url}/nope", json={}), 404, "not_found")
    assert_error(httpx.get(f"{server.url}/classify"), 405, "method_not_allowed")
    with ServerProcess("--classify-model", str(exported_classifier)) as classify_only:
        assert_error(send(classify_only, "/fill-mask", {"inputs": "the <mask>"}), 404, "not_found")


def test_a_text_of_exactly_the_models_length_is_served_and_one_token_more_is_a_413(server, exported_classifier):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(exported_classifier))
    room = 64 - 2  # max_seq_len less <s> and </s>

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    base = "the film was good and the acting was brilliant " * 20
    text = next(base[:n] for n in range(len(base), 0, -1) if length(base[:n]) == room)
    over = next(base[:n] for n in range(len(text), len(base)) if length(base[:n]) == room + 1)
    assert send(server, "/classify", {"inputs": text}).status_code == 200
    assert_error(send(server, "/classify", {"inputs": over}), 413, "input_too_long")
    assert send(server, "/classify", {"inputs": over, "parameters": {"truncation": True}}).status_code == 200
