"""E and E*: the engine alone (ONNX Runtime, or OpenVINO), in this process, no HTTP — the ceiling the service is
measured against.

E batches the sentences in file order (as they would arrive), E* after sorting them by token
length; the gap between the two is padding, which a batcher can recover and HTTP cannot.
Both run as the service runs a model on a CPU: one single-threaded run per core, side by side
on one session (app.engine.onnx_runtime.run_layout). E* is also taken the way ONNX Runtime runs by default,
one run at a time on every core, and the better of the two is the limit: the service is held to
the best ONNX Runtime alone does, not to the layout it chose. OpenVINO's limits run its compiled model the same two
ways: one stream per core with a request per thread, and one stream on every core.
"""

from __future__ import annotations

import itertools
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.engine.batcher import right_pad
from app.engine.onnx_runtime import run_layout
from app.serving.model_folder import load_model_folder
from app.engine.threads import usable_cores
from app.engine.tokenize import TextEncoder


def _encoder(folder: Path) -> TextEncoder:
    model = load_model_folder(folder)
    return TextEncoder(model.tokenizer_file, model.max_seq_len, model.tokenizer_config)


def _batches(ids: list[np.ndarray], size: int, pad_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [right_pad(ids[start : start + size], pad_id) for start in range(0, len(ids), size)]


def _padding(batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return 1 - sum(int(mask.sum()) for _, mask in batches) / sum(mask.size for _, mask in batches)


def measure_limits(folder: Path, model_file: str, texts: list[str], seconds: float) -> dict:
    """E, E* and single-sequence latency, each run alone for `seconds`."""
    limits = LimitSlices(folder, model_file, texts)
    for kind in LimitSlices.KINDS:
        limits.run_for(kind, seconds)
    return {"model_file": model_file, **limits.summary()}


Run = Callable[[dict[str, np.ndarray]], object]


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _onnx_runtime(path: Path, runs: int, cores: int) -> tuple[Run, list[str]]:
    """ONNX Runtime's session for `runs` batches at once: one thread each, or every core for one."""
    session = _session(path, max(1, cores // runs))
    return (lambda feeds: session.run(None, feeds)), [node.name for node in session.get_inputs()]


def _openvino(path: Path, runs: int, cores: int, hint: str) -> tuple[Run, list[str]]:
    """OpenVINO's compiled model with a stream per run and an infer request per calling thread."""
    import openvino

    properties = {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": str(runs), "INFERENCE_NUM_THREADS": str(cores)}
    compiled = openvino.Core().compile_model(str(path), "CPU", properties)
    local = threading.local()

    def run(feeds):
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        return local.request.infer(feeds)

    return run, [port.get_any_name() for port in openvino.Core().read_model(str(path)).inputs]


def accuracy(folder: Path, model_file: str, texts: list[str], labels: list[int]) -> float:
    """Share of `texts` whose argmax is `labels` (SST-2: 0 negative, 1 positive), one sentence per run."""
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

    Each kind goes through its batches in its own turn, keeps its place between slices, and
    times every batch it runs. Its rate is that of one whole pass over the sentences (see
    pass_rate), not of the sentences its slices happened to reach: a level's slices cover about
    one pass on roberta-base, and a part of a pass is a sample of lengths (E*'s share of one
    had 23.8 tokens a sentence where the whole pass has 25.0, which read E* 5% high).
    """

    KINDS = ("E", "E*", "E*1", "single")  # E*1: E*'s batches one run at a time, on every core

    def __init__(self, folder: Path, model_file: str, texts: list[str], batch_size: int = 32, *,
                 engine: str = "onnxruntime", hint: str = "f32") -> None:
        """`engine` onnxruntime, or openvino at the INFERENCE_PRECISION_HINT `hint` (f32, bf16)."""
        cores = usable_cores()
        self.runs, _ = run_layout(0, 0, cores, on_cuda=False)
        if engine == "openvino":
            (self._session, inputs), (self._one_run, _) = (_openvino(folder / model_file, runs, cores, hint)
                                                           for runs in (self.runs, 1))
        else:
            (self._session, inputs), (self._one_run, _) = (_onnx_runtime(folder / model_file, runs, cores)
                                                           for runs in (self.runs, 1))  # 1: ONNX Runtime's default
        encoder = _encoder(folder)
        # A fill-mask graph computes its head at the masks only (mask_positions), as the service asks it to.
        self._mask_id = encoder.mask_id if "mask_positions" in inputs else None
        ids = [e.ids for e in encoder.encode(texts)]
        file_order = _batches(ids, batch_size, encoder.pad_id)
        by_length = _batches(sorted(ids, key=len), batch_size, encoder.pad_id)
        # Batches of sorted sentences, run in a shuffled order: a slice shorter than a whole pass must see the mix
        # of lengths the servers get, not only the shortest sentences (which made E* read 61 seq/s where a whole
        # pass gives 40 on roberta-base).
        random.Random(0).shuffle(by_length)
        self.padding = {"E": _padding(file_order), "E*": _padding(by_length)}
        singles = [(x[None, :], np.ones((1, len(x)), dtype=np.int64)) for x in ids]
        # E*1 runs E*'s batches in the same order, from its own place
        self._batches = {"E": file_order, "E*": by_length, "E*1": by_length, "single": singles}
        self._feeds = {kind: itertools.cycle(enumerate(batches)) for kind, batches in self._batches.items()}
        self._next = threading.Lock()
        self._sequences = dict.fromkeys(self.KINDS, 0)
        self._seconds = dict.fromkeys(self.KINDS, 0.0)
        self._durations: dict[str, dict[int, list[float]]] = {kind: {} for kind in ("E", "E*", "E*1")}  # per batch, per run
        self._single_latencies: list[float] = []
        for session in (self._session, self._one_run):
            for index in range(2):
                self._run(session, *file_order[index])  # warm up

    def _run(self, run: Run, input_ids: np.ndarray, mask: np.ndarray) -> None:
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if self._mask_id is not None:
            feeds["mask_positions"] = np.argwhere(input_ids == self._mask_id).astype(np.int64)
        run(feeds)

    def run_for(self, kind: str, seconds: float) -> None:
        """Whole runs until `seconds` have passed (the last ones finish): E and E* on `runs` threads at once,
        E*1 and single one run at a time on every core (single's latency is one sequence's best)."""
        runs, session = (self.runs, self._session) if kind in ("E", "E*") else (1, self._one_run)
        began = time.perf_counter()

        def work() -> None:
            while time.perf_counter() - began < seconds:
                with self._next:
                    index, (input_ids, mask) = next(self._feeds[kind])
                started = time.perf_counter()
                self._run(session, input_ids, mask)
                took = time.perf_counter() - started
                with self._next:
                    if kind == "single":
                        self._single_latencies.append(took)
                    else:  # single is read as a latency, not rated over a pass
                        self._durations[kind].setdefault(index, []).append(took)
                    self._sequences[kind] += len(input_ids)

        threads = [threading.Thread(target=work) for _ in range(runs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._seconds[kind] += time.perf_counter() - began

    def summary(self) -> dict:
        """The kinds that were run (all of them, or only E* for the INT8 limit in slices)."""
        out = {}
        rate = {kind: self._rate(kind) for kind in self.KINDS if self._seconds[kind]}
        if "E" in rate:
            out["E_seq_per_s"] = rate["E"]
        if "E*" in rate or "E*1" in rate:
            # the limit: the better layout; both are kept
            out["E_star_seq_per_s"] = max(rate.get("E*", 0.0), rate.get("E*1", 0.0))
            out |= {"E_star_runs": self.runs, "E_star_side_by_side_seq_per_s": rate.get("E*"),
                    "E_star_one_run_seq_per_s": rate.get("E*1")}
        if self._single_latencies:
            out["single_p50_ms"] = statistics.median(self._single_latencies) * 1000
        coverage = {kind: len(self._durations[kind]) / len(self._batches[kind]) for kind in ("E", "E*", "E*1") if self._seconds[kind]}
        return out | {"E_padding": self.padding["E"], "E_star_padding": self.padding["E*"],
                      "batches_timed": {kind: round(share, 3) for kind, share in coverage.items()}}

    def _rate(self, kind: str) -> float:
        runs = self.runs if kind in ("E", "E*") else 1
        if kind != "single":
            rate = pass_rate(self._batches[kind], self._durations[kind], runs)
            if rate is not None:
                return rate
        return self._sequences[kind] / self._seconds[kind]


def pass_rate(batches: list[tuple[np.ndarray, np.ndarray]], durations: dict[int, list[float]], runs: int) -> float | None:
    """Sequences per second over one whole pass of `batches`, `runs` at a time, from each batch's mean time.

    A batch not timed is given the time a line through the timed ones (seconds against padded
    tokens) puts on its size. None when fewer than two sizes were timed: the plain rate stands.
    """
    means = {index: sum(times) / len(times) for index, times in durations.items() if times}
    if len(means) < len(batches):
        sizes = np.array([batches[index][0].size for index in means], dtype=float)
        if len(set(sizes.tolist())) < 2:
            return None
        slope, intercept = np.polyfit(sizes, np.array(list(means.values())), 1)
        for index in range(len(batches)):
            if index not in means:
                means[index] = max(0.0, intercept + slope * batches[index][0].size)
    seconds = sum(means[index] for index in range(len(batches))) / runs
    return float(sum(len(batch[0]) for batch in batches) / seconds) if seconds > 0 else None
