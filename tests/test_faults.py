"""Faults against a real server process: no CUDA, broken model folders, and inference that raises."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server import REPO, ServerProcess, metric_value

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier

FAULTY_APP = [sys.executable, str(Path(__file__).with_name("faulty_app.py"))]


def test_cuda_requested_without_cuda_falls_back_to_cpu_and_says_so(exported_classifier):
    with ServerProcess("--classify-model", str(exported_classifier), "--providers", "cuda,cpu") as process:
        info = httpx.get(f"{process.url}/info").json()["models"]["cls"]
        # Naming providers asks for ONNX Runtime, whose auto precision on a CPU is fp32
        assert info["backend"] == "onnxruntime" and info["providers"] == ["cpu"] and info["precision"] == "fp32"
        running = metric_value(process.url, "roberta_model_info", model="cls", provider="cpu")
        assert running == 1
        assert httpx.post(f"{process.url}/classify", json={"inputs": "good"}).status_code == 200
    assert "CUDA requested but this onnxruntime build has no CUDA provider; running on CPU" in process.output


def test_a_default_cpu_start_says_what_runs_and_warns_about_nothing(exported_classifier):
    with ServerProcess("--classify-model", str(exported_classifier)) as process:
        info = httpx.get(f"{process.url}/info").json()["models"]["cls"]
    # fp32 and ONNX Runtime's INT8 are exported: auto takes fp32, on OpenVINO in bf16 where the CPU computes in it
    if info["backend"] == "openvino":
        assert info["precision"] in ("bf16", "fp32")
        line = f"cls: text-classification, OpenVINO {info['precision']} on the CPU (model.onnx)"
    else:
        assert info["precision"] == "fp32"
        line = "cls: text-classification, ONNX Runtime fp32 on cpu (model.onnx)"
    assert line in process.output
    assert "WARNING" not in process.output, process.output


def start_and_fail(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "app", "--port", "0", *flags]
    return run_and_fail(command, env)


def run_and_fail(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROBERTA_")}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


UVICORN = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", "0"]


@pytest.mark.parametrize(
    "command, env, expected",
    [
        pytest.param(["--classify-model", "/nowhere"], None, "model folder /nowhere does not exist", id="app-missing-folder"),
        pytest.param([], None, "name a model: ROBERTA_MODEL_REPOSITORY", id="app-no-model"),
        pytest.param(["--classify-model", "/x", "--max-queue", "8"], None,
                     "max_queue (8) must be at least max_inputs (64)", id="app-queue-smaller-than-a-request"),
        pytest.param(["--classify-model", "/x", "--max-batch-size", "0"], None,
                     "ROBERTA_MAX_BATCH_SIZE / --max-batch-size: Input should be greater than or equal to 1",
                     id="app-bad-number"),
        pytest.param(UVICORN, {"ROBERTA_CLASSIFY_MODEL": "/nowhere"}, "model folder /nowhere does not exist",
                     id="uvicorn-missing-folder"),
        pytest.param(UVICORN, {}, "name a model: ROBERTA_MODEL_REPOSITORY", id="uvicorn-no-model"),
    ],
)
def test_every_start_up_error_is_one_line_and_exit_1_on_every_entry_point(command, env, expected):
    if command[:1] != [sys.executable]:
        command = [sys.executable, "-m", "app", "--port", "0", *command]
    assert_one_error_line(run_and_fail(command, env), expected)


OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")


@pytest.mark.parametrize(
    "broken, backend, precision, expected",
    [
        ("model.onnx", "onnxruntime", "fp32", "could not be loaded by ONNX Runtime"),
        ("model.int8.onnx", "onnxruntime", "int8", "could not be loaded by ONNX Runtime"),
        pytest.param("model.onnx", "openvino", "fp32", "could not be loaded by OpenVINO", marks=OPENVINO),
        ("tokenizer.json", "auto", "fp32", "tokenizer.json could not be read"),
        ("config.json", "auto", "fp32", "config.json is not valid JSON"),
    ],
)
def test_a_corrupt_model_file_exits_non_zero_with_one_clear_line(exported_classifier, tmp_path, broken, backend,
                                                                 precision, expected):
    folder = tmp_path / "model"
    shutil.copytree(exported_classifier, folder)
    (folder / broken).write_bytes(b"\x00garbage, not what this file should hold")
    result = start_and_fail("--classify-model", str(folder), "--backend", backend, "--precision", precision)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture()
def faulty(exported_classifier, tmp_path):
    flag = tmp_path / "fail-now"
    # The fault is injected into ONNX Runtime's sessions (tests/faulty_app.py)
    flags = ["--classify-model", str(exported_classifier), "--max-wait-ms", "1", "--backend", "onnxruntime"]
    with ServerProcess(*flags, launcher=FAULTY_APP, env={"FAULT_FLAG": str(flag)}) as process:
        yield process, flag


def classify(process, text="a fine film"):
    return httpx.post(f"{process.url}/classify", json={"inputs": text}, timeout=30)


def test_a_failing_batch_answers_500_and_the_next_batch_works(faulty):
    process, flag = faulty
    assert classify(process).status_code == 200
    flag.touch()
    failed = classify(process)
    assert failed.status_code == 500
    assert failed.json() == {"error": "inference failed for this request's batch", "error_type": "inference",
                             "request_id": failed.headers["x-request-id"]}
    assert "/opt/secret" not in failed.text and "Traceback" not in failed.text
    flag.unlink()
    assert classify(process).status_code == 200
    assert metric_value(process.url, "roberta_failed_batches_total", model="cls") == 1
    assert "injected fault" in process.output  # the cause is logged for the operator, not sent to the client


def test_repeated_failures_make_readiness_503_until_a_batch_succeeds(faulty):
    process, flag = faulty
    flag.touch()
    for _ in range(3):
        assert classify(process).status_code == 500
    readiness = httpx.get(f"{process.url}/readyz")
    assert readiness.status_code == 503 and "inference keeps failing" in readiness.json()["error"]
    assert httpx.get(f"{process.url}/healthz").status_code == 200  # alive: a restart is not the cure
    flag.unlink()
    assert classify(process).status_code == 200
    assert httpx.get(f"{process.url}/readyz").status_code == 200
