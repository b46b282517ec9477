"""How the service lays out its work: batches side by side on the cores (run_layout), and how many processes serve
the port: the operator's number, or, left at 0 (auto), one per run on a CPU when every model is narrower than
roberta-base.

One process sends every request through one event loop. On a narrow model that loop's share of a request is
large (the embedded INT8 model: 0.19 ms of loop and tokenizer against 0.6 ms in ONNX Runtime), and while it works
through a batch's answers and the clients' next requests, the model's runs wait for it: the embedded INT8
classifier left two cores 16-21% idle at c=32-64 and answered 0.58-0.63 of what ONNX Runtime alone does (E*), where
one process per core answered 0.72-0.78 with the cores busy (bench/results/NOTES.md). On roberta-base the runs
dominate and one process keeps the cores busy (two processes measured 0.90x); on a GPU each process would hold its
own copy of the models on the device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata

from app.model_folder import WIDE_HIDDEN_SIZE, ModelFolderError, is_wide, load_model_folder
from app.model_sources import model_sources
from app.settings import Settings
from app.threads import usable_cores

log = logging.getLogger("app.layout")


def auto_processes(widths: Sequence[int | None], runs: int, on_gpu: bool) -> int:
    """One process per run when there are several runs on a CPU and every model is narrow; else one process."""
    if on_gpu or runs < 2 or not widths or any(is_wide(width) for width in widths):
        return 1
    return runs


def run_layout(concurrent_runs: int, intra_op_threads: int, cores: int, on_cuda: bool) -> tuple[int, int]:
    """(batches that run at once, ONNX Runtime threads inside each run; 0: ONNX Runtime's default).

    On a CPU, unless told otherwise: one single-threaded run per core. One run on every core's
    thread keeps them in step: each operator ends when the slowest thread ends, and a core the
    event loop or the tokenizer takes stalls the whole run while the partner thread spins. Runs
    side by side share nothing but the weights. ONNX Runtime alone, batches of 8 x 26 tokens, two
    cores: roberta-base 1.17x (fp32) and 1.18x (INT8), the embedded model 1.66x (INT8) the
    throughput of one run on two threads (bench/results/NOTES.md). Naming the threads per run
    (ROBERTA_INTRA_OP_THREADS) without the runs keeps one run. A GPU runs one batch at a time.
    """
    if on_cuda:
        return concurrent_runs or 1, intra_op_threads
    runs = concurrent_runs or (1 if intra_op_threads else cores)
    return runs, intra_op_threads or max(1, cores // runs)


def gpu_build() -> bool:
    """Whether the onnxruntime installed is the CUDA build (decided without importing it: the supervisor loads no
    model runtime)."""
    try:
        metadata.distribution("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def with_processes(settings: Settings) -> Settings:
    """`settings` with `processes` decided; the runs the operator named, if any, shared out among the processes."""
    if settings.processes:
        return settings
    if settings.port == 0:  # each process binds the port itself, and 0 would give each its own
        return settings.model_copy(update={"processes": 1})
    try:
        widths = [load_model_folder(source.path, source.default_for).hidden_size for source in model_sources(settings)]
    except ModelFolderError:  # one process loads the models, and says what is wrong as it always has
        return settings.model_copy(update={"processes": 1})
    runs, _ = run_layout(settings.concurrent_runs, settings.intra_op_threads, usable_cores(), on_cuda=False)
    count = auto_processes(widths, runs, on_gpu="cuda" in settings.providers and gpu_build())
    if count > 1:
        log.info("%d processes, one per run: every model is narrower than %d (ROBERTA_PROCESSES=1 for one process)",
                 count, WIDE_HIDDEN_SIZE)
    return settings.model_copy(update={"processes": count, "concurrent_runs": settings.concurrent_runs // count})
