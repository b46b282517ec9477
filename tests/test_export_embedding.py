"""How an export reads a checkpoint's sentence vectors (export/embedding.py) and the pooled graph it writes
(export/embedding_graph.py): the refusals, sentence-transformers' two config formats, a plain encoder's flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tiny_models
from export.build import ExportOptions, export_model
from export.embedding import read_embedding
from export.errors import BadOption, UnsupportedModel

CONFIG = {"hidden_size": 32}


def st_folder(tmp_path: Path, pooling: dict, modules: tuple[str, ...] = ("Transformer", "Pooling", "Normalize")) -> Path:
    """A sentence-transformers folder's own files (the encoder's are not needed to read them)."""
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": paths[kind], "type": f"sentence_transformers.models.{kind}"}
         for i, kind in enumerate(modules)]))
    (tmp_path / "1_Pooling").mkdir(exist_ok=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return tmp_path


@pytest.mark.parametrize("pooling, mode", [
    ({"pooling_mode": "cls", "embedding_dimension": 32}, "cls"),  # sentence-transformers 5
    ({"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
      "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, "mean"),  # 2.x-4.x
])
def test_both_pooling_config_formats_are_read(tmp_path, pooling, mode):
    folder = st_folder(tmp_path, pooling)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: "}, "default_prompt_name": "query"}))
    embedding = read_embedding(folder, CONFIG, None, False)
    assert (embedding.pooling, embedding.normalize, embedding.dimensions) == (mode, True, 32)
    assert embedding.max_seq_length == 128 and embedding.prompts == {"query": "query: "}
    assert embedding.default_prompt_name == "query"


@pytest.mark.parametrize("pooling, modules, extra, message", [
    ({"pooling_mode": "weightedmean"}, ("Transformer", "Pooling"), {}, "weightedmean"),
    ({"pooling_mode": ["mean", "max"]}, ("Transformer", "Pooling"), {}, "mean, max"),
    ({"pooling_mode": "mean", "include_prompt": False}, ("Transformer", "Pooling"), {}, "include_prompt"),
    ({"pooling_mode": "mean"}, ("Transformer", "Pooling", "Dense"), {}, "Dense"),
    ({"pooling_mode": "mean"}, ("Transformer",), {}, "no Pooling module"),
    ({"pooling_mode": "mean"}, ("Transformer", "Pooling"), {"sentence_bert_config.json": {"do_lower_case": True}},
     "do_lower_case"),
])
def test_what_the_service_would_answer_differently_is_refused(tmp_path, pooling, modules, extra, message):
    folder = st_folder(tmp_path, pooling, modules)
    for name, content in extra.items():
        (folder / name).write_text(json.dumps(content))
    with pytest.raises(UnsupportedModel, match=message):
        read_embedding(folder, CONFIG, None, False)


def test_flags_that_contradict_the_folder_are_refused_and_a_plain_encoder_needs_pooling(tmp_path):
    folder = st_folder(tmp_path, {"pooling_mode": "mean"}, ("Transformer", "Pooling"))
    with pytest.raises(BadOption, match="contradicts the folder's pooling module"):
        read_embedding(folder, CONFIG, "cls", False)
    with pytest.raises(BadOption, match="no Normalize module"):
        read_embedding(folder, CONFIG, None, True)
    with pytest.raises(BadOption, match="pass --pooling"):
        read_embedding(tmp_path / "plain", CONFIG, None, False)
    plain = read_embedding(tmp_path / "plain", CONFIG, "max", True)
    assert (plain.pooling, plain.normalize, plain.dimensions, plain.prompts) == ("max", True, 32, {})


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_a_plain_encoder_exports_with_its_pooling_and_matches_it(tmp_path, tiny_tokenizer, pooling):
    import torch
    from transformers import AutoModel

    checkpoint = tiny_models.build_checkpoint(tmp_path / "encoder", "feature-extraction", tiny_tokenizer, seed=4)
    manifest = export_model(ExportOptions(model=str(checkpoint), output=tmp_path / "out", pooling=pooling, normalize=True),
                            log=lambda _: None)
    assert manifest["task"] == "feature-extraction" and manifest["verification"]["fp32"]["passed"]
    assert manifest["embedding"]["pooling"] == pooling and manifest["embedding"]["normalize"] is True
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.asarray([[0, 10, 11, 12, 2], [0, 13, 2, 1, 1]], dtype=np.int64)
    mask = (ids != 1).astype(np.int64)
    (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        states = AutoModel.from_pretrained(str(checkpoint))(input_ids=torch.from_numpy(ids[1:, :3])).last_hidden_state
    expected = states[:, 0] if pooling == "cls" else states.max(dim=1).values  # row 2 without its padding
    assert np.abs(vectors[1] - expected[0].numpy()).max() < 1e-4


def test_pooling_flags_are_refused_for_other_tasks_and_without_them_for_a_plain_encoder(tmp_path, tiny_classifier, tiny_tokenizer):
    with pytest.raises(BadOption, match="--pooling and --normalize are for --task feature-extraction"):
        export_model(ExportOptions(model=str(tiny_classifier), output=tmp_path / "x", pooling="mean"), log=lambda _: None)
    checkpoint = tiny_models.build_checkpoint(tmp_path / "encoder", "feature-extraction", tiny_tokenizer)
    with pytest.raises(BadOption, match="pass --pooling"):
        export_model(ExportOptions(model=str(checkpoint), output=tmp_path / "y"), log=lambda _: None)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_cross_encoders_activation_is_recorded(tmp_path, tiny_tokenizer):
    checkpoint = tiny_models.build_checkpoint(tmp_path / "ce", "text-classification", tiny_tokenizer, num_labels=1,
                                              sentence_transformers={"activation_fn": "torch.nn.modules.linear.Identity"})
    manifest = export_model(ExportOptions(model=str(checkpoint), output=tmp_path / "out"), log=lambda _: None)
    assert manifest["activation"] == "none" and manifest["embedding"] is None
