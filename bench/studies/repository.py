"""Memory of many models in one process against one process per model, in the same run.

    python -m bench.studies.repository [--repository DIR] [--requests N]

DIR holds one export per subfolder (default build/repo-bench/repository: three
roberta-base-shaped models, see the README). First each model is served by its own process,
then all of them by one; each server gets the same requests per model, and its resident
memory is read from /proc after warm-up and after the load. Writes build/bench/repository.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.servers import REPO, ServerProcess, free_port

RESULTS = REPO / "build" / "bench"
LOGS = REPO / "build" / "bench" / "logs"
TEXTS = [
    f"{who} {verb} the {thing} in {place}, and it was {how}."
    for who, verb, thing, place, how in zip(
        ["Marie", "The critic", "Our team", "A tourist", "John Smith"] * 4,
        ["watched", "reviewed", "built", "photographed", "described"] * 4,
        ["film", "bridge", "museum", "concert", "novel"] * 4,
        ["Paris", "New York", "a small village near Warsaw", "Tokyo", "the old town"] * 4,
        ["wonderful", "far too long", "moving", "a disappointment", "fine"] * 4,
    )
]


def serve(label: str, models: dict[str, Path] | Path) -> ServerProcess:
    target = ["--model-repository", str(models)] if isinstance(models, Path) else ["--models", ",".join(f"{n}={p}" for n, p in models.items())]
    return ServerProcess(*target, "--max-wait-ms", "2", port=free_port(), log_level="warning",
                         log=LOGS / f"repository-{label}.log", name=label)


def load(port: int, names: list[str], requests: int) -> float:
    """`requests` POSTs to each model, 8 at a time; returns the seconds it took."""
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        def one(index: int) -> None:
            name = names[index % len(names)]
            response = client.post(f"http://127.0.0.1:{port}/models/{name}", json={"inputs": TEXTS[index % len(TEXTS)]})
            response.raise_for_status()

        list(pool.map(one, range(requests * len(names))))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPO / "build" / "repo-bench" / "repository")
    parser.add_argument("--requests", type=int, default=200, help="per model and server")
    args = parser.parse_args()
    folders = {p.name: p for p in sorted(args.repository.iterdir()) if (p / "manifest.json").is_file()}
    if not folders:
        raise SystemExit(f"{args.repository} holds no export")

    separate = {}
    for name, folder in folders.items():
        with serve(name, {name: folder}) as server:
            warm = server.memory()["rss_mb"]
            seconds = load(server.port, [name], args.requests)
            separate[name] = {"rss_warm_mb": round(warm, 1), "rss_after_mb": round(server.memory()["rss_mb"], 1),
                              "peak_mb": round(server.memory()["peak_mb"], 1), "seconds": round(seconds, 1)}
            print(f"{name} alone: {separate[name]}", flush=True)
    with serve("all", args.repository) as server:
        warm = server.memory()["rss_mb"]
        per_model = {m["name"]: m["memory_bytes"] for m in httpx.get(f"http://127.0.0.1:{server.port}/models").json()["models"]}
        seconds = load(server.port, list(folders), args.requests)
        together = {"rss_warm_mb": round(warm, 1), "rss_after_mb": round(server.memory()["rss_mb"], 1),
                    "peak_mb": round(server.memory()["peak_mb"], 1), "seconds": round(seconds, 1),
                    "per_model_mb": {name: round(value / 2**20, 1) for name, value in per_model.items() if value is not None}}
        print(f"all in one: {together}", flush=True)

    summed = {key: round(sum(entry[key] for entry in separate.values()), 1) for key in ("rss_warm_mb", "rss_after_mb", "peak_mb")}
    report = {"models": {name: json.loads((folder / "manifest.json").read_text())["task"] for name, folder in folders.items()},
              "requests_per_model": args.requests, "separate": separate, "separate_total": summed, "together": together}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "repository.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Three models: one process each against one process for all",
        "",
        f"Models: {', '.join(f'{n} ({t})' for n, t in report['models'].items())}; {args.requests} requests per model and server,"
        " 8 at a time. RSS from /proc, in MB.",
        "",
        "| | RSS warm | RSS after load | peak RSS | seconds for the load |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {name} alone | {e['rss_warm_mb']} | {e['rss_after_mb']} | {e['peak_mb']} | {e['seconds']} |" for name, e in separate.items()],
        f"| **sum of three processes** | {summed['rss_warm_mb']} | {summed['rss_after_mb']} | {summed['peak_mb']} | "
        f"{round(sum(e['seconds'] for e in separate.values()), 1)} (one after another) |",
        f"| **one process, all three** | {together['rss_warm_mb']} | {together['rss_after_mb']} | {together['peak_mb']} | "
        f"{together['seconds']} (the three mixed) |",
        "",
        f"One process against three: {together['rss_after_mb'] / summed['rss_after_mb']:.2f} x the memory after load. "
        f"Per model, as the one process reports it (`memory_bytes` in /models): "
        + ", ".join(f"{n} {v} MB" for n, v in together["per_model_mb"].items()) + ".",
        "",
        "Time is not the point of this run (each process alone had both cores; the one process ran the three models'",
        "requests mixed, 8 at a time), but it says what sharing the cores costs: with several models loaded, ONNX",
        "Runtime's threads do not spin between operators (they would spin on the cores the other sessions need).",
        "",
    ]
    (RESULTS / "repository.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
