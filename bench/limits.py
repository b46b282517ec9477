"""E and E*: ONNX Runtime alone, in this process, no HTTP — the ceiling the service is measured against.

E batches the sentences in file order (as they would arrive), E* after sorting them by token
length; the gap between the two is padding, which a batcher can recover and HTTP cannot.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def _encoder(folder: Path):
    import json

    from app.tokenize import TextEncoder

    manifest = json.loads((folder / "manifest.json").read_text())
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return TextEncoder(folder / "tokenizer.json", int(manifest["max_seq_len"]), config)


def _batches(ids: list[np.ndarray], size: int, pad_id: int):
    for start in range(0, len(ids), size):
        group = ids[start : start + size]
        width = max(len(x) for x in group)
        input_ids = np.full((len(group), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(group), width), dtype=np.int64)
        for row, x in enumerate(group):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        yield input_ids, mask


def measure_limits(folder: Path, model_file: str, texts: list[str], batch_size: int = 32, threads: int = 0) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / model_file), sess_options=options, providers=["CPUExecutionProvider"])
    encoder = _encoder(folder)
    ids = [e.ids for e in encoder.encode(texts)]

    def run(order: list[np.ndarray]) -> tuple[float, float]:
        real = padded = 0
        started = time.perf_counter()
        for input_ids, mask in _batches(order, batch_size, encoder.pad_id):
            session.run(None, {"input_ids": input_ids, "attention_mask": mask})
            real += int(mask.sum())
            padded += mask.size
        return len(order) / (time.perf_counter() - started), 1 - real / padded

    run(ids[: batch_size * 2])  # warm up
    e, e_padding = run(ids)
    e_star, e_star_padding = run(sorted(ids, key=len))
    singles = []
    for x in ids:  # every sentence, as the load levels cycle through them all
        started = time.perf_counter()
        session.run(None, {"input_ids": x[None, :], "attention_mask": np.ones((1, len(x)), dtype=np.int64)})
        singles.append(time.perf_counter() - started)
    return {
        "model_file": model_file,
        "batch_size": batch_size,
        "E_seq_per_s": e,
        "E_padding": e_padding,
        "E_star_seq_per_s": e_star,
        "E_star_padding": e_star_padding,
        "single_p50_ms": statistics.median(singles) * 1000,
    }


def accuracy(folder: Path, model_file: str, texts: list[str], labels: list[int]) -> float:
    """Share of `texts` whose argmax is `labels` (SST-2: 0 negative, 1 positive), one sentence per run."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / model_file), providers=["CPUExecutionProvider"])
    encoder = _encoder(folder)
    right = 0
    for encoded, label in zip(encoder.encode(texts), labels):
        x = encoded.ids[None, :]
        logits = session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        right += int(logits[0].argmax() == label)
    return right / len(texts)
