"""Fill-mask, old export against new, in one run: logits at every position vs logits at mask positions only.

    python -m bench.fill_mask              # roberta-base shape (random weights, real tokenizer); ~15 min
    python -m bench.fill_mask --quick      # the embedded roberta-mini-mlm, short levels (a CI smoke test)

The old export is what `python -m export` wrote before format 2: optimum's masked-LM graph,
whose `logits` are `[batch, length, vocab]`. The new one takes `mask_positions` and returns
`[masks, vocab]`. Both folders hold the same checkpoint, tokenizer and manifest, and the same
service serves each as it is. Three measurements:

- memory: on roberta-base's vocabulary and length with a tiny encoder (the head alone), one
  request of 32 texts of ~505 tokens with one mask each (top_k 1), then 64 texts with 8 masks:
  server RSS before, after, and 2 s later, and the request's latency;
- throughput: the roberta-base shape, SST-2 dev sentences with one word masked, closed loop
  at concurrency 1 and 32, the two servers' slices taken in turn (bench.__main__'s method);
- the event loop: worst /healthz latency, polled every 10 ms from another process, while four of the heaviest
  requests the new server accepts (64 long texts x 8 masks x top_k 4 = its 2,048-answer
  ceiling, ~5 MB each) run at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.settings import Settings
from bench import servers
from bench.__main__ import REPO, System, measure_interleaved, sst2_dev, write_report
from bench.load import closed_loop, encode_requests

WORK = REPO / "build" / "bench"
TOKENIZER = REPO.parent / "shared" / "data" / "roberta-base-tokenizer"
EMBEDDED = REPO / "models" / "roberta-mini-mlm"


def legacy_export(new_folder: Path, checkpoint: Path, target: Path) -> Path:
    """A copy of an export folder whose fp32 graph is optimum's, with logits at every position (format 1)."""
    from export.convert import export_fp32

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(new_folder, target)
    for extra in ("model.int8.onnx", "model.fp16.onnx"):
        (target / extra).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        export_fp32(checkpoint, "fill-mask", Path(scratch), None)
        shutil.move(str(Path(scratch) / "model.onnx"), target / "model.onnx")
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest.update(format_version=1, inputs=["input_ids", "attention_mask"], quantization={})
    manifest["files"] = {"fp32": {"path": "model.onnx", "size_bytes": (target / "model.onnx").stat().st_size}}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return target


def exports(checkpoint: Path) -> tuple[Path, Path]:
    """(old, new) export folders of `checkpoint`, fp32, reused when present."""
    from export.build import ExportOptions, export_model

    new = WORK / f"{checkpoint.name}-onnx"
    export_model(ExportOptions(model=str(checkpoint), output=new, reuse=True), log=lambda _: None)
    old = WORK / f"{checkpoint.name}-onnx-old"
    if not (old / "model.onnx").is_file():
        legacy_export(new, checkpoint, old)
    return old, new


def random_checkpoint(name: str, *flags: str) -> Path:
    checkpoint = WORK / name
    if not (checkpoint / "config.json").is_file():
        subprocess.run([sys.executable, "scripts/random_roberta.py", "--task", "fill-mask", "--output", str(checkpoint), *flags],
                       cwd=REPO, check=True)
    return checkpoint


def long_texts(count: int, masks: int, tokens: int = 505) -> list[str]:
    """SST-2 dev sentences joined into texts of about `tokens` roberta tokens, `masks` words masked in each."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(str(TOKENIZER / "vocab.json"), str(TOKENIZER / "merges.txt"))
    sentences = itertools.cycle(sst2_dev()[0])
    texts = []
    for _ in range(count):
        words: list[str] = []
        while len(tokenizer.encode(" ".join(words)).ids) < tokens - 2 - 2 * masks:
            words += next(sentences).split()
        while len(tokenizer.encode(" ".join(words)).ids) > tokens - 2 - masks:
            words.pop()
        step = len(words) // (masks + 1)
        for index in range(1, masks + 1):
            words[index * step] = "<mask>"
        texts.append(" ".join(words))
    return texts


def masked_sentences() -> list[str]:
    """SST-2 dev with the middle word of each sentence masked: the throughput workload."""
    texts = []
    for sentence in sst2_dev()[0]:
        words = sentence.split()
        words[len(words) // 2] = "<mask>"
        texts.append(" ".join(words))
    return texts


def start(name: str, folder: Path, **settings) -> servers.Server:
    port = servers.free_port()
    return servers.service(name, folder, port, WORK / "logs" / f"fill-mask-{name}.log", task="fill-mask",
                           precision="fp32", **settings)


def memory_case(old: Path, new: Path, body_sets: dict[str, dict]) -> dict:
    """Per export and request: status, latency, server RSS before, after and 2 s after (MB)."""
    results = {}
    for label, folder in (("old", old), ("new", new)):
        with start(label, folder) as server:
            url = f"http://127.0.0.1:{server.port}/fill-mask"
            results[label] = {}
            for case, body in body_sets.items():
                before = server.memory()["rss_mb"]
                started = time.perf_counter()
                response = httpx.post(url, json=body, timeout=600)
                seconds = time.perf_counter() - started
                after = server.memory()["rss_mb"]
                time.sleep(2)
                results[label][case] = {
                    "status": response.status_code, "seconds": seconds, "response_mb": len(response.content) / 1e6,
                    "rss_before_mb": before, "rss_after_mb": after, "rss_2s_later_mb": server.memory()["rss_mb"],
                    "peak_rss_mb": server.memory()["peak_rss_mb"],
                }
                print(f"  {label} {case}: {response.status_code} in {seconds:.2f} s, RSS {before:.0f} -> {after:.0f} MB "
                      f"(peak {results[label][case]['peak_rss_mb']:.0f})", flush=True)
    return results


def throughput_case(old: Path, new: Path, seconds: float, rounds: int, levels: list[int]) -> dict:
    requests = encode_requests("127.0.0.1", "/fill-mask", [{"inputs": text} for text in masked_sentences()])
    with contextlib.ExitStack() as stack:
        systems = []
        for label, folder in (("old", old), ("new", new)):
            server = stack.enter_context(start(label, folder))
            system = System(label, server, itertools.cycle(requests), is_service=True)
            asyncio.run(closed_loop("127.0.0.1", server.port, system.source, 1, min(2.0, seconds)))  # warm the path
            server.pause()
            systems.append(system)
        by_system, _ = measure_interleaved(systems, levels, seconds, None, rounds, lambda: None)
        for system in systems:
            by_system[system.name]["memory_end"] = system.server.memory()
    return by_system


def poll_healthz(url: str, stop, results) -> None:
    """GET /healthz every 10 ms until `stop` is set; the latencies go to `results`. Run in its own process,
    so the load generator's work (and its GIL) never counts as the server's."""
    seen = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/healthz")
            seen.append(time.perf_counter() - started)
            time.sleep(0.01)
    results.put(seen)


def event_loop_case(new: Path, heavy: dict, concurrent: int = 4) -> dict:
    """Worst and 99th-percentile /healthz latency alone, then while `concurrent` `heavy` requests run."""
    context = multiprocessing.get_context("spawn")
    with start("new-loop", new) as server:
        base = f"http://127.0.0.1:{server.port}"

        def measure(load) -> dict:
            stop, results = context.Event(), context.Queue()
            poller = context.Process(target=poll_healthz, args=(base, stop, results))
            poller.start()
            time.sleep(1)  # the poller's interpreter is up and polling
            extra = load()
            stop.set()
            ordered = sorted(results.get(timeout=60))
            poller.join()
            p99 = ordered[int(0.99 * (len(ordered) - 1))]
            return {"polls": len(ordered), "worst_ms": ordered[-1] * 1000, "p99_ms": p99 * 1000, **extra}

        idle = measure(lambda: time.sleep(3) or {})

        def heavy_load() -> dict:
            async def run():
                async with httpx.AsyncClient(base_url=base, timeout=600) as client:
                    return await asyncio.gather(*(client.post("/fill-mask", json=heavy) for _ in range(concurrent)))

            started = time.perf_counter()
            responses = asyncio.run(run())
            return {"statuses": [r.status_code for r in responses], "response_mb": len(responses[0].content) / 1e6,
                    "seconds": time.perf_counter() - started}

        loaded = measure(heavy_load)
    print(f"  /healthz alone: worst {idle['worst_ms']:.1f} ms; with {concurrent} heaviest fill-mask requests "
          f"({loaded['response_mb']:.1f} MB each, {loaded['statuses']}): worst {loaded['worst_ms']:.1f} ms, "
          f"p99 {loaded['p99_ms']:.1f} ms", flush=True)
    return {"concurrent": concurrent, "idle": idle, "loaded": loaded}


def markdown(report: dict) -> str:
    lines = [f"# Fill-mask: old export (logits at every position) vs new (at mask positions) ({report['when']})", ""]
    memory = report["memory"]
    lines += [f"Memory and latency, {report['memory_model']}, one request at a time, fp32:", "",
              "| export | request | status | seconds | response MB | RSS before MB | after | 2 s later | peak |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, cases in memory.items():
        for case, r in cases.items():
            lines.append(f"| {label} | {case} | {r['status']} | {r['seconds']:.2f} | {r['response_mb']:.2f} | "
                         f"{r['rss_before_mb']:.0f} | {r['rss_after_mb']:.0f} | {r['rss_2s_later_mb']:.0f} | "
                         f"{r['peak_rss_mb']:.0f} |")
    lines += ["", f"Throughput, {report['throughput_model']}, SST-2 dev sentences with one word masked (top_k 5), "
              f"closed loop, {report['seconds_per_level']:.0f} s per level in {report['rounds']} slices taken in turn:", "",
              "| export | concurrency | req/s | p50 ms | p95 ms | p99 ms | mean batch | peak RSS MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, system in report["throughput"].items():
        for level in system["levels"]:
            batch = f"{level['mean_batch']:.1f}" if level.get("mean_batch") else "–"
            lines.append(f"| {label} | {level['level']} | {level['requests_per_s']:.1f} | {level['p50_ms']:.1f} | "
                         f"{level['p95_ms']:.1f} | {level['p99_ms']:.1f} | {batch} | {system['memory_end']['peak_rss_mb']:.0f} |")
    for old, new in zip(report["throughput"]["old"]["levels"], report["throughput"]["new"]["levels"]):
        lines.append(f"\nnew / old at c={old['level']}: {new['requests_per_s'] / old['requests_per_s']:.2f}x req/s")
    loop = report["event_loop"]
    lines += ["", f"Event loop, {report['memory_model']}, new export: /healthz polled every 10 ms.", "",
              "| while | polls | worst ms | p99 ms |", "| --- | --- | --- | --- |",
              f"| nothing else | {loop['idle']['polls']} | {loop['idle']['worst_ms']:.1f} | {loop['idle']['p99_ms']:.1f} |",
              f"| {loop['concurrent']} x the heaviest accepted fill-mask request ({loop['loaded']['response_mb']:.1f} MB "
              f"answer each, statuses {loop['loaded']['statuses']}) | {loop['loaded']['polls']} | "
              f"{loop['loaded']['worst_ms']:.1f} | {loop['loaded']['p99_ms']:.1f} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fill_mask", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the embedded model, 2 s per level")
    parser.add_argument("--seconds", type=float, default=None, help="per load level (default 20, quick 2)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results (full) or build/bench-quick")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 20.0)
    output = args.output or (REPO / ("build/bench-quick" if args.quick else "bench/results"))
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    if args.quick:
        memory_old, memory_new = throughput_old, throughput_new = exports(EMBEDDED)
        texts_one, texts_eight = long_texts(4, 1, tokens=100), long_texts(4, 8, tokens=100)
        models = ("embedded roberta-mini-mlm", "embedded roberta-mini-mlm")
    else:
        memory_old, memory_new = exports(random_checkpoint("roberta-base-vocab-tiny-mlm", "--tiny-encoder"))
        throughput_old, throughput_new = exports(random_checkpoint("roberta-base-mlm"))
        texts_one, texts_eight = long_texts(32, 1), long_texts(64, 8)
        models = ("roberta-base vocabulary and length, tiny encoder (2 x 64)", "roberta-base shape, random weights")
    report = {"when": time.strftime("%Y-%m-%d %H:%M"), "memory_model": models[0], "throughput_model": models[1],
              "seconds_per_level": seconds, "rounds": args.rounds}
    print("memory", flush=True)
    report["memory"] = memory_case(memory_old, memory_new, {
        f"{len(texts_one)} texts x 1 mask, top_k 1": {"inputs": texts_one, "parameters": {"top_k": 1}},
        f"{len(texts_eight)} texts x 8 masks, top_k 1": {"inputs": texts_eight, "parameters": {"top_k": 1}},
    })
    print("throughput", flush=True)
    report["throughput"] = throughput_case(throughput_old, throughput_new, seconds, args.rounds, args.concurrency)
    print("event loop", flush=True)
    ceiling = Settings.model_fields["max_mask_answers"].default  # the heaviest request accepted: this many answers
    report["event_loop"] = event_loop_case(
        memory_new, {"inputs": texts_eight, "parameters": {"top_k": ceiling // (8 * len(texts_eight))}}
    )
    write_report(output, "fill-mask", report, markdown(report))


if __name__ == "__main__":
    main()
