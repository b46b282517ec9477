"""`python -m bench.gpu`: what a GPU machine really runs, and how fast: the measuring half of scripts/gpu-check.sh.

    python -m bench.gpu --folder EXPORT [--texts FILE] [--seconds 15] [--concurrency 1 32 128] [--output DIR]

On an export made with --fp16 it reports:
- the onnxruntime build and its providers, and the provider a CUDA session really got (it falls back to the CPU
  without raising);
- FP16 on CUDA against fp32 on the CPU on the texts: largest logit difference and argmax agreement;
- ONNX Runtime alone on CUDA, length-sorted batches of 32 and 128;
- the service (`python -m app`, CUDA first) at each concurrency, closed loop, beside the limit of the same minutes;
- packed against padded, when the folder has the packed graph of the GPU file (`export --packed`): ONNX Runtime
  alone on random mixed-length batches of 32 and 128 (bench.packed.alone), and the service at the two highest
  concurrencies with ROBERTA_EXECUTION=packed and padded, on SST-2 and on the mixed-length texts.
--allow-cpu runs it all where there is no GPU (for the test here), saying so in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import servers
from bench.load import closed_loop, encode_requests

REPO = Path(__file__).resolve().parents[1]
SST2_DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"
FALLBACK_TEXTS = [
    "a gripping, beautifully acted film", "tedious and far too long", "fine",
    "the plot never quite comes together, but the cast is wonderful and the music is a joy from start to finish",
]


def read_texts(path: Path | None) -> list[str]:
    """One text per line, or SST-2 dev (sentence<TAB>label) when it is beside the checkout."""
    path = path or (SST2_DEV if SST2_DEV.is_file() else None)
    if path is None:
        return FALLBACK_TEXTS * 64
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".tsv":
        lines = [line.rsplit("\t", 1)[0].strip() for line in lines[1:]]
    return lines


def machine() -> dict:
    import onnxruntime as ort

    smi = shutil.which("nvidia-smi")
    gpu = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() if smi else None
    return {"python": platform.python_version(), "onnxruntime": ort.__version__, "device": ort.get_device(),
            "available_providers": ort.get_available_providers(), "gpu": gpu or None}


def session(path: Path, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def encode(folder: Path, texts: list[str]) -> tuple[list[np.ndarray], int]:
    from app.serving.model_folder import load_model_folder
    from app.engine.tokenize import TextEncoder

    model = load_model_folder(folder)
    encoder = TextEncoder(model.tokenizer_file, model.max_seq_len, model.tokenizer_config)
    return [item.ids for item in encoder.encode(texts)], encoder.pad_id


def batches(ids: list[np.ndarray], size: int, pad_id: int) -> list[dict]:
    from app.engine.batcher import right_pad

    ordered = sorted(ids, key=len)
    feeds = []
    for start in range(0, len(ordered), size):
        input_ids, mask = right_pad(ordered[start : start + size], pad_id)
        feeds.append({"input_ids": input_ids, "attention_mask": mask})
    return feeds


def parity(folder: Path, ids: list[np.ndarray], pad_id: int, gpu_file: str, gpu_providers: list[str]) -> dict:
    """The GPU file on the GPU against fp32 on the CPU, batch by batch."""
    reference = session(folder / "model.onnx", ["CPUExecutionProvider"])
    candidate = session(folder / gpu_file, gpu_providers)
    worst, agree, total = 0.0, 0, 0
    for feed in batches(ids, 32, pad_id):
        want = reference.run(None, feed)[0].astype(np.float32)
        got = candidate.run(None, feed)[0].astype(np.float32)
        worst = max(worst, float(np.abs(want - got).max()))
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        total += len(want)
    return {"file": gpu_file, "provider": candidate.get_providers()[0], "max_abs_logit_diff": worst,
            "argmax_agreement": agree / total, "sequences": total}


def limit(folder: Path, gpu_file: str, providers: list[str], ids: list[np.ndarray], pad_id: int, size: int,
          seconds: float) -> float:
    """Sequences per second of ONNX Runtime alone, length-sorted batches of `size`, for `seconds`."""
    runner = session(folder / gpu_file, providers)
    feeds = itertools.cycle(batches(ids, size, pad_id))
    for _ in range(3):
        runner.run(None, next(feeds))  # warm up: CUDA graphs of each shape, cuDNN's choices
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        feed = next(feeds)
        runner.run(None, feed)
        done += len(feed["input_ids"])
    return done / (time.perf_counter() - began)


def service_levels(folder: Path, texts: list[str], levels: list[int], seconds: float, providers: str,
                   execution: str = "padded") -> dict:
    port = servers.free_port()
    log = REPO / "build" / "gpu-check" / f"service-{execution}.log"
    requests = itertools.cycle(encode_requests("127.0.0.1", "/classify", [{"inputs": text} for text in texts]))
    out = {}
    with servers.service("gpu", folder, port, log, providers=providers, max_batch_size=max(levels),
                         execution=execution) as server:
        import httpx

        info = httpx.get(f"http://127.0.0.1:{port}/models").json()["models"][0]
        out["model"] = {key: info.get(key) for key in ("precision", "provider")}
        asyncio.run(closed_loop("127.0.0.1", port, requests, 1, 2.0))  # warm the path
        for level in levels:
            result = asyncio.run(closed_loop("127.0.0.1", port, requests, level, seconds))
            out[f"c={level}"] = result.summary()
        out["memory"] = server.memory()
    return out


def packed_vs_padded(folder: Path, gpu_file: str, providers: list[str], texts: list[str], levels: list[int],
                     seconds: float, service_providers: str) -> dict | str:
    from app.serving.model_folder import PACKED_FILES, PRECISION_FILES, load_model_folder
    from bench.packed import alone, describe, mixed_texts

    precision = next(name for name, file in PRECISION_FILES.items() if file == gpu_file)
    if not (folder / PACKED_FILES[precision]).is_file():
        print("packed vs padded: not measured, the export has no packed graph (export --packed)", flush=True)
        return "not measured: the export has no packed graph"
    longest = load_model_folder(folder).max_seq_len
    workloads = {"sst2": texts, "mixed": mixed_texts(folder / "tokenizer.json", longest=longest, sentences=texts)}
    out: dict = {"workloads": {name: describe(t, folder / "tokenizer.json") for name, t in workloads.items()},
                 "alone": {}, "service": {}}
    for name, batch_texts in workloads.items():
        out["alone"][name] = {f"batch {size}": alone(folder, precision, batch_texts, batch=size, batches=6,
                                                     providers=tuple(providers)) for size in (32, 128)}
        for execution in ("packed", "padded"):
            out["service"][f"{name} {execution}"] = service_levels(folder, batch_texts, levels, seconds,
                                                                   service_providers, execution)
        for level in levels:
            packed = out["service"][f"{name} packed"][f"c={level}"]["requests_per_s"]
            padded = out["service"][f"{name} padded"][f"c={level}"]["requests_per_s"]
            print(f"service {name} c={level}: packed {packed:.1f}, padded {padded:.1f} req/s ({packed / padded:.2f})", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="an export made with --fp16")
    parser.add_argument("--texts", type=Path, default=None, help="one text per line (default: SST-2 dev if present)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per level and per limit")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--allow-cpu", action="store_true", help="run even if CUDA is not what runs (a test here)")
    parser.add_argument("--output", type=Path, default=REPO / "build" / "gpu-check")
    args = parser.parse_args()
    report: dict = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    print(json.dumps(report["machine"], indent=2), flush=True)
    texts = read_texts(args.texts)
    ids, pad_id = encode(args.folder, texts)
    cuda = "CUDAExecutionProvider" in report["machine"]["available_providers"]
    providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
    gpu_file = "model.fp16.onnx" if (args.folder / "model.fp16.onnx").is_file() else "model.onnx"
    probe = session(args.folder / gpu_file, providers)
    report["provider_in_use"] = probe.get_providers()[0]
    print(f"{gpu_file}: {report['provider_in_use']} runs it", flush=True)
    if report["provider_in_use"] != "CUDAExecutionProvider" and not args.allow_cpu:
        print("FAIL: the CUDA provider is not in use (see available_providers above)")
        return 1
    report["parity"] = parity(args.folder, ids, pad_id, gpu_file, providers)
    print(f"parity: {report['parity']}", flush=True)
    report["onnxruntime_alone"] = {
        f"batch {size}": limit(args.folder, gpu_file, providers, ids, pad_id, size, args.seconds) for size in (32, 128)
    }
    print(f"ONNX Runtime alone, seq/s: {report['onnxruntime_alone']}", flush=True)
    report["service"] = service_levels(args.folder, texts, args.concurrency, args.seconds, "cuda,cpu" if cuda else "cpu")
    best = max(report["onnxruntime_alone"].values())
    for level in args.concurrency:
        entry = report["service"][f"c={level}"]
        print(f"service c={level}: {entry['requests_per_s']:.1f} req/s ({entry['requests_per_s'] / best:.2f} x ONNX Runtime "
              f"alone), p50 {entry['p50_ms']:.1f} ms, p99 {entry['p99_ms']:.1f} ms", flush=True)
    report["packed_vs_padded"] = packed_vs_padded(args.folder, gpu_file, providers, texts, args.concurrency[-2:],
                                                  args.seconds, "cuda,cpu" if cuda else "cpu")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output / 'gpu-check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
