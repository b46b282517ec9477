"""The pipeline's guarantees: verification gates publishing; failures leave nothing behind."""

from __future__ import annotations

import importlib.util
import json

import pytest

from app.serving.model_folder import load_model_folder
from export.build import ExportOptions, export_model
from export.errors import BadOption, SourceNotFound, VerificationFailed


def test_fp32_outside_tolerance_fails_and_publishes_nothing(tiny_mlm, tmp_path):
    out = tmp_path / "out"
    # No float pipeline matches to 1e-12 across 2 layers and a 400-word vocabulary: verification must refuse.
    with pytest.raises(VerificationFailed, match="differs from PyTorch"):
        export_model(ExportOptions(model=str(tiny_mlm), output=out, atol=1e-12), log=lambda _: None)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unknown_quantization_is_refused_before_any_work(tiny_mlm, tmp_path):
    with pytest.raises(BadOption, match="--quantize int8"):
        export_model(ExportOptions(model=str(tiny_mlm), output=tmp_path / "o", quantize="int4"))
    assert list(tmp_path.iterdir()) == []


def test_progress_is_reported_step_by_step(tiny_classifier, tmp_path):
    lines: list[str] = []
    manifest = export_model(ExportOptions(model=str(tiny_classifier), output=tmp_path / "o"), log=lines.append)
    assert any(line.startswith("export fp32 ONNX:") for line in lines)
    assert any(line.startswith("fp32:") and "top-1 agreement 100.0%" in line for line in lines)
    assert set(manifest["timings_s"]) >= {"load PyTorch checkpoint", "export fp32 ONNX", "verify fp32"}


def test_a_token_classifier_is_exported_with_its_labels_and_verified_per_real_token(exported_ner, tiny_ner):
    import json

    manifest = json.loads((exported_ner / "manifest.json").read_text())
    assert manifest["task"] == "token-classification" and manifest["labels"][:3] == ["O", "B-PER", "I-PER"]
    fp32 = manifest["verification"]["fp32"]
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4
    # One compared row per real token of the probe texts, not one per padded position or per text.
    from transformers import AutoTokenizer

    from export.verify import probe_texts

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_ner))
    real = sum(len(ids) for ids in tokenizer(probe_texts("token-classification", "<mask>"), truncation=True, max_length=64)["input_ids"])
    assert fp32["compared"] == real
    assert "int8" in manifest["verification"]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_openvino_int8_is_calibrated_verified_and_recorded_beside_its_weights(exported_openvino_int8):
    manifest = json.loads((exported_openvino_int8 / "manifest.json").read_text())
    entry = manifest["files"]["openvino-int8"]
    assert entry["path"] == "model.openvino-int8.xml" and entry["weights"]["path"] == "model.openvino-int8.bin"
    assert (exported_openvino_int8 / "model.openvino-int8.bin").stat().st_size == entry["weights"]["size_bytes"]
    assert manifest["quantization"]["openvino-int8"] == {
        "tool": "nncf", "preset": "transformer", "dynamic": False, "calibration_file": "calibration.tsv",
    }
    checked = manifest["verification"]["openvino-int8"]
    assert checked["compared"] > 0 and 0 < checked["max_abs_diff"] < 0.5 and checked["top1_agreement"] >= 0.5
    assert load_model_folder(exported_openvino_int8).openvino_files == {
        "int8": exported_openvino_int8 / "model.openvino-int8.xml"
    }


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_a_fill_mask_graph_is_calibrated_at_its_mask_positions_and_verified(tiny_mlm, calibration_file, tmp_path):
    manifest = export_model(
        ExportOptions(model=str(tiny_mlm), output=tmp_path / "mlm", openvino_int8=calibration_file), log=lambda _: None
    )
    checked = manifest["verification"]["openvino-int8"]
    assert checked["compared"] == manifest["verification"]["fp32"]["compared"] and checked["max_abs_diff"] < 0.5


def test_a_missing_calibration_file_is_refused_before_any_work(tiny_classifier, tmp_path):
    with pytest.raises(SourceNotFound, match="no such calibration file"):
        export_model(ExportOptions(model=str(tiny_classifier), output=tmp_path / "x", openvino_int8=tmp_path / "none.tsv"))
    assert not (tmp_path / "x").exists()
