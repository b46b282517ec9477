"""The sentence-embedding graph: the encoder and its pooling in one ONNX file, one vector per text
(export/embedding.py reads which pooling)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from app.tasks.specs import SPECS

OUTPUT = SPECS["feature-extraction"].outputs[0]
DEFAULT_OPSET = 18


class PooledEncoder(torch.nn.Module):
    """The encoder's token states pooled over the real tokens, as sentence-transformers' Pooling computes them."""

    def __init__(self, encoder: torch.nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return tokens[:, 0]
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        if self.pooling == "max":
            return torch.where(mask > 0, tokens, torch.full_like(tokens, -1e9)).max(dim=1).values
        return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def export_pooled(encoder: torch.nn.Module, pooling: str, target: Path, opset: int | None) -> Path:
    graph = PooledEncoder(encoder, pooling).eval()
    ids = torch.tensor([[0, 5, 6, 2, 1], [0, 7, 8, 9, 2]], dtype=torch.long)
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing transformers' code warns about Python branches on tensor sizes; they do not depend on the input.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (ids, (ids != 1).long()),
            str(target),
            input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch_size", 1: "sequence_length"},
                "attention_mask": {0: "batch_size", 1: "sequence_length"},
                OUTPUT: {0: "batch_size"},
            },
            opset_version=opset or DEFAULT_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return target
