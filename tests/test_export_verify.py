from __future__ import annotations

import numpy as np
import pytest

from export.errors import BadOption
from export.verify import at_positions, compare, compare_outputs, encode, read_eval_file


def test_fill_mask_probe_asks_for_every_real_token_and_never_padding():
    class Tokenizer:  # the call transformers' fast tokenizers answer, right-padded
        padding_side = "left"

        def __call__(self, texts, **_):
            return {"input_ids": np.array([[0, 7, 2], [0, 2, 1]]), "attention_mask": np.array([[1, 1, 1], [1, 1, 0]])}

    batch = encode(Tokenizer(), ["a b", "a"], 8, "fill-mask")
    assert batch["mask_positions"].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]
    assert "mask_positions" not in encode(Tokenizer(), ["a b", "a"], 8, "text-classification")


def test_logits_at_every_position_are_cut_to_the_asked_rows():
    logits = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    batch = {"mask_positions": np.array([[1, 2], [0, 0]])}
    assert at_positions(logits, batch).tolist() == [logits[1, 2].tolist(), logits[0, 0].tolist()]
    assert at_positions(logits[:, 0], {}).shape == (2, 4)  # classification rows pass through


def test_fill_mask_comparison_counts_each_position():
    reference = np.zeros((5, 4), dtype=np.float32)
    reference[:, 1] = 1.0
    candidate = reference.copy()
    candidate[4] = [0, 0, 100.0, 0]
    result = compare(reference, candidate)
    assert result.max_abs_diff == pytest.approx(100.0) and result.top1_agreement == pytest.approx(4 / 5)
    assert result.compared == 5


def test_classification_comparison_reports_top1_flips():
    reference = np.array([[0.0, 1.0], [2.0, 0.0]])
    candidate = np.array([[0.0, 1.5], [0.0, 2.0]])
    result = compare(reference, candidate)
    assert result.max_abs_diff == pytest.approx(2.0)
    assert result.top1_agreement == 0.5


def test_shape_mismatch_never_passes():
    result = compare(np.zeros((2, 2)), np.zeros((2, 3)))
    assert result.max_abs_diff == float("inf") and result.top1_agreement == 0.0


def test_eval_file_takes_ids_or_names_and_skips_a_header(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("text\tlabel\na fine film \t1\nawful\tNegative\n\nit 's ok\t0\n")
    texts, labels = read_eval_file(path, {"negative": 0, "positive": 1})
    assert texts == ["a fine film", "awful", "it 's ok"]
    assert labels.tolist() == [1, 0, 0]


def test_eval_file_with_unknown_label_names_the_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("good\t1\nbad\tmaybe\n")
    with pytest.raises(BadOption, match=r"dev.tsv:2: unknown label 'maybe'"):
        read_eval_file(path, {"negative": 0, "positive": 1})


def test_a_graph_with_several_outputs_is_held_to_its_worst():
    """Question answering's start and end logits: an export right on one and wrong on the other fails."""
    start = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    end = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    wrong_end = end.copy()
    wrong_end[1] = [9.0, 0.0, 5.0]
    result = compare_outputs({"start_logits": start, "end_logits": end},
                             {"start_logits": start.copy(), "end_logits": wrong_end})
    assert result.max_abs_diff == pytest.approx(9.0) and result.top1_agreement == 0.5
    missing = compare_outputs({"start_logits": start}, {"start_logits": start[:, :2]})
    assert missing.max_abs_diff == float("inf")
