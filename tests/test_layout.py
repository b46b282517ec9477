"""app.layout: how many processes `python -m app` serves from when ROBERTA_PROCESSES is left at 0 (auto)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from app import layout
from app.layout import auto_processes, with_processes
from app.settings import Settings
from bench.servers import free_port
from server import ServerProcess
from test_supervisor import ready_by_pid


@pytest.mark.parametrize(
    ("widths", "runs", "on_gpu", "expected"),
    [
        ([256], 2, False, 2),  # the embedded classifier on two cores
        ([256, 256], 4, False, 4),  # the embedded pair on four
        ([256, 768], 2, False, 1),  # one roberta-base among them: its runs keep the cores busy
        ([256, None], 2, False, 1),  # a config that does not say its width counts as wide
        ([256], 1, False, 1),  # one core
        ([256], 2, True, 1),  # a GPU: each process would hold the models on the device
        ([], 2, False, 1),
    ],
)
def test_one_process_per_run_only_for_narrow_models_on_a_cpu(widths, runs, on_gpu, expected):
    assert auto_processes(widths, runs, on_gpu) == expected


def test_narrow_models_get_a_process_per_named_run_each_running_one(exported_classifier):
    decided = with_processes(Settings(classify_model=exported_classifier, port=8123, concurrent_runs=2))
    assert (decided.processes, decided.concurrent_runs) == (2, 1)
    # Threads per run named without the runs is one run (app.layout.run_layout), so one process.
    assert with_processes(Settings(classify_model=exported_classifier, port=8123, intra_op_threads=2)).processes == 1


def test_the_operators_number_and_port_0_are_kept_as_they_say(exported_classifier):
    assert with_processes(Settings(classify_model=exported_classifier, port=8123, processes=3, concurrent_runs=2)).processes == 3
    # Each process binds the port itself: with 0 each would get its own.
    assert with_processes(Settings(classify_model=exported_classifier, port=0, concurrent_runs=2)).processes == 1


def test_a_wide_model_keeps_one_process(exported_classifier, tmp_path):
    wide = tmp_path / "wide"
    shutil.copytree(exported_classifier, wide)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "hidden_size": 768}))
    settings = Settings(models=f"small={exported_classifier},wide={wide}", port=8123, concurrent_runs=2)
    assert (with_processes(settings).processes, with_processes(settings).concurrent_runs) == (1, 2)


def test_a_folder_that_cannot_be_read_is_left_to_the_one_process_to_report(tmp_path):
    assert with_processes(Settings(classify_model=tmp_path / "missing", port=8123, concurrent_runs=2)).processes == 1


def test_the_cuda_build_asked_for_cuda_keeps_one_process(exported_classifier, monkeypatch):
    monkeypatch.setattr(layout, "gpu_build", lambda: True)
    assert with_processes(Settings(classify_model=exported_classifier, port=8123, concurrent_runs=2)).processes == 1
    assert with_processes(Settings(classify_model=exported_classifier, port=8123, concurrent_runs=2, providers="cpu")).processes == 2


def test_python_m_app_serves_a_narrow_model_from_a_process_per_run_by_default(exported_classifier):
    with ServerProcess("--classify-model", str(exported_classifier), "--concurrent-runs", "2", port=free_port()) as server:
        ready = ready_by_pid(server.url)
        info = httpx.get(f"{server.url}/info").json()
        answer = httpx.post(f"{server.url}/classify", json={"inputs": "a fine film"})
    assert len(ready) == 2 and set(ready.values()) == {1.0} and server.process.pid not in ready
    assert info["processes"] == 2
    assert {m["concurrent_runs"] for m in info["models"].values()} == {1}
    assert answer.status_code == 200
    assert "2 processes, one per run" in server.output
