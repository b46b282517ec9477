from __future__ import annotations

import numpy as np
import pytest

from export.errors import BadOption
from export.verify import compare, read_eval_file


def test_fill_mask_comparison_ignores_padded_positions():
    reference = np.zeros((2, 3, 4), dtype=np.float32)
    reference[..., 1] = 1.0
    candidate = reference.copy()
    candidate[1, 2] = 100.0  # garbage at a padded position
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    result = compare(reference, candidate, mask, "fill-mask")
    assert result.max_abs_diff == 0.0 and result.top1_agreement == 1.0 and result.compared == 5
    # The same garbage at a real token counts.
    result = compare(reference, candidate, np.ones_like(mask), "fill-mask")
    assert result.max_abs_diff == pytest.approx(100.0) and result.top1_agreement == pytest.approx(5 / 6)


def test_classification_comparison_reports_top1_flips():
    reference = np.array([[0.0, 1.0], [2.0, 0.0]])
    candidate = np.array([[0.0, 1.5], [0.0, 2.0]])
    result = compare(reference, candidate, np.ones((2, 3)), "text-classification")
    assert result.max_abs_diff == pytest.approx(2.0)
    assert result.top1_agreement == 0.5


def test_shape_mismatch_never_passes():
    result = compare(np.zeros((2, 2)), np.zeros((2, 3)), np.ones((2, 1)), "text-classification")
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
