"""What runs a model: one small interface, two engines, and the choice between them.

ONNX Runtime (app.engine.onnx_runtime) runs on CUDA and on any CPU; OpenVINO (app.engine.openvino_runtime) runs the
same exported folder on a CPU, in bf16 on the CPU's matrix units or INT8 from a calibrated export. The batcher, the
tasks and the metrics see an `Engine` only: named inputs in, every output by name back, what a run costs, and a
description of what really runs. app.engine.backends chooses the engine for a model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.tasks.specs import MASK_POSITIONS


@dataclass(frozen=True)
class RunCosts:
    """What a run costs beyond its tokens, as the batcher weighs it against padding (app.engine.batcher)."""

    overhead_tokens: float  # a run's fixed cost, in tokens of work
    attention_tokens: float | None = None  # padding-free graphs: the row length at which a padded slot costs a token


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "auto"  # auto | onnxruntime | openvino (see choose_backend)
    precision: str = "auto"
    providers: tuple[str, ...] = ("cuda", "cpu")
    intra_op_threads: int = 0  # 0: see run_layout
    concurrent_runs: int = 0  # batches of the model that run at once; 0: see run_layout
    cores: int | None = None  # the cores to lay threads out on; None: usable_cores()
    # A second session on every core for a batch that runs alone (see OnnxRuntimeEngine.run). It holds its own copy
    # of the weights.
    solo: bool = False
    # The operator named the providers. The default ("cuda,cpu") means "the GPU if this build has one":
    # on a CPU-only onnxruntime, running on the CPU is then what was asked for, not a fallback to warn about.
    providers_chosen: bool = False
    # Worker threads spin between operators (ONNX Runtime's default). With several models in one process, the
    # threads of one session spin on the cores another session needs: then they wait instead (see `spins`).
    spin: bool = True
    # ROBERTA_ONNX_SCHEDULER=idle: the model's threads under SCHED_IDLE (see name_native_thread).
    idle: bool = False
    # ROBERTA_EXECUTION: the padding-free graph or the padded one (see choose_execution).
    execution: str = "auto"


class Engine(Protocol):
    """One model loaded on one engine, run from the engine's own threads, never on the event loop."""

    backend: str  # "onnxruntime" or "openvino"
    precision: str  # what really runs: fp32, bf16, int8 or fp16
    device: str  # "cuda" or "cpu"
    file: Path  # the model file loaded
    concurrent_runs: int  # batches that may run at once (the batcher keeps this many in flight)
    takes_positions: bool  # the graph computes rows at given token positions (fill-mask's mask_positions)

    async def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray | None = None,
                  alone: bool = False) -> dict[str, np.ndarray]:
        """Every output of the graph, by name: one row per sequence, or with `positions` one per position.
        `alone`: nothing else runs meanwhile and nothing waits (an engine may give such a batch every core)."""
        ...

    async def warm_up(self, shapes: list[tuple[int, int]], pad_id: int) -> float:
        """Run each (batch, length) once, so that first requests do not pay for allocation and kernel setup."""
        ...

    async def run_costs(self, pad_id: int, max_batch_tokens: int) -> RunCosts:
        """What a run costs on this engine, measured or known, after warm_up."""
        ...

    def info(self) -> dict:
        """What runs, for /info and /models: engine, precision, device, file, and the engine's own layout."""
        ...

    def close(self) -> None: ...


def warm_up_shapes(max_batch_size: int, max_batch_tokens: int, max_seq_len: int, on_cuda: bool) -> list[tuple[int, int]]:
    lengths = sorted({min(16, max_seq_len), min(64, max_seq_len), max_seq_len})
    budget = max_batch_tokens if on_cuda else min(max_batch_tokens, 2048)  # keep CPU start-up short
    shapes = []
    for length in lengths:
        for batch in sorted({1, max_batch_size}):
            batch = min(batch, max(1, budget // length))
            if (batch, length) not in shapes:
                shapes.append((batch, length))
    return shapes


def graph_feeds(feeds: dict[str, np.ndarray], input_names: list[str], positions: np.ndarray | None,
                rows: int) -> dict[str, np.ndarray]:
    """The inputs a graph takes from a batch of `rows` sequences: `feeds`, zero token types where the graph asks for
    them, and the positions to compute rows at where it takes them (a run that only times the model gets the first
    of each row)."""
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    if MASK_POSITIONS in input_names:
        feeds[MASK_POSITIONS] = positions if positions is not None else first_of_each_row(rows)
    return {name: feeds[name] for name in input_names}


def first_of_each_row(rows: int) -> np.ndarray:
    """One position per sequence, for runs that only time the model (warm-up, costs)."""
    return np.stack([np.arange(rows), np.zeros(rows, dtype=np.int64)], axis=1).astype(np.int64)


async def median_seconds(engine: Engine, batches: dict, repeats: int) -> dict:
    """Each (input_ids, attention_mask) run `repeats` times, in turn: its median seconds, by the same key."""
    times: dict = {key: [] for key in batches}
    for _ in range(repeats):
        for key, (ids, mask) in batches.items():
            started = time.perf_counter()
            await engine.run(ids, mask)
            times[key].append(time.perf_counter() - started)
    return {key: sorted(values)[repeats // 2] for key, values in times.items()}


async def measured_overhead(engine: Engine, pad_id: int, max_seq_len: int, max_batch_tokens: int,
                            repeats: int = 3) -> float:
    """A run's fixed cost in tokens of work: the line through a one-row run and a full one of the same row length
    (medians of `repeats`), read at zero tokens. Rows of one length keep attention's share of each token equal, so
    that the line's slope is a token's cost and its intercept the run's."""
    length = min(32, max_seq_len)
    rows = max(2, min(32, max_batch_tokens // length))
    shapes = {"small": (1, length), "large": (rows, length)}
    batches = {key: (np.full(shape, pad_id, dtype=np.int64), np.ones(shape, dtype=np.int64)) for key, shape in shapes.items()}
    seconds = await median_seconds(engine, batches, repeats)
    return overhead_tokens(seconds["small"], length, seconds["large"], rows * length, cap=max_batch_tokens)


def overhead_tokens(small_s: float, small_tokens: int, large_s: float, large_tokens: int, *, cap: float) -> float:
    """The fixed cost, in tokens, of the line t = fixed + per_token x tokens through two timed runs."""
    per_token = (large_s - small_s) / (large_tokens - small_tokens)
    if per_token <= 0:  # noise, or runs that cost the same whatever their size: all overhead
        return float(cap)
    return float(min(cap, max(0.0, small_s - per_token * small_tokens) / per_token))
