"""The optional API key, against a real `python -m app` process."""

from __future__ import annotations

import httpx
import pytest

from server import ServerProcess

KEY = "s3cret-key-for-tests"


def flags(exported_classifier, *extra):
    return ["--classify-model", str(exported_classifier), *extra]


@pytest.fixture(scope="module")
def keyed(exported_classifier):
    with ServerProcess(*flags(exported_classifier), env={"ROBERTA_API_KEY": KEY}) as process:
        yield process


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer ü"],
)
def test_inference_without_the_right_key_is_401(keyed, authorization):
    headers = {} if authorization is None else {"Authorization": authorization.encode("utf-8")}
    response = httpx.post(f"{keyed.url}/classify", json={"inputs": "fine"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error_type"] == "unauthorized" and KEY not in response.text
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_key_comes_before_the_body_and_guards_the_model_routes_too(keyed, exported_classifier):
    for path in ("/classify", f"/models/{exported_classifier.name}", "/models/no-such-model"):
        for body in (b'{"inputs": "fine"}', b"{not json", b""):
            response = httpx.post(f"{keyed.url}{path}", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 401 and response.json()["error_type"] == "unauthorized", (path, body)
    right = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{keyed.url}/models/{exported_classifier.name}", json={"inputs": "fine"}, headers=right).status_code == 200
    assert httpx.post(f"{keyed.url}/classify", content=b"{not json", headers=right).status_code == 400


def test_the_right_key_is_served_and_health_and_metrics_stay_open(keyed):
    response = httpx.post(f"{keyed.url}/classify", json={"inputs": "fine"}, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert httpx.post(f"{keyed.url}/classify", json={"inputs": "fine"}, headers={"Authorization": f"bearer  {KEY}"}).status_code == 200
    for path in ("/healthz", "/readyz", "/info", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{keyed.url}{path}").status_code == 200, path
    assert KEY not in httpx.get(f"{keyed.url}/info").text


def test_health_and_metrics_can_require_the_key_too(exported_classifier):
    env = {"ROBERTA_API_KEY": KEY, "ROBERTA_PROTECT_HEALTH_AND_METRICS": "true"}
    with ServerProcess(*flags(exported_classifier), env=env, wait_ready=False) as process:
        for path in ("/healthz", "/readyz", "/info", "/metrics", "/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{process.url}{path}").status_code == 401, path
        authorized = httpx.get(f"{process.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert authorized.status_code == 200 and "roberta_requests_total" in authorized.text
