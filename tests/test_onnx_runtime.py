"""The run overhead the batcher plans with, and choices made when a session opens."""

from __future__ import annotations

import pytest

from app.engine.onnx_runtime import run_layout
from app.engine.onnx_runtime import choose_precision, requested_providers, spins
from app.serving.model_folder import ModelFolderError


def test_cpu_is_always_the_fallback_provider():
    assert requested_providers(("cuda", "cpu"), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert requested_providers(("cuda",), ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_auto_precision_is_fp16_on_cuda_and_fp32_on_a_cpu_where_dynamic_int8_is_only_taken_when_named():
    assert choose_precision("auto", {"fp32", "int8", "fp16"}, on_cuda=False) == "fp32"
    assert choose_precision("auto", {"fp32", "int8", "fp16"}, on_cuda=True) == "fp16"
    assert choose_precision("auto", {"fp32"}, on_cuda=True) == "fp32"
    assert choose_precision("int8", {"fp32", "int8"}, on_cuda=False) == "int8"
    with pytest.raises(ModelFolderError, match="bf16 runs on OpenVINO"):
        choose_precision("bf16", {"fp32"}, on_cuda=False)


def test_a_session_that_should_not_spin_is_told_so(exported_classifier):
    from app.engine.onnx_runtime import OnnxRuntimeEngine, EngineConfig
    from app.serving.model_folder import load_model_folder

    runtime = OnnxRuntimeEngine(load_model_folder(exported_classifier), EngineConfig(precision="fp32", spin=False), name="cls")
    try:
        assert runtime._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        runtime.close()


def native_threads(prefix: str) -> list[int]:
    """The ids of this process's threads whose kernel name starts with `prefix` (ONNX Runtime's pool threads
    carry the name of the thread that started them)."""
    from pathlib import Path

    return [int(task.name) for task in Path("/proc/self/task").iterdir() if (task / "comm").read_text().strip().startswith(prefix)]


def test_a_session_spins_only_alone_and_wide():
    assert spins(1, 768) and spins(1, 1024)  # roberta-base, roberta-large: spinning measured faster
    assert not spins(1, 256)  # the embedded model: waiting measured 18-26% faster
    assert not spins(3, 768)  # several sessions would spin on each other's cores
    assert spins(1, None)  # no width in config.json: ONNX Runtime's default


def test_packed_costs_are_fitted_from_three_timings():
    from app.engine.onnx_runtime import ATTENTION_FREE, packed_costs

    # 2 ms a run, 10 us a real token, 20 ns per padded slot per row length: a slot of a 500-long row costs a token.
    def seconds(real, rows, width):
        return 0.002 + 1e-5 * real + 2e-8 * rows * width * width

    timings = {"small": seconds(16, 1, 16), "full": seconds(4 * 256, 4, 256), "sparse": seconds(256 + 3 * 16, 4, 256)}
    overhead, attention = packed_costs(timings, rows=4, width=256, short=16, cap=16384)
    assert overhead == pytest.approx(200, rel=0.05) and attention == pytest.approx(500, rel=0.05)
    free = {"small": seconds(16, 1, 16), "full": 0.002 + 1e-5 * 1024, "sparse": 0.002 + 1e-5 * 304}
    assert packed_costs(free, rows=4, width=256, short=16, cap=16384)[1] == ATTENTION_FREE
    flat = {"small": 0.003, "full": 0.003, "sparse": 0.003}  # a GPU at small batches: all overhead
    assert packed_costs(flat, rows=4, width=256, short=16, cap=4096) == (4096, ATTENTION_FREE)


def test_a_cpu_runs_one_single_threaded_batch_per_core_unless_told_otherwise():
    assert run_layout(0, 0, cores=2, on_cuda=False) == (2, 1)
    assert run_layout(0, 0, cores=16, on_cuda=False) == (16, 1)
    assert run_layout(0, 4, cores=16, on_cuda=False) == (1, 4)  # threads named, runs not: one run, as before
    assert run_layout(2, 0, cores=16, on_cuda=False) == (2, 8)  # runs named: the cores shared among them
    assert run_layout(3, 2, cores=16, on_cuda=False) == (3, 2)
    assert run_layout(4, 0, cores=2, on_cuda=False) == (4, 1)
    assert run_layout(0, 0, cores=16, on_cuda=True) == (1, 0)  # a GPU: one batch at a time, ONNX Runtime's threads
    assert run_layout(2, 0, cores=16, on_cuda=True) == (2, 0)


def test_concurrent_runs_on_one_session_answer_as_one_run_at_a_time(exported_classifier):
    import asyncio
    import threading

    import numpy as np

    from app.serving.model_folder import load_model_folder
    from app.engine.onnx_runtime import OnnxRuntimeEngine, EngineConfig

    runtime = OnnxRuntimeEngine(load_model_folder(exported_classifier), EngineConfig(precision="fp32", cores=2), name="two")
    try:
        assert (runtime.concurrent_runs, runtime.intra_op_threads) == (2, 1)
        assert runtime._session.get_session_options().intra_op_num_threads == 1
        rng = np.random.default_rng(0)
        batches = []
        for length in (5, 9, 14, 20, 7, 11):
            ids = rng.integers(5, 200, (3, length)).astype(np.int64)
            batches.append((ids, np.ones_like(ids)))
        alone = [runtime.run_sync(ids, mask)["logits"] for ids, mask in batches]
        pairs = threading.Barrier(2, timeout=10)  # broken, and the test failed, unless two runs are in at once

        def run_and_note(ids, mask):
            pairs.wait()
            return runtime.run_sync(ids, mask)["logits"]

        async def together():
            return await asyncio.gather(*(runtime._executor.run(run_and_note, ids, mask) for ids, mask in batches))

        for ours, reference in zip(asyncio.run(together()), alone):
            np.testing.assert_allclose(ours, reference, atol=1e-5)
    finally:
        runtime.close()


@pytest.mark.parametrize("solo", [True, False])
def test_a_lone_batch_runs_on_the_solo_session_on_every_core(exported_classifier, solo):
    import numpy as np

    from app.serving.model_folder import load_model_folder
    from app.engine.onnx_runtime import OnnxRuntimeEngine, EngineConfig

    runtime = OnnxRuntimeEngine(load_model_folder(exported_classifier), EngineConfig(precision="fp32", cores=2, solo=solo), name="solo")
    try:
        assert runtime.solo is solo
        if solo:
            assert runtime._solo.get_session_options().intra_op_num_threads == 2
        ids = np.random.default_rng(1).integers(5, 200, (2, 12)).astype(np.int64)
        np.testing.assert_allclose(runtime.run_sync(ids, np.ones_like(ids), alone=True)["logits"],
                                   runtime.run_sync(ids, np.ones_like(ids))["logits"], atol=1e-5)
    finally:
        runtime.close()
    one = OnnxRuntimeEngine(load_model_folder(exported_classifier), EngineConfig(precision="fp32", cores=2, solo=True, concurrent_runs=1), name="one")
    try:
        assert not one.solo  # one run already has every core
    finally:
        one.close()


def test_the_model_threads_run_under_sched_idle_when_asked(exported_classifier):
    import asyncio
    import os

    import numpy as np

    from app.serving.model_folder import load_model_folder
    from app.engine.onnx_runtime import OnnxRuntimeEngine, EngineConfig

    def policies(prefix: str) -> list[int]:
        return [os.sched_getscheduler(tid) for tid in native_threads(prefix)]

    runtime = OnnxRuntimeEngine(load_model_folder(exported_classifier), EngineConfig(precision="fp32", intra_op_threads=2, cores=2, idle=True), name="idle")
    normal = OnnxRuntimeEngine(load_model_folder(exported_classifier), EngineConfig(precision="fp32", intra_op_threads=2, cores=2), name="normal")
    try:
        # the run threads and the pool thread ONNX Runtime started on the one that created the session
        idle = policies("onnx-idle_")
        assert len(idle) >= 2 and set(idle) == {os.SCHED_IDLE}, idle
        assert set(policies("onnx-normal_")) == {os.SCHED_OTHER}
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the calling thread (the event loop's) keeps its own
        ids = np.array([[0, 5, 6, 2]], dtype=np.int64)
        # and it still runs the model, on those threads, to the same answer
        np.testing.assert_allclose(asyncio.run(runtime.run(ids, np.ones_like(ids)))["logits"], normal.run_sync(ids, np.ones_like(ids))["logits"], atol=1e-6)
    finally:
        runtime.close()
        normal.close()
