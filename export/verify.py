"""Does the ONNX file answer like PyTorch? Probe-batch differences on every output the task's graph has
(app.tasks.specs), and eval accuracy.

The probe batch mixes lengths so that right padding and the attention mask are
exercised: an export that ignores the mask would pass on a single sentence.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from app.tasks.specs import EXPORTED, MASK_POSITIONS
from export.errors import BadOption

Batch = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]  # each of the task's outputs (its spec's `outputs`), by name
Runner = Callable[[Batch], Outputs]

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Comparison:
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    compared: int  # sequences (text classification) or token positions (fill-mask, token classification)

    def as_dict(self) -> dict:
        return asdict(self)


def probe_texts(task: str, mask_token: str | None) -> list[str]:
    """The task's probe texts (app.tasks.specs), its mask token put in where they have one."""
    return [text.format(mask=mask_token) for text in EXPORTED[task].probes]


def encode(tokenizer, texts: Sequence[str], max_seq_len: int, task: str = "text-classification") -> Batch:
    """Right-padded, truncated batch: the layout the service feeds the model.

    For fill-mask it also holds `mask_positions`: every real token, masks included. The graph
    computes the head wherever it is asked, so verification asks everywhere; padded positions,
    which nobody reads, are left out.
    """
    tokenizer.padding_side = "right"
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_seq_len, return_tensors="np")
    batch = {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}
    if task == "fill-mask":
        batch[MASK_POSITIONS] = np.argwhere(batch["attention_mask"] == 1).astype(np.int64)
    return batch


def at_positions(logits: np.ndarray, batch: Batch) -> np.ndarray:
    """From logits at every position ([batch, length, n]): the rows at the batch's mask positions, or at
    every real token (token classification); padded positions, which nobody reads, are left out."""
    if logits.ndim != 3:
        return logits
    positions = batch[MASK_POSITIONS] if MASK_POSITIONS in batch else np.argwhere(batch["attention_mask"] == 1)
    return logits[positions[:, 0], positions[:, 1]]


def torch_runner(model, outputs: Sequence[str] = ("logits",)) -> Runner:
    """The unmodified PyTorch model: the reference every graph is held to. `outputs`: the task's (its spec's)."""
    import torch

    def run(batch: Batch) -> Outputs:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(value) for name, value in batch.items() if name in MODEL_INPUTS}
            result = model(**inputs)
            if isinstance(result, torch.Tensor):  # a graph of one output (the embedding graph's module)
                result = dict(zip(outputs, [result]))
            else:
                result = {name: getattr(result, name) for name in outputs}
            return {name: at_positions(value.float().numpy(), batch) for name, value in result.items()}

    return run


def onnx_runner(path: Path, padding_idx: int = 1, outputs: Sequence[str] = ("logits",)) -> Runner:
    """`padding_idx`: where RoBERTa's position ids start (config.json's pad_token_id), for a packed graph."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = [node.name for node in session.get_inputs()]
    packed = "token_index" in wanted  # the padding-free graph (export/packed_graph.py)

    def run(batch: Batch) -> Outputs:
        if packed:
            from app.engine.packing import pack

            batch = {**batch, **pack(batch["input_ids"], batch["attention_mask"], padding_idx)}
        missing = [name for name in wanted if name not in batch]
        if missing:
            raise BadOption(f"{path.name} wants inputs {missing} that the tokenizer does not produce")
        values = session.run(list(outputs), {name: batch[name] for name in wanted})
        # a graph with the head at every position (as optimum exports it) is compared at the positions asked
        return {name: at_positions(value.astype(np.float32), batch) for name, value in zip(outputs, values)}

    return run


def openvino_runner(path: Path, outputs: Sequence[str] = ("logits",)) -> Runner:
    """An OpenVINO model (an IR's .xml, or an ONNX file) on the CPU at fp32 precision, as the service runs INT8."""
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    wanted = [port.get_any_name() for port in model.inputs]
    names = [port.get_any_name() for port in model.outputs]  # a compiled port has fused operators' names too
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()

    def run(batch: Batch) -> Outputs:
        missing = [name for name in wanted if name not in batch]
        if missing:
            raise BadOption(f"{path.name} wants inputs {missing} that the tokenizer does not produce")
        request.infer({name: batch[name] for name in wanted})
        values = {name: np.array(request.get_output_tensor(index).data) for index, name in enumerate(names)}
        return {name: at_positions(values[name].astype(np.float32), batch) for name in outputs}

    return run


def runner_for(path: Path, padding_idx: int = 1, outputs: Sequence[str] = ("logits",)) -> Runner:
    """The engine that serves a file: OpenVINO for its IR (.xml), ONNX Runtime for an ONNX file."""
    return openvino_runner(path, outputs) if path.suffix == ".xml" else onnx_runner(path, padding_idx, outputs)


def read_calibration_file(path: Path, most: int) -> list[str]:
    """The first `most` texts of a TSV: one text per row, or text<TAB>label as --eval-file takes (only the first
    column is read); a header row whose first cell is `text` or `sentence` is skipped."""
    texts = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not row[0].strip() or (number == 1 and row[0].strip().lower() in ("text", "sentence")):
                continue
            texts.append(row[0].strip())
            if len(texts) == most:
                break
    if not texts:
        raise BadOption(f"{path} has no texts to calibrate on (one text per row, or text<TAB>label)")
    return texts


def compare_outputs(reference: Outputs, candidate: Outputs) -> Comparison:
    """Every output against the reference; the worst of them (largest difference, lowest agreement) counts."""
    each = [compare(reference[name], candidate[name]) for name in reference]
    return Comparison(
        max_abs_diff=max(c.max_abs_diff for c in each),
        mean_abs_diff=max(c.mean_abs_diff for c in each),
        top1_agreement=min(c.top1_agreement for c in each),
        compared=min(c.compared for c in each),
    )


def compare(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Rows of one output (one per sequence, or one per compared token) against the reference."""
    if reference.shape != candidate.shape:
        return Comparison(float("inf"), float("inf"), 0.0, 0)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = reference.argmax(axis=-1) == candidate.argmax(axis=-1)
    return Comparison(
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        top1_agreement=float(agree.mean()),
        compared=int(agree.size),
    )


def read_eval_file(path: Path, label2id: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """TSV of text<TAB>label, label as an id or a name; a header row is skipped."""
    names = {name.lower(): idx for name, idx in label2id.items()}
    texts, labels = [], []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                raise BadOption(f"{path}:{number}: expected text<TAB>label")
            label = _parse_label(row[-1].strip(), names, len(label2id))
            if label is None:
                if number == 1:
                    continue  # header
                raise BadOption(f"{path}:{number}: unknown label '{row[-1].strip()}'; use one of {sorted(label2id)}")
            texts.append("\t".join(row[:-1]).strip())
            labels.append(label)
    if not texts:
        raise BadOption(f"{path} has no rows of text<TAB>label")
    return texts, np.asarray(labels)


def predict(run: Runner, tokenizer, texts: Sequence[str], max_seq_len: int, batch_size: int = 32) -> np.ndarray:
    """Argmax labels, batched in length order so padding does not dominate the time."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    predictions = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = run(encode(tokenizer, [texts[i] for i in chunk], max_seq_len))["logits"]
        predictions[chunk] = logits.argmax(axis=-1)
    return predictions


def _parse_label(value: str, names: dict[str, int], count: int) -> int | None:
    if value.lower() in names:
        return names[value.lower()]
    if value.isdigit() and int(value) < count:
        return int(value)
    return None
