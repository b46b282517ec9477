"""Embeddings and reranking: the service against infinity and sentence-transformers behind FastAPI.

    python -m bench.embeddings            # roberta-base shape (random weights, the real tokenizer), 12 s a level
    python -m bench.embeddings --quick    # tiny encoder under roberta-base's vocabulary, 3 s a level: a smoke run

Per workload, in one run, every level taken in slices in turn (bench.__main__'s measure_interleaved):
S the service fp32 and S8 INT8 (ONNX Runtime, dynamic batching), V the service on OpenVINO bf16 (where OpenVINO is
installed and the CPU computes in bf16: what `auto` serves there), F infinity-emb 0.0.78 on its optimum engine
with the same weights in fp32 (its own venv, bench/systems/infinity_shim.py), D sentence-transformers called one
request at a time behind FastAPI (bench/systems/naive_server.py). S and F get the same OpenAI-shaped bodies.

- Embeddings: a sentence-transformers folder (mean pooling, Normalize), one SST-2 dev sentence per request,
  c=1/32/64. S at /v1/embeddings; F at its /embeddings, on an ONNX file of the encoder's token states (infinity
  pools and normalizes itself: mean, as the folder); D SentenceTransformer.encode. The E* limit is ONNX Runtime
  alone on the export's graph (pooling included), sorted batches of 32.
- Rerank: a cross-encoder (a classifier of one label), one dev sentence as the query against the next 32 per
  request, c=1/4 (each request is 32 sequences: c=4 keeps 128 in flight), its levels four times as long (a request
  takes seconds on roberta-base in fp32). S at Cohere's /v1/rerank; F at its /rerank on the export's model.onnx; D
  CrossEncoder.predict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import subprocess
import sys
from pathlib import Path

from bench import servers, wrk
from bench.__main__ import REPO, System, export, measure_interleaved, sst2_dev, write_report
from bench.tasks import bf16_cpu, report_header
from bench.limits import LimitSlices
from bench.load import closed_loop, encode_requests

WORK = REPO / "build" / "bench"
DOCUMENTS = 32  # per rerank request


def checkpoint(task: str, quick: bool) -> Path:
    name = {"feature-extraction": "roberta-base-embed", "text-ranking": "roberta-base-rerank"}[task]
    folder = WORK / (name + ("-tiny-encoder" if quick else ""))
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, "scripts/random_roberta.py", "--task", task, "--output", str(folder),
                        *(["--tiny-encoder"] if quick else [])], cwd=REPO, check=True)
    return folder


def token_states_export(source: Path) -> Path:
    """What infinity's embedder runs: optimum's export of the bare encoder (last_hidden_state), fp32."""
    folder = WORK / f"{source.name}-token-states"
    if not (folder / "model.onnx").is_file():
        from optimum.exporters.onnx import main_export

        main_export(str(source), output=str(folder), task="feature-extraction", library_name="transformers",
                    device="cpu", do_validation=False, local_files_only=True)
    return folder


def rerank_bodies(texts: list[str]) -> list[tuple[str, list[str]]]:
    return [(texts[i], texts[i + 1: i + 1 + DOCUMENTS]) for i in range(0, len(texts) - DOCUMENTS, 7)]


def measure(task: str, quick: bool, levels: list[int], seconds: float, rounds: int, names: list[str]) -> dict:
    texts = sst2_dev()[0]
    source = checkpoint(task, quick)
    folder = export(source, WORK)
    if task == "feature-extraction":
        service = [{"model": "model", "input": [text], "encoding_format": "float"} for text in texts]
        infinity = [{"model": "model", "input": [text]} for text in texts]
        naive = [{"inputs": text} for text in texts]
        routes = {"S": "/v1/embeddings", "F": "/embeddings", "D": "/embed"}
        infinity_folder, infinity_flags = token_states_export(source), ["--pooling-method", "mean"]
        limits = lambda: LimitSlices(folder, "model.onnx", texts)  # noqa: E731
    else:
        pairs = rerank_bodies(texts)
        service = [{"model": "model", "query": query, "documents": documents} for query, documents in pairs]
        infinity = service
        naive = [{"query": query, "texts": documents} for query, documents in pairs]
        routes = {"S": "/v1/rerank", "F": "/rerank", "D": "/rerank"}
        infinity_folder, infinity_flags = folder, []
        limits = lambda: None  # noqa: E731  (no E* of pairs: the limit slices batch single texts)
    bodies = {"S": service, "S8": service, "V": service, "F": infinity, "D": naive}
    with contextlib.ExitStack() as stack:
        systems = []
        for name in [name for name in ("S", "S8", "V", "F", "D") if name in names and (name != "V" or bf16_cpu())]:
            port = servers.free_port()
            log = WORK / "logs" / f"embeddings-{task}-{name}.log"
            if name == "D":
                server, is_service = servers.naive(source, port, log, task), False
            elif name == "F":
                server, is_service = servers.infinity(infinity_folder, port, log, "--served-model-name", "model",
                                                      *infinity_flags), False
            else:
                backend, precision = {"S": ("onnxruntime", "fp32"), "S8": ("onnxruntime", "int8"), "V": ("openvino", "bf16")}[name]
                server = servers.service_of(name, {"model": folder}, port, log, backend=backend, precision=precision)
                is_service = True
            route = routes.get(name, routes["S"])
            requests = encode_requests("127.0.0.1", route, bodies[name])
            stack.enter_context(server)
            system = System(name, server, itertools.cycle(requests), is_service,
                            wrk.bodies_file(bodies[name]) if wrk.available() else None, route)
            asyncio.run(closed_loop("127.0.0.1", port, system.source, 1, min(2.0, seconds)))  # warm the path
            server.pause()
            systems.append(system)
        more = {}
        if task == "feature-extraction":
            more["int8"] = lambda: LimitSlices(folder, "model.int8.onnx", texts)
            if any(system.name == "V" for system in systems):
                more["openvino_bf16"] = lambda: LimitSlices(folder, "model.onnx", texts, engine="openvino", hint="bf16")
        by_system, limits_by_level = measure_interleaved(systems, levels, seconds, None, rounds, limits, more)
        for system in systems:
            by_system[system.name]["memory_end"] = system.server.memory()
    return {"systems": by_system, "limits_by_level": limits_by_level}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "–"


def markdown(report: dict) -> str:
    lines = [f"# Embeddings and reranking ({report['model']}, {report['when']})", "",
             "| workload | concurrency | S fp32 req/s | S8 INT8 req/s | F infinity req/s | D sentence-transformers req/s | "
             "S / F | S8 / F | S / D | S p50 ms | F p50 ms | S / E* |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, entry in report["workloads"].items():
        systems = entry["systems"]
        for index, level in enumerate(systems["S"]["levels"]):
            s8, f, d = (systems[name]["levels"][index] if name in systems else {"requests_per_s": 0.0, "p50_ms": 0.0}
                        for name in ("S8", "F", "D"))
            limit = entry["limits_by_level"].get(level["level"], entry["limits_by_level"].get(str(level["level"])))
            e_star = ratio(level['requests_per_s'], limit['E_star_seq_per_s']) if limit else "–"
            lines.append(
                f"| {task} | {level['level']} | {level['requests_per_s']:.1f} | {s8['requests_per_s']:.1f} | "
                f"{f['requests_per_s']:.1f} | {d['requests_per_s']:.1f} | {ratio(level['requests_per_s'], f['requests_per_s'])} | "
                f"{ratio(s8['requests_per_s'], f['requests_per_s'])} | {ratio(level['requests_per_s'], d['requests_per_s'])} | "
                f"{level['p50_ms']:.1f} | {f['p50_ms']:.1f} | {e_star} |")
    with_v = [(task, entry) for task, entry in report["workloads"].items() if {"V", "F"} <= set(entry["systems"])]
    if with_v:
        lines += ["", "| workload | concurrency | V OpenVINO bf16 req/s | V / F | V / S | V / its E* |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for task, entry in with_v:
            for index, level in enumerate(entry["systems"]["V"]["levels"]):
                f, s_ = entry["systems"]["F"]["levels"][index], entry["systems"]["S"]["levels"][index]
                limit = entry["limits_by_level"].get(level["level"], entry["limits_by_level"].get(str(level["level"])))
                e = ratio(level['requests_per_s'], limit['openvino_bf16_E_star_seq_per_s']) if limit else "–"
                lines.append(f"| {task} | {level['level']} | {level['requests_per_s']:.1f} | "
                             f"{ratio(level['requests_per_s'], f['requests_per_s'])} | "
                             f"{ratio(level['requests_per_s'], s_['requests_per_s'])} | {e} |")
    lines += ["", f"Rerank requests are one query against {DOCUMENTS} documents (32 sequences each)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.embeddings", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-encoder checkpoints, 3 s per level")
    parser.add_argument("--workloads", nargs="+", default=["feature-extraction", "text-ranking"],
                        choices=["feature-extraction", "text-ranking"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=None,
                        help="default: 1 32 64 for embeddings, 1 4 for rerank")
    parser.add_argument("--systems", nargs="+", default=["S", "S8", "V", "F", "D"], choices=["S", "S8", "V", "F", "D"],
                        help="S is always run (the tables are read against it); V only where the CPU computes in bf16")
    parser.add_argument("--seconds", type=float, default=None, help="per level (default 12, quick 3)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", type=Path, default=None, help="default: build/bench (quick: build/bench-quick)")
    args = parser.parse_args()
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    seconds = args.seconds or (3.0 if args.quick else 12.0)
    output = args.output or (REPO / ("build/bench-quick" if args.quick else "build/bench"))
    report = {**report_header(args.quick, seconds), "workloads": {}}
    for task in args.workloads:
        levels = args.concurrency or ([1, 32, 64] if task == "feature-extraction" else [1, 4])
        print(task, flush=True)
        report["workloads"][task] = measure(task, args.quick, levels, seconds * (1 if task == "feature-extraction" else 4),
                                            args.rounds, ["S", *args.systems])
    write_report(output, "embeddings", report, markdown(report))


if __name__ == "__main__":
    main()
