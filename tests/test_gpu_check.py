"""What can be checked here of the GPU check (scripts/gpu-check.sh, bench/gpu.py): no GPU, so --allow-cpu."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from commands import REPO, run, tool

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier


@pytest.fixture(scope="module")
def exported_fp16(tmp_path_factory, tiny_classifier):
    from conftest import _export

    return _export(tmp_path_factory, tiny_classifier, "cls-fp16", fp16=True, packed=True)


def test_the_gpu_check_measures_parity_the_limit_and_the_service(exported_fp16, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a fine film\nawful, just awful\nthe cast is wonderful and the plot is thin\n" * 20)
    command = [sys.executable, "-m", "bench.gpu", "--folder", str(exported_fp16), "--texts", str(texts),
               "--seconds", "0.5", "--concurrency", "1", "4", "--output", str(tmp_path)]
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "CUDA provider is not in use" in refused.stdout  # no GPU here: it says so
    result = subprocess.run([*command, "--allow-cpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["provider_in_use"] == "CPUExecutionProvider"
    parity = report["parity"]
    assert parity["file"] == "model.fp16.onnx" and parity["sequences"] == 60
    assert parity["argmax_agreement"] > 0.9 and 0 < parity["max_abs_logit_diff"] < 0.1
    assert all(value > 0 for value in report["onnxruntime_alone"].values())
    service = report["service"]
    assert service["model"] == {"precision": "fp32", "provider": "cpu"}  # on a CPU the service picks fp32 over fp16
    assert service["c=1"]["requests_per_s"] > 0 and service["c=4"]["statuses"] == {"200": service["c=4"]["statuses"]["200"]}
    packed = report["packed_vs_padded"]
    assert set(packed["alone"]) == {"sst2", "mixed"} and packed["workloads"]["mixed"]["tokens_max"] <= 64
    assert all(r["packed_mixed"] > 0 and r["padded_sorted_4"] > 0 for w in packed["alone"].values() for r in w.values())
    for name in ("sst2 packed", "sst2 padded", "mixed packed", "mixed padded"):
        assert packed["service"][name]["c=4"]["requests_per_s"] > 0, name
    assert "service mixed c=4: packed" in result.stdout


def test_the_gpu_check_script_parses():
    result = run(tool("bash"), "-n", "scripts/gpu-check.sh")
    assert result.returncode == 0, result.stderr
