from __future__ import annotations

import json
import shutil

import pytest

from export.errors import SourceNotFound, TaskMismatch, UnsupportedModel
from export.source import (
    Checkpoint,
    check_supported,
    check_tokenizer,
    default_max_seq_len,
    fingerprint,
    resolve_checkpoint,
    resolve_task,
)


def checkpoint(**config) -> Checkpoint:
    return Checkpoint(path=None, source="x", revision=None, config=config)  # type: ignore[arg-type]


def test_local_folder_is_resolved_with_its_config(tiny_classifier):
    found = resolve_checkpoint(str(tiny_classifier))
    assert found.path == tiny_classifier.resolve()
    assert found.model_type == "roberta"
    assert found.architectures == ["RobertaForSequenceClassification"]
    assert found.revision is None


@pytest.mark.parametrize("name", ["./missing", "/no/such/dir", "a/b/c", "~/nothing-here-either"])
def test_path_like_names_that_do_not_exist_are_not_sent_to_the_hub(name):
    with pytest.raises(SourceNotFound, match="no such folder"):
        resolve_checkpoint(name)


@pytest.mark.parametrize(
    ("architectures", "requested", "expected"),
    [
        (["RobertaForSequenceClassification"], None, "text-classification"),
        (["RobertaForMaskedLM"], None, "fill-mask"),
        (["RobertaForMaskedLM"], "fill-mask", "fill-mask"),
        (["RobertaForTokenClassification"], None, "token-classification"),
        ([], "fill-mask", "fill-mask"),
        (["RobertaModel"], None, "feature-extraction"),  # a bare encoder: sentence embeddings
        (["XLMRobertaModel"], "feature-extraction", "feature-extraction"),
    ],
)
def test_task_comes_from_the_head(architectures, requested, expected):
    assert resolve_task(checkpoint(architectures=architectures), requested) == expected


@pytest.mark.parametrize(
    ("architectures", "requested", "message"),
    [
        (["RobertaForSequenceClassification"], "fill-mask", "pass --task text-classification"),
        (["RobertaModel"], "fill-mask", "pass --task feature-extraction"),
        (["RobertaForMaskedLM"], "feature-extraction", "pass --task fill-mask"),
        ([], None, "pass --task"),
    ],
)
def test_task_disagreement_is_refused(architectures, requested, message):
    with pytest.raises(TaskMismatch, match=message):
        resolve_task(checkpoint(architectures=architectures), requested)


@pytest.mark.parametrize("requested", [None, "text-classification", "fill-mask", "token-classification"])
def test_a_multiple_choice_head_is_said_to_be_unsupported_whatever_the_task_asked(requested):
    with pytest.raises(TaskMismatch, match=r"has a RobertaForMultipleChoice head \(multiple choice\), "
                                           r"which the service does not support yet"):
        resolve_task(checkpoint(architectures=["RobertaForMultipleChoice"]), requested)


def test_a_checkpoint_saved_without_its_tokenizer_is_refused_before_the_export_starts(tiny_classifier, tmp_path):
    check_tokenizer(resolve_checkpoint(str(tiny_classifier)))
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in tiny_classifier.iterdir():
        if file.name in ("config.json", "model.safetensors", "pytorch_model.bin"):
            shutil.copy(file, bare / file.name)
    with pytest.raises(UnsupportedModel, match=r"has no tokenizer files .*tokenizer.save_pretrained\(FOLDER\)"):
        check_tokenizer(resolve_checkpoint(str(bare)))


def test_only_roberta_family_is_supported():
    check_supported(checkpoint(model_type="roberta"))
    check_supported(checkpoint(model_type="xlm-roberta"))
    with pytest.raises(UnsupportedModel, match="supported model types: camembert, roberta, xlm-roberta"):
        check_supported(checkpoint(model_type="gpt2"))


def test_roberta_positions_reserve_padding_offset():
    assert default_max_seq_len(checkpoint(model_type="roberta", max_position_embeddings=514, pad_token_id=1)) == 512


def test_fingerprint_follows_content(tiny_classifier, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_classifier, copy)
    assert fingerprint(copy) == fingerprint(tiny_classifier)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {"0": "neg", "1": "pos"}
    (copy / "config.json").write_text(json.dumps(config))
    assert fingerprint(copy) != fingerprint(tiny_classifier)


def test_the_exporter_knows_the_tasks_of_the_spec_and_a_packed_graph_for_each_that_says_it_has_one():
    from app.tasks.specs import EXPORTED, SPECS
    from export.packed_graph import GRAPHS
    from export.source import TASKS

    assert set(TASKS) == {name for name, spec in SPECS.items() if spec.head is not None} == set(EXPORTED)
    assert set(GRAPHS) == {name for name, spec in EXPORTED.items() if spec.packed}
