"""The export command as users run it: a subprocess, its exit code, its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier


def run_export(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no message on stderr"
    return lines[-1]


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def session_logits(path: Path, batch: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    return session.run(["logits"], feeds)[0]


def own_batch(folder: Path, texts: list[str]) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in encoded.items()}


def test_fill_mask_export_with_int8_writes_a_verified_folder(tiny_mlm, tmp_path):
    out = tmp_path / "out"
    result = run_export(tiny_mlm, "--task", "fill-mask", "--output", out, "--quantize", "int8")
    assert result.returncode == 0, result.stderr

    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "config.json", "manifest.json"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "fill-mask"
    assert manifest["verification"]["fp32"]["max_abs_diff"] < 1e-4
    assert manifest["verification"]["fp32"]["passed"] is True
    assert 0.5 <= manifest["verification"]["int8"]["top1_agreement"] <= 1.0
    assert manifest["files"]["int8"]["size_bytes"] == (out / "model.int8.onnx").stat().st_size
    assert len(manifest["source"]["sha256"]) == 64
    assert {"torch", "transformers", "optimum", "onnxruntime"} <= set(manifest["tools"])
    assert leftovers(tmp_path) == []

    # Our own check, not the manifest's: texts the exporter never saw, batch and sequence sizes it never saw.
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from export import verify

    texts = ["The <mask> was slow.", "Her voice felt <mask> and I loved it, from start to finish.", "<mask>"]
    batch = own_batch(out, texts)
    with torch.inference_mode():
        reference = AutoModelForMaskedLM.from_pretrained(str(tiny_mlm))(
            **{k: torch.from_numpy(v) for k, v in batch.items()}
        ).logits.numpy()
    keep = batch["attention_mask"].astype(bool)
    masks = np.argwhere(batch["input_ids"] == AutoTokenizer.from_pretrained(str(out)).mask_token_id)
    assert manifest["inputs"] == ["input_ids", "attention_mask", "mask_positions"]
    # At the masks, one row each; asked at every real token, the same graph answers for each of them.
    at_masks = session_logits(out / "model.onnx", {**batch, "mask_positions": masks})
    assert at_masks.shape == (3, reference.shape[-1])
    assert np.abs(at_masks - reference[masks[:, 0], masks[:, 1]]).max() < 1e-4
    everywhere = {**batch, "mask_positions": np.argwhere(keep)}
    fp32 = session_logits(out / "model.onnx", everywhere)
    int8 = session_logits(out / "model.int8.onnx", everywhere)
    assert np.abs(fp32 - reference[keep]).max() < 1e-4
    assert (int8.argmax(-1) == reference[keep].argmax(-1)).mean() > 0.8
    probe = verify.encode(AutoTokenizer.from_pretrained(str(out)), verify.probe_texts("fill-mask", "<mask>"),
                          manifest["max_seq_len"], "fill-mask")
    assert manifest["verification"]["fp32"]["compared"] == int(probe["attention_mask"].sum())  # every real token


def test_classifier_export_infers_task_records_labels_and_accuracy(tiny_classifier, tmp_path):
    eval_file = tmp_path / "eval.tsv"
    eval_file.write_text("text\tlabel\nthe film was good.\t1\nthe plot was dull.\tnegative\nhello\t0\n")
    out = tmp_path / "out"
    result = run_export(tiny_classifier, "--output", out, "--quantize", "int8", "--eval-file", eval_file)
    assert result.returncode == 0, result.stderr

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "text-classification"
    assert manifest["labels"] == ["negative", "positive"]
    assert manifest["evaluation"]["rows"] == 3
    assert set(manifest["evaluation"]["accuracy"]) == {"pytorch", "fp32", "int8"}
    assert manifest["evaluation"]["accuracy"]["fp32"] == manifest["evaluation"]["accuracy"]["pytorch"]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}

    from transformers import AutoModelForSequenceClassification

    batch = own_batch(out, ["the ending was brilliant.", "a", "this movie is awful, sadly, and too long for a sequel."])
    with torch.inference_mode():
        reference = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier))(
            **{k: torch.from_numpy(v) for k, v in batch.items()}
        ).logits.numpy()
    assert np.abs(session_logits(out / "model.onnx", batch) - reference).max() < 1e-4
    int8 = session_logits(out / "model.int8.onnx", batch)
    assert np.abs(int8 - reference).max() < 0.5


def test_optimize_and_fp16_variants(tiny_classifier, tmp_path):
    out = tmp_path / "out"
    result = run_export(tiny_classifier, "--output", out, "--optimize", "--fp16", "--max-seq-len", "32")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["optimized"] is True
    assert manifest["max_seq_len"] == 32
    assert set(manifest["files"]) == {"fp32", "fp16"}
    assert manifest["verification"]["fp16"]["max_abs_diff"] < 0.05
    import onnx

    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in fp16.graph.initializer)
    fused = onnx.load(str(out / "model.onnx"))
    assert any(node.op_type == "SkipLayerNormalization" for node in fused.graph.node)


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda ctx: [ctx["tmp"] / "nope", "--output", ctx["tmp"] / "o"], "no such folder"),
        (lambda ctx: [ctx["file"], "--output", ctx["tmp"] / "o"], "not a checkpoint folder"),
        (lambda ctx: [ctx["cls"], "--task", "fill-mask", "--output", ctx["tmp"] / "o"], "does not match"),
        (lambda ctx: [ctx["mlm"], "--task", "text-classification", "--output", ctx["tmp"] / "o"], "does not match"),
        (lambda ctx: [ctx["bert"], "--output", ctx["tmp"] / "o"], "supported model types"),
        (lambda ctx: [ctx["cls"], "--output", ctx["existing"]], "already exists; pass --force"),
        (lambda ctx: [ctx["cls"], "--output", ctx["tmp"] / "o", "--max-seq-len", "5000"], "--max-seq-len must be"),
        (lambda ctx: [ctx["mlm"], "--output", ctx["tmp"] / "o", "--eval-file", ctx["file"]], "--eval-file"),
    ],
    ids=["missing-path", "file-not-folder", "fill-mask-of-classifier", "classify-of-mlm", "not-roberta",
         "output-exists", "max-seq-len", "eval-needs-classifier"],
)
def test_errors_exit_nonzero_with_one_line(make_args, expected, tiny_classifier, tiny_mlm, tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a model")
    ctx = {"tmp": tmp_path, "cls": tiny_classifier, "mlm": tiny_mlm, "bert": bert, "existing": existing, "file": a_file}

    result = run_export(*make_args(ctx))
    assert result.returncode != 0
    line = error_line(result)
    assert line.startswith("error: ") and expected in line, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
    assert (existing / "keep.txt").read_text() == "user data"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("offline_flag", ["0", "1"])
def test_hub_id_without_network_says_pass_a_local_folder(tmp_path, offline_flag):
    # A closed local port stands in for the unreachable hub; an empty cache has nothing to fall back on.
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": offline_flag}
    result = run_export("someone/roberta-finetuned", "--output", tmp_path / "o", env=env)
    assert result.returncode != 0
    assert "cannot reach the hub" in error_line(result) and "pass a local folder" in error_line(result)
    assert not (tmp_path / "o").exists()


def test_force_replaces_a_previous_export_but_not_other_folders(tiny_classifier, tmp_path):
    out = tmp_path / "out"
    assert run_export(tiny_classifier, "--output", out).returncode == 0
    first = json.loads((out / "manifest.json").read_text())["created_at"]
    result = run_export(tiny_classifier, "--output", out, "--quantize", "int8", "--force")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert "int8" in manifest["files"] and manifest["created_at"] >= first
    assert leftovers(tmp_path) == []

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    result = run_export(tiny_classifier, "--output", precious, "--force")
    assert result.returncode != 0 and "not an export folder" in error_line(result)
    assert (precious / "thesis.txt").exists()


def test_reuse_skips_an_up_to_date_export_and_redoes_a_stale_one(tiny_classifier, tmp_path):
    import shutil

    source = tmp_path / "src"
    shutil.copytree(tiny_classifier, source)
    out = tmp_path / "out"
    assert run_export(source, "--output", out, "--reuse").returncode == 0
    created = json.loads((out / "manifest.json").read_text())["created_at"]

    again = run_export(source, "--output", out, "--reuse")
    assert again.returncode == 0 and "up to date" in again.stderr
    assert json.loads((out / "manifest.json").read_text())["created_at"] == created

    other_options = run_export(source, "--output", out, "--reuse", "--quantize", "int8")
    assert other_options.returncode == 0 and "up to date" not in other_options.stderr
    assert "int8" in json.loads((out / "manifest.json").read_text())["files"]

    config = json.loads((source / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    config["label2id"] = {"bad": 0, "good": 1}
    (source / "config.json").write_text(json.dumps(config))
    changed = run_export(source, "--output", out, "--reuse", "--quantize", "int8")
    assert changed.returncode == 0 and "up to date" not in changed.stderr
    assert json.loads((out / "manifest.json").read_text())["labels"] == ["bad", "good"]
