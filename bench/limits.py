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


class LimitSlices:
    """E, E* and single-sequence latency in time slices, so they can be taken in turn with the servers.

    Each kind keeps its place in the sentences between slices (file-order batches, sorted
    batches, one sentence at a time) and adds up what it ran.
    """

    KINDS = ("E", "E*", "single")

    def __init__(self, folder: Path, model_file: str, texts: list[str], batch_size: int = 32) -> None:
        import itertools

        import onnxruntime as ort

        self._session = ort.InferenceSession(str(folder / model_file), providers=["CPUExecutionProvider"])
        encoder = _encoder(folder)
        ids = [e.ids for e in encoder.encode(texts)]
        singles = ((x[None, :], np.ones((1, len(x)), dtype=np.int64)) for x in itertools.cycle(ids))
        self._feeds = {
            "E": itertools.cycle(list(_batches(ids, batch_size, encoder.pad_id))),
            "E*": itertools.cycle(list(_batches(sorted(ids, key=len), batch_size, encoder.pad_id))),
            "single": singles,
        }
        self._sequences = dict.fromkeys(self.KINDS, 0)
        self._seconds = dict.fromkeys(self.KINDS, 0.0)
        self._single_latencies: list[float] = []
        for _ in range(2):
            self._run(*next(self._feeds["E"]))  # warm up

    def _run(self, input_ids: np.ndarray, mask: np.ndarray) -> None:
        self._session.run(None, {"input_ids": input_ids, "attention_mask": mask})

    def run_for(self, kind: str, seconds: float) -> None:
        """Whole runs until `seconds` have passed (the last one finishes)."""
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            input_ids, mask = next(self._feeds[kind])
            started = time.perf_counter()
            self._run(input_ids, mask)
            if kind == "single":
                self._single_latencies.append(time.perf_counter() - started)
            self._sequences[kind] += len(input_ids)
        self._seconds[kind] += time.perf_counter() - began

    def summary(self) -> dict:
        return {
            "E_seq_per_s": self._sequences["E"] / self._seconds["E"],
            "E_star_seq_per_s": self._sequences["E*"] / self._seconds["E*"],
            "single_p50_ms": statistics.median(self._single_latencies) * 1000,
        }
