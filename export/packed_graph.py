"""The padding-free graph: every token-wise operator runs on the batch's real tokens only.

A right-padded batch of B sequences, the longest L tokens, costs B x L tokens in every
projection, feed-forward and LayerNorm, whatever the real lengths; on a CPU that is nearly
all of a RoBERTa's work. This graph takes the real tokens packed into one row, `[T]`, and
two index maps (see app/packing.py, which builds them from the padded batch):

- `token_index` `[B, L]`: the packed index of the token at each (row, column), or T for padding;
- `flat_index` `[T]`: where each packed token sits in the padded `B x L` layout.

Embeddings, projections, feed-forward and LayerNorms run on `[T, hidden]`. Attention alone
is per sequence: the layer's query, key and value rows are gathered into `[B, L, 3 x hidden]`
(a padded slot gathers the first token's row, which the attention bias masks out as a key and
`flat_index` drops as a query), attended, and gathered back to `[T, hidden]`.
Attention is about `L / (6 x hidden)` of a padded token's work (0.09 at roberta-base's 768 and
400 tokens), so paying it padded costs little. The graph is traced with `torch.onnx.export`
from the checkpoint's own modules; it uses Gather, MatMul, Softmax and elementwise operators
only, which the CPU and CUDA providers both run. Its output has the padded graph's shape for
each task, so nothing downstream of the session changes; verification compares it with the
unmodified PyTorch model.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from app.tasks.specs import MASK_POSITIONS

DEFAULT_OPSET = 18
PACKED_INPUTS = ("input_ids", "position_ids", "token_index", "flat_index")


class PackedEncoder(torch.nn.Module):
    """RoBERTa's encoder over packed tokens, on the checkpoint's own embedding and layer modules."""

    def __init__(self, base_model: torch.nn.Module) -> None:
        super().__init__()
        config = base_model.config
        self.embeddings = base_model.embeddings
        self.layers = base_model.encoder.layer
        self.heads = int(config.num_attention_heads)
        self.head_size = int(config.hidden_size) // self.heads
        # Query, key and value as one projection of the same weights: one Gemm and no Concat per layer.
        self.qkv = torch.nn.ModuleList(_joined(layer.attention.self) for layer in self.layers)

    def forward(self, input_ids, position_ids, token_index, flat_index) -> torch.Tensor:
        embeddings = self.embeddings
        hidden = (
            embeddings.word_embeddings(input_ids)
            + embeddings.position_embeddings(position_ids)
            + embeddings.token_type_embeddings.weight[0]  # RoBERTa has one token type; the service sends none
        )
        hidden = embeddings.LayerNorm(hidden)
        padding = token_index >= input_ids.shape[0]  # [B, L]: token_index gives padded slots the index T
        bias = padding.to(hidden.dtype)[:, None, None, :] * torch.finfo(hidden.dtype).min
        # Padded slots gather token 0, a real row: finite, masked as a key, dropped as a query. Gathering a zero
        # row instead meant a Concat copying the layer's [T, 3 x hidden] projection in every layer.
        gather_index = torch.where(padding, torch.zeros_like(token_index), token_index)
        for layer, qkv in zip(self.layers, self.qkv):
            hidden = self._layer(layer, qkv, hidden, gather_index, flat_index, bias)
        return hidden  # [T, hidden]

    def _layer(self, layer, qkv, hidden, gather_index, flat_index, bias) -> torch.Tensor:
        qkv = qkv(hidden)[gather_index]  # [B, L, 3 x hidden]
        rows, width = gather_index.shape[0], gather_index.shape[1]
        qkv = qkv.reshape(rows, width, 3, self.heads, self.head_size).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]  # [B, heads, L, head_size]
        scores = torch.matmul(query, key.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_size)) + bias
        context = torch.matmul(torch.softmax(scores, dim=-1), value)  # [B, heads, L, head_size]
        context = context.permute(0, 2, 1, 3).reshape(rows * width, self.heads * self.head_size)[flat_index]
        output = layer.attention.output
        hidden = output.LayerNorm(output.dense(context) + hidden)
        output = layer.output
        return output.LayerNorm(output.dense(layer.intermediate(hidden)) + hidden)


def _joined(attention: torch.nn.Module) -> torch.nn.Linear:
    parts = (attention.query, attention.key, attention.value)
    joined = torch.nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
    with torch.no_grad():
        joined.weight.copy_(torch.cat([p.weight for p in parts]))
        joined.bias.copy_(torch.cat([p.bias for p in parts]))
    return joined


class PackedSequenceClassifier(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = PackedEncoder(model.base_model)
        self.classifier = model.classifier

    def forward(self, input_ids, position_ids, token_index, flat_index):
        hidden = self.encoder(input_ids, position_ids, token_index, flat_index)
        first = hidden[token_index[:, 0]]  # each sequence's <s>
        return self.classifier(first[:, None, :])  # the head reads features[:, 0]: [B, labels]


class PackedTokenClassifier(PackedSequenceClassifier):
    """The same encoder and `classifier` head, read at every token instead of at <s>."""

    def forward(self, input_ids, position_ids, token_index, flat_index):
        logits = self.classifier(self.encoder(input_ids, position_ids, token_index, flat_index))  # [T, labels]
        return torch.cat([logits, logits.new_zeros(1, logits.shape[-1])])[token_index]  # the padded layout


class PackedMaskedLM(torch.nn.Module):
    """Vocabulary logits at `mask_positions` (batch row, token index) only, as export/fill_mask_graph.py."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = PackedEncoder(model.base_model)
        self.head = model.lm_head

    def forward(self, input_ids, position_ids, token_index, flat_index, mask_positions):
        hidden = self.encoder(input_ids, position_ids, token_index, flat_index)
        return self.head(hidden[token_index[mask_positions[:, 0], mask_positions[:, 1]]])


GRAPHS = {
    "text-classification": PackedSequenceClassifier,
    "token-classification": PackedTokenClassifier,
    "fill-mask": PackedMaskedLM,
}


def example_inputs(task: str) -> tuple[torch.Tensor, ...]:
    """Two sequences of 3 and 5 tokens: tracing sees padding, so no shape is taken for a constant."""
    flat = torch.tensor([0, 1, 2, 5, 6, 7, 8, 9])
    inputs = (
        torch.tensor([0, 5, 2, 0, 7, 8, 9, 2]),
        flat % 5 + 2,
        torch.tensor([[0, 1, 2, 8, 8], [3, 4, 5, 6, 7]]),
        flat,
    )
    if task == "fill-mask":
        inputs += (torch.tensor([[0, 1], [1, 3]]),)
    return inputs


def export_packed(model: torch.nn.Module, task: str, target: Path, opset: int | None) -> Path:
    """Trace the padding-free graph of `model` (a transformers RoBERTa with its task's head) into `target`."""
    graph = GRAPHS[task](model.eval()).eval()
    names = list(PACKED_INPUTS) + ([MASK_POSITIONS] if task == "fill-mask" else [])
    axes = {
        "input_ids": {0: "tokens"},
        "position_ids": {0: "tokens"},
        "token_index": {0: "batch_size", 1: "sequence_length"},
        "flat_index": {0: "tokens"},
        MASK_POSITIONS: {0: "num_positions"},
        "logits": {0: "num_positions"} if task == "fill-mask" else {0: "batch_size"},
    }
    if task == "token-classification":
        axes["logits"] = {0: "batch_size", 1: "sequence_length"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            example_inputs(task),
            str(target),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={name: axes[name] for name in names + ["logits"]},
            opset_version=opset or DEFAULT_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return target
