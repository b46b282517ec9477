"""The fill-mask graph: vocabulary logits only where a mask is.

A masked-LM head over every position returns `[batch, length, vocab]` logits: 3.3 GB for one batch
of 32 x 512 with roberta-base's 50,265-token vocabulary, and about a third of roberta-base's
multiply-adds per token, nearly all of it for rows nobody reads. This graph takes `mask_positions`
(`[n, 2]` int64: batch row, token index), gathers the encoder's hidden states there, and runs the
head on those rows only, so `logits` is `[n, vocab]`. It is traced from the checkpoint's own modules
(`base_model`, `lm_head`) with `torch.onnx.export`; verification compares it with the unmodified
PyTorch model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from app.tasks.specs import MASK_POSITIONS

DEFAULT_OPSET = 18  # what optimum chooses for RoBERTa, so both graphs of an export folder agree


class HeadAtPositions(torch.nn.Module):
    def __init__(self, masked_lm: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = masked_lm.base_model
        self.head = masked_lm.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_positions: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = hidden.reshape(-1, hidden.shape[-1])  # [batch x length, hidden]
        flat = mask_positions[:, 0] * hidden.shape[1] + mask_positions[:, 1]
        return self.head(rows.index_select(0, flat))


def export_head_at_positions(checkpoint: Path, target: Path, opset: int) -> Path:
    from transformers import AutoModelForMaskedLM

    # Eager attention traces to the MatMul/Softmax pattern that ONNX Runtime's fusions recognise.
    model = AutoModelForMaskedLM.from_pretrained(str(checkpoint), local_files_only=True, attn_implementation="eager")
    graph = HeadAtPositions(model.eval()).eval()
    ids = torch.tensor([[0, 5, 6, 2, 1], [0, 7, 8, 9, 2]], dtype=torch.long)
    example = (ids, (ids != 1).long(), torch.tensor([[0, 1], [1, 3]], dtype=torch.long))
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing transformers' code warns about Python branches on tensor sizes; they do not depend on the input.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            example,
            str(target),
            input_names=["input_ids", "attention_mask", MASK_POSITIONS],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch_size", 1: "sequence_length"},
                "attention_mask": {0: "batch_size", 1: "sequence_length"},
                MASK_POSITIONS: {0: "num_positions"},
                "logits": {0: "num_positions"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return target
