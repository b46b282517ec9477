"""One OpenVINO compiled model per model, on the CPU, run from its own threads.

OpenVINO reads the export's model.onnx itself, and runs it in fp32 or, on a CPU that computes in bf16 (Intel AMX,
AVX-512 BF16), in bf16 on those units; a calibrated INT8 export (model.openvino-int8.xml) runs in INT8. The model
is compiled with one stream per concurrent run, each stream a share of the cores, with as many infer requests, made
at start-up; the batcher keeps `concurrent_runs` batches in flight, as it does for ONNX Runtime's runs side by side
(docs/decisions/openvino-on-the-cpu.md).

openvino is an optional install (the `openvino` extra): this module imports it only when a model is loaded on it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import time
from queue import SimpleQueue

import numpy as np

from app.engine.engine import EngineConfig, RunCosts, graph_feeds, measured_overhead
from app.engine.threads import ThreadPool, usable_cores
from app.serving.model_folder import ModelFolder, ModelFolderError
from app.tasks.specs import MASK_POSITIONS

log = logging.getLogger("app.engine.openvino_runtime")

# OpenVINO's INFERENCE_PRECISION_HINT for each precision served. The INT8 model's operators that NNCF left
# unquantized (softmax, layer norms) run at the hint: f32, so that INT8 adds no second rounding.
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
SHAPES_KEPT = 100


def installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@functools.cache
def _core():
    import openvino

    return openvino.Core()


def bf16_supported() -> bool:
    """The CPU computes in bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES has BF16: AMX or AVX-512 BF16)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def serves(folder: ModelFolder, config: EngineConfig) -> bool:
    """Whether OpenVINO can serve what the settings ask of this folder (else `auto` keeps ONNX Runtime)."""
    if config.execution == "packed" or config.precision == "fp16":
        return False
    return config.precision != "int8" or "int8" in folder.openvino_files


def choose_precision(requested: str, folder: ModelFolder, bf16: bool) -> str:
    """auto: the calibrated INT8 where the folder has it, else bf16 where the CPU computes in it, else fp32."""
    if requested == "auto":
        if "int8" in folder.openvino_files:
            return "int8"
        return "bf16" if bf16 else "fp32"
    if requested == "fp16":
        raise ModelFolderError("fp16 runs on ONNX Runtime's CUDA provider; on OpenVINO choose fp32, bf16, int8 or auto")
    if requested == "bf16" and not bf16:
        raise ModelFolderError("this CPU does not compute in bf16 (no AMX or AVX-512 BF16); set ROBERTA_PRECISION=auto or fp32")
    if requested == "int8" and "int8" not in folder.openvino_files:
        raise ModelFolderError(
            f"precision int8 on OpenVINO needs {folder.path.name}/model.openvino-int8.xml; re-export with "
            "--openvino-int8 CALIBRATION.tsv, or set ROBERTA_BACKEND=onnxruntime for ONNX Runtime's dynamic INT8"
        )
    return requested


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null meanwhile: the start-up failure is then told in the service's one line. Models
    load one after another before the service answers anything, so nothing else writes there meanwhile."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class OpenVinoEngine:
    backend = "openvino"
    device = "cpu"
    execution = "padded"

    def __init__(self, folder: ModelFolder, config: EngineConfig, name: str | None = None) -> None:
        self.folder = folder
        self.name = name or folder.path.name
        if config.execution == "packed":
            raise ModelFolderError("the padding-free graph runs on ONNX Runtime; set ROBERTA_EXECUTION=auto on OpenVINO")
        cores = config.cores or usable_cores()
        self.precision = choose_precision(config.precision, folder, bf16_supported())
        self.file = folder.openvino_files["int8"] if self.precision == "int8" else folder.files["fp32"]
        # One stream per run, each with its share of the cores (see the module's docstring); as on ONNX Runtime,
        # naming the threads per run without the runs keeps one run.
        self.concurrent_runs = config.concurrent_runs or (1 if config.intra_op_threads else cores)
        self.threads = config.intra_op_threads or max(1, cores // self.concurrent_runs)
        properties = {
            "INFERENCE_PRECISION_HINT": HINTS[self.precision],
            # Never quantize activations at run time: a scale taken from the batch would tie an answer to its
            # batchmates (docs/decisions/precision-and-batchmates.md).
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
            # OpenVINO keeps what it prepared for each input shape it has run; the batcher makes hundreds of shapes
            # (rows x length), and with the default capacity the process grew with every new one; this one levels
            # off at no measured cost in speed (docs/decisions/openvino-on-the-cpu.md).
            "CPU_RUNTIME_CACHE_CAPACITY": str(SHAPES_KEPT),
            "NUM_STREAMS": str(self.concurrent_runs),
            "INFERENCE_NUM_THREADS": str(self.threads * self.concurrent_runs),
        }
        self._executor = ThreadPool(self.concurrent_runs, f"openvino-{self.name}", idle=config.idle)
        try:
            with _native_stderr_silenced():  # a file it cannot read makes OpenVINO's ONNX reader log lines of its own
                model = _core().read_model(str(self.file))
            # The graph's own names: a compiled port also carries the names of the operators fused into it.
            self.input_names = [port.get_any_name() for port in model.inputs]
            self.output_names = [port.get_any_name() for port in model.outputs]
            self._compiled = _core().compile_model(model, "CPU", properties)
        except Exception as exc:  # OpenVINO raises its own untyped errors for unreadable models
            self._executor.shutdown(wait=False)
            raise ModelFolderError(f"{self.file} could not be loaded by OpenVINO ({type(exc).__name__}); re-export it") from exc
        self.takes_positions = MASK_POSITIONS in self.input_names
        # One infer request per concurrent run, made here on one thread: the batcher never has more runs in flight.
        self._requests: SimpleQueue = SimpleQueue()
        for _ in range(self.concurrent_runs):
            self._requests.put(self._compiled.create_infer_request())
        log.info(
            "%s: %s, OpenVINO %s on the CPU (%s), %d run(s) at once on %d thread(s) each",
            self.name, folder.task, self.precision, self.file.name, self.concurrent_runs, self.threads,
        )

    def info(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "provider": self.device,
            "providers": [self.device],
            "file": self.file.name,
            "execution": self.execution,
            "concurrent_runs": self.concurrent_runs,
            "intra_op_threads": self.threads,
            "solo_session": False,
        }

    def run_sync(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray | None = None,
                 alone: bool = False) -> dict[str, np.ndarray]:
        request = self._requests.get()
        try:
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
            request.infer(graph_feeds(feeds, self.input_names, positions, rows=len(input_ids)))
            # The request's output tensors are reused by its next run: the rows handed back are copies.
            return {name: np.array(request.get_output_tensor(index).data) for index, name in enumerate(self.output_names)}
        finally:
            self._requests.put(request)

    async def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray | None = None,
                  alone: bool = False) -> dict[str, np.ndarray]:
        return await self._executor.run(self.run_sync, input_ids, attention_mask, positions, alone)

    async def warm_up(self, shapes: list[tuple[int, int]], pad_id: int) -> float:
        """Every shape once, one run at a time: OpenVINO prepares a new shape on first use."""
        started = time.perf_counter()
        for batch, length in shapes:
            ids = np.full((batch, length), pad_id, dtype=np.int64)
            await self.run(ids, np.ones_like(ids))
        return time.perf_counter() - started

    async def run_costs(self, pad_id: int, max_batch_tokens: int) -> RunCosts:
        return RunCosts(await measured_overhead(self, pad_id, self.folder.max_seq_len, max_batch_tokens))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
