from __future__ import annotations

import numpy as np
import pytest

from app.tasks.fill_mask import fill_mask
from app.tasks.text_classification import activate, classify, default_activation


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "expected"),
    [
        (None, 2, "softmax"),
        (None, 1, "sigmoid"),
        ("multi_label_classification", 5, "sigmoid"),
        ("single_label_classification", 3, "softmax"),
        ("regression", 1, "sigmoid"),
        (None, 0, "none"),
    ],
)
def test_default_activation_follows_the_pipeline_rule(problem_type, num_labels, expected):
    assert default_activation(problem_type, num_labels) == expected


def test_activations():
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    softmax = activate(logits, "softmax")
    assert softmax.sum() == pytest.approx(1.0) and softmax.argmax() == 2
    np.testing.assert_allclose(activate(logits, "sigmoid"), 1 / (1 + np.exp(-logits)), rtol=1e-6)
    np.testing.assert_array_equal(activate(logits, "none"), logits)
    # Large logits must not overflow.
    assert np.isfinite(activate(np.array([1000.0, -1000.0]), "softmax")).all()


def test_classify_sorts_descending_and_cuts_to_top_k():
    labels = ["a", "b", "c"]
    logits = np.array([0.5, 3.0, -1.0])
    everything = classify(logits, labels, "none", None)
    assert [x["label"] for x in everything] == ["b", "a", "c"]
    assert [x["score"] for x in everything] == [3.0, 0.5, -1.0]
    assert classify(logits, labels, "softmax", 1)[0]["label"] == "b"
    assert len(classify(logits, labels, "softmax", 10)) == 3


def decode(sequences, skip_special):
    words = {0: "<s>", 2: "</s>", 9: "<mask>", 5: " cat", 6: " dog", 7: " sat", 8: "The"}
    return ["".join(words.get(i, f"[{i}]") for i in ids if not (skip_special and i in (0, 2))) for ids in sequences]


def test_fill_mask_single_mask_is_a_flat_list():
    logits = np.full((1, 10), -5.0)
    logits[0, 5], logits[0, 6] = 2.0, 1.0
    ids = np.array([0, 8, 9, 7, 2])
    answer = fill_mask(logits, ids, np.array([2]), top_k=2, target_ids=None, decode=decode)
    assert [a["token"] for a in answer] == [5, 6]
    assert answer[0]["token_str"] == " cat" and answer[0]["sequence"] == "The cat sat"
    assert answer[0]["score"] > answer[1]["score"]


def test_fill_mask_several_masks_give_one_list_each_and_keep_special_tokens():
    logits = np.zeros((2, 10))
    logits[0, 5], logits[1, 6] = 4.0, 4.0
    ids = np.array([0, 8, 9, 9, 2])
    answer = fill_mask(logits, ids, np.array([2, 3]), top_k=1, target_ids=None, decode=decode)
    assert len(answer) == 2 and [row[0]["token"] for row in answer] == [5, 6]
    assert answer[0][0]["sequence"] == "<s>The cat<mask></s>"


def test_fill_mask_targets_restrict_and_cap_top_k():
    logits = np.zeros((1, 10))
    logits[0, 5], logits[0, 6], logits[0, 7] = 3.0, 2.0, 1.0
    answer = fill_mask(logits, np.array([0, 9, 2]), np.array([1]), top_k=5, target_ids=np.array([6, 7]), decode=decode)
    assert [a["token"] for a in answer] == [6, 7]
    full = activate(logits[0], "softmax")
    assert answer[0]["score"] == pytest.approx(float(full[6]))  # probability over the whole vocabulary


def test_targets_warning_counts_and_shows_a_few_within_the_limit():
    from app.tasks.fill_mask import targets_warning

    assert targets_warning([], []) is None
    replaced = [(f"w\u00e9rd{i}" + "y" * 60, "w") for i in range(500)]
    text = targets_warning(replaced, ["zzz"], limit=300)
    assert text.startswith("500 target(s) not in the vocabulary stand for their first sub-token: 'w\\xe9rd0")
    assert len(text) <= 300 and text.isascii() and "y" * 41 not in text
    assert "1 target(s)" in targets_warning([], ["zzz"])
