"""The padding-free graph: its inputs (app.engine.packing), its export and gate, and the service running it.

Every task's packed graph is exported from the tiny checkpoints and held to the padded
graph and to PyTorch on batches of mixed lengths; one server answers over HTTP with it.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from app.engine.batcher import batch_positions, right_pad
from app.serving.model_folder import ModelFolderError, load_model_folder
from app.engine.packing import pack
from app.engine.onnx_runtime import OnnxRuntimeEngine, EngineConfig
from app.settings import Settings
from server import ServerThread


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_classifier, tiny_mlm, tiny_ner) -> dict[str, object]:
    from export.build import ExportOptions, export_model

    folders = {}
    for task, checkpoint in {"text-classification": tiny_classifier, "fill-mask": tiny_mlm, "token-classification": tiny_ner}.items():
        out = tmp_path_factory.mktemp("packed") / task
        export_model(ExportOptions(model=str(checkpoint), output=out, quantize="int8", packed=True), log=lambda _: None)
        folders[task] = out
    return folders


def sequences(count: int, seed: int, longest: int = 60) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    lengths = generator.integers(3, longest, count)
    lengths[0] = longest  # one long row, so most of the batch is padding
    return [np.concatenate([[0], generator.integers(5, 200, n - 2), [2]]).astype(np.int64) for n in lengths]


def test_pack_keeps_the_real_tokens_and_maps_both_ways():
    from transformers.models.roberta.modeling_roberta import create_position_ids_from_input_ids
    import torch

    ids, mask = right_pad(sequences(5, seed=0, longest=9), pad_id=1)
    feeds = pack(ids, mask, padding_idx=1)
    assert feeds["input_ids"].tolist() == [t for row, m in zip(ids, mask) for t, keep in zip(row, m) if keep]
    assert (ids.reshape(-1)[feeds["flat_index"]] == feeds["input_ids"]).all()
    padded = np.append(feeds["input_ids"], -1)[feeds["token_index"]]  # the padding slots gather the extra row
    assert (np.where(mask == 1, ids, -1) == padded).all()
    reference = create_position_ids_from_input_ids(torch.from_numpy(ids), padding_idx=1).numpy()
    assert (reference.reshape(-1)[feeds["flat_index"]] == feeds["position_ids"]).all()
    assert all(value.dtype == np.int64 for value in feeds.values())


@pytest.mark.parametrize("task", ["text-classification", "fill-mask", "token-classification"])
def test_the_export_verifies_the_packed_graph_of_every_task(packed, task):
    manifest = json.loads((packed[task] / "manifest.json").read_text())
    assert manifest["options"]["packed"] is True
    checked = manifest["verification"]["packed-fp32"]
    assert checked["passed"] and checked["max_abs_diff"] <= 1e-4 and checked["top1_agreement"] == 1.0
    assert "packed-int8" in manifest["verification"]  # recorded, not gated
    assert {"packed-fp32", "packed-int8"} <= set(manifest["files"])
    folder = load_model_folder(packed[task])
    assert set(folder.packed_files) == {"fp32", "int8"}


@pytest.mark.parametrize("task", ["text-classification", "fill-mask", "token-classification"])
def test_packed_and_padded_sessions_give_the_same_rows(packed, task):
    folder = load_model_folder(packed[task])
    batch = sequences(7, seed=1)
    ids, mask = right_pad(batch, pad_id=1)
    positions = None
    if task == "fill-mask":
        positions = batch_positions([np.arange(1, len(s), 3) for s in batch])
    runs = {}
    for execution in ("packed", "padded"):
        runtime = OnnxRuntimeEngine(folder, EngineConfig(precision="fp32", execution=execution), name=execution)
        try:
            assert runtime.packed is (execution == "packed")
            out = runtime.run_sync(ids, mask, positions)["logits"]
        finally:
            runtime.close()
        if task == "token-classification":
            out = out[mask == 1]  # the padded slots' rows are read by nobody
        runs[execution] = out
    assert runs["packed"].shape == runs["padded"].shape
    np.testing.assert_allclose(runs["packed"], runs["padded"], atol=1e-4)


def test_packed_execution_needs_a_packed_export(exported_classifier):
    folder = load_model_folder(exported_classifier)
    with pytest.raises(ModelFolderError, match="--packed"):
        OnnxRuntimeEngine(folder, EngineConfig(precision="fp32", execution="packed"), name="cls")
    runtime = OnnxRuntimeEngine(folder, EngineConfig(precision="int8"), name="cls")  # auto: the padded graph it has
    try:
        assert not runtime.packed
    finally:
        runtime.close()


def test_auto_runs_the_packed_graph_for_int8_only_and_padded_when_asked(packed):
    folder = load_model_folder(packed["text-classification"])
    for execution, precision, expected in (("auto", "int8", "model.packed.int8.onnx"), ("auto", "fp32", "model.onnx"),
                                           ("padded", "int8", "model.int8.onnx"), ("packed", "fp32", "model.packed.onnx")):
        runtime = OnnxRuntimeEngine(folder, EngineConfig(precision=precision, execution=execution), name="cls")
        try:
            assert runtime.file.name == expected and runtime.packed is ("packed" in expected), (execution, precision)
        finally:
            runtime.close()


def test_a_server_on_the_packed_graph_answers_as_the_padded_one(packed):
    texts = ["a short one", "the acting was brilliant but the plot felt slow and far too long " * 3, "ok", "x y z"]
    answers = {}
    for execution in ("packed", "padded"):
        settings = Settings(models=f"cls={packed['text-classification']}", precision="fp32", execution=execution)
        with ServerThread(settings) as server:
            info = httpx.get(f"{server.url}/models/cls").json()
            assert info["execution"] == execution
            assert (info["batching"]["attention_tokens"] is None) is (execution == "padded")
            response = httpx.post(f"{server.url}/classify", json={"inputs": texts})
            assert response.status_code == 200
            answers[execution] = response.json()
    for packed_answer, padded_answer in zip(answers["packed"], answers["padded"]):
        assert [item["label"] for item in packed_answer] == [item["label"] for item in padded_answer]
        np.testing.assert_allclose([i["score"] for i in packed_answer], [i["score"] for i in padded_answer], atol=1e-5)
