"""One ONNX Runtime session per model, run from its own threads.

The session runs on the model's executor, never on the event loop. On a CPU it runs one
single-threaded batch per core at a time (see run_layout), all on the one session, so the
weights are loaded once; on a GPU one batch at a time. A second, solo session on every core
can take the batches that run alone (light load), which one thread would run slower.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.engine.engine import EngineConfig, RunCosts, graph_feeds, median_seconds
from app.engine.packing import pack
from app.serving.model_folder import ModelFolder, ModelFolderError, is_wide
from app.engine.threads import ThreadPool, usable_cores
from app.tasks.specs import MASK_POSITIONS

log = logging.getLogger("app.engine.onnx_runtime")

PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# A graph with this input computes its output rows only at the (batch row, token index) pairs it is given
# (the fill-mask graph of export/fill_mask_graph.py); without it, a graph asked for positions returns a row
# for every token, as exports before format 2 do, and the rows are picked here.
POSITIONS_INPUT = MASK_POSITIONS
SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items()}


def run_layout(concurrent_runs: int, intra_op_threads: int, cores: int, on_cuda: bool) -> tuple[int, int]:
    """(batches that run at once, ONNX Runtime threads inside each run; 0: ONNX Runtime's default).

    On a CPU, unless told otherwise: one single-threaded run per core. One run on every core's
    thread keeps them in step: each operator ends when the slowest thread ends, and a core the
    event loop or the tokenizer takes stalls the whole run while the partner thread spins. Runs
    side by side share nothing but the weights (docs/decisions/runs-side-by-side.md). Naming the threads per run
    (ROBERTA_INTRA_OP_THREADS) without the runs keeps one run. A GPU runs one batch at a time.
    """
    if on_cuda:
        return concurrent_runs or 1, intra_op_threads
    runs = concurrent_runs or (1 if intra_op_threads else cores)
    return runs, intra_op_threads or max(1, cores // runs)


def spins(models_loaded: int, hidden_size: int | None) -> bool:
    """Whether a model's session lets its threads spin: alone in the process, and wide enough to gain from it.

    ONNX Runtime's worker threads spin between operators by default. That pays where an operator's work is large
    (roberta-base) and costs where it is small (the embedded 256-wide model), and where sessions share the cores
    (docs/decisions/solo-session-and-spinning.md).
    """
    return models_loaded == 1 and is_wide(hidden_size)


def cuda_wanted(config: EngineConfig) -> bool:
    """The settings ask for CUDA and this onnxruntime build has it (it may still find no GPU: see _start)."""
    return "cuda" in config.providers and PROVIDER_NAMES["cuda"] in ort.get_available_providers()


def requested_providers(wanted: tuple[str, ...], available: list[str]) -> list[str]:
    """ONNX Runtime names of the wanted providers this build has, CPU always last as the fallback."""
    chosen = [PROVIDER_NAMES[name] for name in wanted if PROVIDER_NAMES[name] in available]
    if PROVIDER_NAMES["cpu"] not in chosen:
        chosen.append(PROVIDER_NAMES["cpu"])
    return chosen


def choose_precision(requested: str, exported: set[str], on_cuda: bool) -> str:
    """auto: fp16 on CUDA if exported, else fp32. INT8 only when named: its dynamic quantization takes each run's
    activation scales from the whole batch, so a text's answer moves with its batchmates
    (docs/decisions/precision-and-batchmates.md)."""
    if requested == "bf16":
        raise ModelFolderError("bf16 runs on OpenVINO: pip install '.[openvino]' and set ROBERTA_BACKEND=openvino or auto")
    if requested != "auto":
        if requested not in exported:
            raise ModelFolderError(
                f"precision {requested} was asked for but not exported (have: {', '.join(sorted(exported))}); "
                f"re-export with {'--fp16' if requested == 'fp16' else '--quantize int8'} or set ROBERTA_PRECISION=auto"
            )
        return requested
    if on_cuda and "fp16" in exported:
        return "fp16"
    if "fp32" in exported:
        return "fp32"
    return sorted(exported)[0]


# Where the padding-free graph measured faster in the service: INT8 on a CPU (docs/decisions/packed-graph.md). In
# fp32 it was level or slower; FP16 on a GPU has not been measured (scripts/gpu-check.sh does).
PACKED_BY_DEFAULT = frozenset({"int8"})


def choose_execution(requested: str, folder: ModelFolder, precision: str) -> bool:
    """True: run the padding-free graph. auto: where it measured faster (PACKED_BY_DEFAULT) and was exported."""
    if requested == "padded":
        return False
    if requested == "auto":
        return precision in PACKED_BY_DEFAULT and precision in folder.packed_files
    if precision not in folder.packed_files:
        raise ModelFolderError(
            f"packed execution was asked for but {folder.path} has no padding-free {precision} graph; "
            "re-export with --packed or set ROBERTA_EXECUTION=auto"
        )
    return True


def model_file(folder: ModelFolder, precision: str, packed: bool) -> Path:
    return (folder.packed_files if packed else folder.files)[precision]


class OnnxRuntimeEngine:
    backend = "onnxruntime"

    def __init__(self, folder: ModelFolder, config: EngineConfig, name: str | None = None) -> None:
        self.folder = folder
        self.name = name or folder.path.name
        # The session is created and run on this one thread: ONNX Runtime's pool threads, started when the
        # session is created, inherit its name and its scheduling policy (config.idle).
        cores = config.cores or usable_cores()
        self._executor = ThreadPool(max(1, config.concurrent_runs or cores), f"onnx-{self.name}", idle=config.idle)
        try:
            self._executor.submit(self._start, folder, config, cores).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        log.info(
            "%s: %s, ONNX Runtime %s on %s (%s), %d run(s) at once on %s thread(s) each%s",
            self.name, folder.task, self.precision, ",".join(self.providers_in_use), self.file.name,
            self.concurrent_runs, self.intra_op_threads or "ONNX Runtime's default",
            f", a lone batch on all {cores}" if self.solo else "",
        )

    def _start(self, folder: ModelFolder, config: EngineConfig, cores: int) -> None:
        available = ort.get_available_providers()
        providers = requested_providers(config.providers, available)
        cuda_wanted = "cuda" in config.providers
        if cuda_wanted and config.providers_chosen and PROVIDER_NAMES["cuda"] not in available:
            log.warning("%s: CUDA requested but this onnxruntime build has no CUDA provider; running on CPU", folder.path.name)
        on_cuda = PROVIDER_NAMES["cuda"] in providers
        self._load(folder, config, providers, cores, on_cuda)
        if on_cuda and "cuda" not in self.providers_in_use:
            # onnxruntime-gpu on a machine without a GPU falls back to CPU without raising: open it again as a
            # CPU session (the CPU's file where the precision was chosen for the GPU, and the CPU's threads).
            log.warning("%s: CUDA provider could not start (no GPU?); running on %s", folder.path.name, ",".join(self.providers_in_use))
            self._load(folder, config, providers, cores, on_cuda=False)
        self.input_names = [node.name for node in self._session.get_inputs()]
        self.output_names = [node.name for node in self._session.get_outputs()]
        self.takes_positions = POSITIONS_INPUT in self.input_names

    def _load(self, folder: ModelFolder, config: EngineConfig, providers: list[str], cores: int, on_cuda: bool) -> None:
        self.precision = choose_precision(config.precision, set(folder.files), on_cuda)
        self.packed = choose_execution(config.execution, folder, self.precision)
        self.concurrent_runs, self.intra_op_threads = run_layout(config.concurrent_runs, config.intra_op_threads, cores, on_cuda)
        path = model_file(folder, self.precision, self.packed)
        self._session = self._open(path, providers, config, self.intra_op_threads)
        self.providers_in_use = [SHORT_NAMES.get(p, p) for p in self._session.get_providers()]
        wide = config.solo and not on_cuda and self.concurrent_runs > 1 and 0 < self.intra_op_threads < cores
        self._solo = self._open(path, providers, config, cores) if wide else None

    @property
    def file(self) -> Path:
        return model_file(self.folder, self.precision, self.packed)

    @property
    def execution(self) -> str:
        return "packed" if self.packed else "padded"

    @property
    def solo(self) -> bool:
        """Whether a batch that runs alone has a session on every core."""
        return self._solo is not None

    @property
    def device(self) -> str:
        """The provider that runs the model's heavy operators (the first one in use)."""
        return self.providers_in_use[0]

    def info(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "provider": self.device,
            "providers": self.providers_in_use,
            "file": self.file.name,
            "execution": self.execution,
            "concurrent_runs": self.concurrent_runs,
            "intra_op_threads": self.intra_op_threads,
            "solo_session": self.solo,
        }

    @staticmethod
    def _open(path: Path, providers: list[str], config: EngineConfig, intra_op_threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # operators run one after another (ORT_SEQUENTIAL)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not config.spin:  # see `spins`
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
            raise ModelFolderError(f"{path} could not be loaded by ONNX Runtime ({type(exc).__name__}); re-export it") from exc

    def run_sync(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray | None = None,
                 alone: bool = False) -> dict[str, np.ndarray]:
        """Every output of the graph, by name: one row per sequence, or with `positions` one per position."""
        if self.packed:
            feeds = pack(input_ids, attention_mask, self.folder.pad_token_id)
        else:
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        session = self._solo if alone and self._solo is not None else self._session
        inputs = graph_feeds(feeds, self.input_names, positions, rows=len(input_ids))
        return dict(zip(self.output_names, session.run(self.output_names, inputs)))

    async def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray | None = None,
                  alone: bool = False) -> dict[str, np.ndarray]:
        """`alone`: the batcher runs nothing else meanwhile, and has no more work waiting (see Batcher). Such a
        batch takes the solo session where there is one, on every core (docs/decisions/solo-session-and-spinning.md)."""
        return await self._executor.run(self.run_sync, input_ids, attention_mask, positions, alone)

    async def warm_up(self, shapes: list[tuple[int, int]], pad_id: int) -> float:
        """Run each (batch, length) once so first requests do not pay for allocation and kernel setup."""
        started = time.perf_counter()
        # The solo session only ever takes batches of fewer sequences than runs (see Batcher): warming it on
        # larger ones would grow its memory arena for shapes it never runs (roberta-base INT8: 410 MB against 150).
        solo_shapes = [(batch, length) for batch, length in shapes if batch < self.concurrent_runs] if self.solo else []
        for (batch, length), alone in [(shape, False) for shape in shapes] + [(shape, True) for shape in solo_shapes]:
            ids = np.full((batch, length), pad_id, dtype=np.int64)
            await self.run(ids, np.ones_like(ids), alone=alone)
        return time.perf_counter() - started

    async def measure_packed_costs(self, pad_id: int, max_batch_tokens: int, repeats: int = 3) -> tuple[float, float]:
        """For a packed graph: (a run's fixed cost in tokens, the row length at which a padded slot's attention
        costs one real token's work).

        Three shapes, medians of `repeats`: one short row (the fixed cost), a full batch, and
        the same batch with one full row and the rest short (same attention, fewer tokens).
        Full batches alone would put attention's cost on
        the tokens.
        """
        width = min(256, self.folder.max_seq_len)
        rows, short = 4, min(16, width)
        cases = {"small": (1, short, [short]), "full": (rows, width, [width] * rows),
                 "sparse": (rows, width, [width] + [short] * (rows - 1))}
        batches = {
            name: (np.full((batch, length), pad_id, dtype=np.int64),
                   (np.arange(length)[None, :] < np.array(lengths)[:, None]).astype(np.int64))
            for name, (batch, length, lengths) in cases.items()
        }
        median = await median_seconds(self, batches, repeats)
        return packed_costs(median, rows=rows, width=width, short=short, cap=max_batch_tokens)

    async def run_costs(self, pad_id: int, max_batch_tokens: int) -> RunCosts:
        """A padding-free graph's costs are measured (measure_packed_costs); a padded graph's overhead is the
        figure measured once for ONNX Runtime (see CPU_RUN_OVERHEAD_TOKENS)."""
        if self.packed:
            overhead, attention = await self.measure_packed_costs(pad_id, max_batch_tokens)
            return RunCosts(overhead, attention)
        return RunCosts(GPU_RUN_OVERHEAD_TOKENS if self.device == "cuda" else CPU_RUN_OVERHEAD_TOKENS)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


# What a padded run costs beyond its tokens, in tokens of work, as the batcher weighs it against padding: on a CPU,
# a line through a small run and a large one of roberta-base (docs/decisions/run-overhead.md); on a GPU, where
# a run costs about the same whatever its size, more than any padding, so that batches fill to the token budget.
CPU_RUN_OVERHEAD_TOKENS = 27.0
GPU_RUN_OVERHEAD_TOKENS = 1e9


ATTENTION_FREE = 1e9  # attention_tokens when attention did not show in the timings


def packed_costs(seconds: dict[str, float], *, rows: int, width: int, short: int, cap: float) -> tuple[float, float]:
    """Fit t = overhead + per_token x real tokens + per_slot x rows x width^2 to measure_packed_costs' timings.

    Returns (overhead / per_token, per_token / per_slot). The second is about 980 for
    roberta-base in fp32 on a CPU and about 45-100 for the 256-wide embedded model in INT8,
    whose projections INT8 makes cheap and whose attention stays fp32.
    """
    real_full, real_sparse = rows * width, width + (rows - 1) * short
    per_token = (seconds["full"] - seconds["sparse"]) / (real_full - real_sparse)
    if per_token <= 0:  # noise, or a GPU where the batch did not cost more: runs are all overhead
        return float(cap), ATTENTION_FREE
    overhead = max(0.0, seconds["small"] - per_token * short)
    per_slot = (seconds["sparse"] - overhead - per_token * real_sparse) / (rows * width * width)
    attention = ATTENTION_FREE if per_slot <= 0 else min(ATTENTION_FREE, per_token / per_slot)
    return float(min(cap, overhead / per_token)), float(attention)
