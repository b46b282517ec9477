"""Fill-mask, token classification and question answering: the service against a naive pipeline server and ONNX Runtime alone.

    python -m bench.tasks                 # roberta-base shape (random weights, real tokenizer), c=1/8/32, 12 s a level
    python -m bench.tasks --quick         # tiny-encoder checkpoints, 3 s a level: a smoke run of the same report

Per task, in one run, every level taken in slices in turn (bench.__main__'s measure_interleaved):
S the service fp32, S8 the service INT8 (both on ONNX Runtime, dynamic batching), V the service on OpenVINO bf16
(where OpenVINO is installed and the CPU computes in bf16), D FastAPI + transformers.pipeline one request at a
time, and the limits: ONNX Runtime alone on batches of 32 in file order (E) and sorted by length (E*, fp32 and
INT8), OpenVINO bf16 alone on the sorted batches, and one sequence at a time. Workloads: SST-2 dev sentences,
for fill-mask with the middle word masked (one mask each, top_k 5 as both servers default to);
for token classification as they are (no aggregation, both servers' default); for question answering 120-word
passages of the public-domain books with one of four questions (the pipeline's defaults).
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
from bench.__main__ import REPO, System, export, measure_interleaved, openvino_installed, sst2_dev, write_report
from bench.limits import LimitSlices
from bench.load import closed_loop, encode_requests

WORK = REPO / "build" / "bench"
ROUTES = {"fill-mask": "/fill-mask", "token-classification": "/token-classification",
          "question-answering": "/question-answering"}
NAMES = {"fill-mask": "roberta-base-mlm", "token-classification": "roberta-base-ner", "question-answering": "roberta-base-qa"}
BOOKS = REPO.parent / "shared" / "data" / "books" / "books_clean.txt"
QUESTIONS = ("Who spoke first?", "Where did they go?", "What did she want?", "When did it happen?")


def masked_sentences() -> list[str]:
    """SST-2 dev with the middle word of each sentence masked: the fill-mask workload."""
    texts = []
    for sentence in sst2_dev()[0]:
        words = sentence.split()
        words[len(words) // 2] = "<mask>"
        texts.append(" ".join(words))
    return texts

def questions_and_contexts(count: int = 400, words: int = 120) -> list[dict]:
    """The question-answering workload: passages of `words` words from the public-domain books (about SQuAD's
    length), each with one of a few questions."""
    text = BOOKS.read_text(encoding="utf-8").split()
    return [{"question": QUESTIONS[i % len(QUESTIONS)], "context": " ".join(text[i * words: (i + 1) * words])}
            for i in range(count)]


def workload(task: str) -> tuple[list[dict], list[str]]:
    """(request bodies, the texts the limits batch: for QA each question and its context as one text, about the
    tokens of the pair)."""
    if task == "question-answering":
        pairs = questions_and_contexts()
        return [{"inputs": pair} for pair in pairs], [f"{pair['question']} {pair['context']}" for pair in pairs]
    texts = masked_sentences() if task == "fill-mask" else sst2_dev()[0]
    return [{"inputs": text} for text in texts], texts


def checkpoint(task: str, quick: bool) -> Path:
    name = NAMES[task] + ("-tiny-encoder" if quick else "")
    folder = WORK / name
    if not (folder / "config.json").is_file():
        flags = ["--tiny-encoder"] if quick else []
        subprocess.run([sys.executable, "scripts/random_roberta.py", "--task", task, "--output", str(folder), *flags],
                       cwd=REPO, check=True)
    return folder


def measure(task: str, source: Path, levels: list[int], seconds: float, rounds: int) -> dict:
    folder = export(source, WORK)
    bodies, texts = workload(task)
    requests = encode_requests("127.0.0.1", ROUTES[task], bodies)
    wrk_bodies = wrk.bodies_file(bodies) if wrk.available() else None
    with contextlib.ExitStack() as stack:
        systems = []
        names = ("S", "S8", *(("V",) if bf16_cpu() else ()), "D")
        for name in names:
            port = servers.free_port()
            log = WORK / "logs" / f"tasks-{task}-{name}.log"
            if name == "D":
                server, is_service = servers.naive(source, port, log, task), False
            else:
                backend, precision = {"S": ("onnxruntime", "fp32"), "S8": ("onnxruntime", "int8"), "V": ("openvino", "bf16")}[name]
                server = servers.service_of(name, {"model": folder}, port, log, backend=backend, precision=precision)
                is_service = True
            stack.enter_context(server)
            system = System(name, server, itertools.cycle(requests), is_service, wrk_bodies, ROUTES[task])
            asyncio.run(closed_loop("127.0.0.1", port, system.source, 1, min(2.0, seconds)))  # warm the path
            server.pause()
            systems.append(system)
        by_system, limits = measure_interleaved(
            systems, levels, seconds, None, rounds, lambda: LimitSlices(folder, "model.onnx", texts),
            {"int8": lambda: LimitSlices(folder, "model.int8.onnx", texts),
             **({"openvino_bf16": lambda: LimitSlices(folder, "model.onnx", texts, engine="openvino", hint="bf16")}
                if "V" in names else {})},
        )
        for system in systems:
            by_system[system.name]["memory_end"] = system.server.memory()
    return {"systems": by_system, "limits_by_level": limits}


def bf16_cpu() -> bool:
    if not openvino_installed():
        return False
    from app.engine.openvino_runtime import bf16_supported

    return bf16_supported()


def markdown(report: dict) -> str:
    lines = [f"# Every task ({report['model']}, {report['when']})", "",
             "| task | concurrency | S fp32 req/s | S8 INT8 req/s | D pipeline req/s | E* fp32 seq/s | E* INT8 seq/s | "
             "S / E* | S8 / INT8 E* | S / D | S p50 ms | D p50 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, entry in report["tasks"].items():
        for index, level in enumerate(entry["systems"]["S"]["levels"]):
            s8, d = entry["systems"]["S8"]["levels"][index], entry["systems"]["D"]["levels"][index]
            limit = entry["limits_by_level"][level["level"]] if level["level"] in entry["limits_by_level"] \
                else entry["limits_by_level"][str(level["level"])]
            e, e8 = limit["E_star_seq_per_s"], limit["int8_E_star_seq_per_s"]
            lines.append(
                f"| {task} | {level['level']} | {level['requests_per_s']:.1f} | {s8['requests_per_s']:.1f} | "
                f"{d['requests_per_s']:.1f} | {e:.1f} | {e8:.1f} | {level['requests_per_s'] / e:.2f} | "
                f"{s8['requests_per_s'] / e8:.2f} | {level['requests_per_s'] / d['requests_per_s']:.2f} | "
                f"{level['p50_ms']:.1f} | {d['p50_ms']:.1f} |")
    openvino = [(task, entry) for task, entry in report["tasks"].items() if "V" in entry["systems"]]
    if openvino:
        lines += ["", "| task | concurrency | V OpenVINO bf16 req/s | OpenVINO bf16 E* seq/s | V / its E* | V / S |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for task, entry in openvino:
            for index, level in enumerate(entry["systems"]["V"]["levels"]):
                s = entry["systems"]["S"]["levels"][index]
                limit = entry["limits_by_level"].get(level["level"], entry["limits_by_level"].get(str(level["level"]), {}))
                e = limit.get("openvino_bf16_E_star_seq_per_s")
                lines.append(f"| {task} | {level['level']} | {level['requests_per_s']:.1f} | {e:.1f} | "
                             f"{level['requests_per_s'] / e:.2f} | {level['requests_per_s'] / s['requests_per_s']:.2f} |")
    return "\n".join(lines) + "\n"


def report_header(quick: bool, seconds: float) -> dict:
    """What a report of this kind says about its run (bench.embeddings' too)."""
    import platform
    import time

    return {"model": "tiny encoder, roberta-base vocabulary" if quick else "roberta-base shape, random weights",
            "when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, Python {platform.python_version()}",
            "seconds_per_level": seconds, "generator": "wrk" if wrk.available() else "python"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-encoder checkpoints, 3 s per level")
    parser.add_argument("--tasks", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=None, help="per level (default 12, quick 3)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", type=Path, default=None, help="default: build/bench (quick: build/bench-quick); a report to keep goes to bench/results/<machine kind>")
    args = parser.parse_args()
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    seconds = args.seconds or (3.0 if args.quick else 12.0)
    output = args.output or (REPO / ("build/bench-quick" if args.quick else "build/bench"))
    report = {**report_header(args.quick, seconds), "tasks": {}}
    for task in args.tasks:
        print(f"{task}", flush=True)
        report["tasks"][task] = measure(task, checkpoint(task, args.quick), args.concurrency, seconds, args.rounds)
    write_report(output, "tasks", report, markdown(report))


if __name__ == "__main__":
    main()
