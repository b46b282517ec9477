"""A right-padded batch as the padding-free graph takes it (export/packed_graph.py).

The batcher builds every batch right-padded; a session on a packed graph turns it into the
real tokens in one row and the two index maps between that row and the padded layout.
"""

from __future__ import annotations

import numpy as np


def pack(input_ids: np.ndarray, attention_mask: np.ndarray, padding_idx: int) -> dict[str, np.ndarray]:
    """The packed graph's inputs for a right-padded batch ([B, L] each).

    RoBERTa's position ids count from `padding_idx + 1` (transformers'
    create_position_ids_from_input_ids); right padding puts token j of a row at position
    `padding_idx + 1 + j`.
    """
    rows, width = input_ids.shape
    flat_index = np.flatnonzero(attention_mask).astype(np.int64)
    tokens = len(flat_index)
    token_index = np.full(rows * width, tokens, dtype=np.int64)
    token_index[flat_index] = np.arange(tokens, dtype=np.int64)
    return {
        "input_ids": input_ids.reshape(-1)[flat_index].astype(np.int64, copy=False),
        "position_ids": flat_index % width + (padding_idx + 1),
        "token_index": token_index.reshape(rows, width),
        "flat_index": flat_index,
    }
