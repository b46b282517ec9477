"""`python -m bench`: the service next to the naive PyTorch server and the ONNX Runtime limit, in one run.

    python -m bench                 # roberta-base shape (random weights, real tokenizer), full load levels
    python -m bench --quick         # the embedded model, short levels: a smoke run of the same report

Systems: A this service on ONNX Runtime fp32 with dynamic batching; B fp32 with batches of one; C ONNX Runtime's
dynamic INT8 with batching (each in the service's default layout, one process); C1 (not run unless named) C in one
process (`--processes 1`); V this service on OpenVINO bf16 and W on OpenVINO's calibrated INT8 (where OpenVINO is
installed; their limits are OpenVINO alone on the same sorted batches);
D FastAPI + transformers.pipeline (PyTorch), one request at a time; F infinity-emb 0.0.78 on its optimum
(ONNX) engine with the same fp32 file, in its own venv (bench/systems/infinity_shim.py); E / E* ONNX Runtime alone,
batches of 32 in file order / sorted by length. Workload: single SST-2 dev sentences on /classify, closed loop
at each concurrency, then an open loop at a fixed arrival rate. Every level is taken in slices, the systems and
the limits in turn (see measure_interleaved). Then packed against padded execution on SST-2 and on a mixed-length
workload (bench/packed.py). Writes JSON, Markdown and (with matplotlib) a PNG under --output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from bench import servers, wrk
from bench.limits import LimitSlices, accuracy, measure_limits
from bench.load import LoadResult, closed_loop, concurrency_level, encode_requests, open_loop

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"
TRAIN = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"  # its first 300 texts calibrate OpenVINO's INT8
EMBEDDED = REPO / "models" / "roberta-mini-sst2"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="embedded model, 3 s per level")
    parser.add_argument("--output", type=Path, default=None, help="default: build/bench (full) or build/bench-quick; a report to keep goes to bench/results/<machine kind>")
    parser.add_argument("--seconds", type=float, default=None, help="per load level (default 20, quick 3)")
    parser.add_argument("--concurrency", type=concurrency_level, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rate", type=float, default=None, help="open-loop arrivals per second (default 10, quick 30)")
    parser.add_argument("--systems", nargs="+", default=["A", "B", "C", "D", "F", *(("V", "W") if openvino_installed() else ())])
    parser.add_argument("--rounds", type=int, default=4, help="slices per system and level, taken in turn (default 4)")
    parser.add_argument("--soak", type=int, default=None,
                        help="requests sent to --soak-system after its levels to check RSS growth (default 10000, quick 500)")
    parser.add_argument("--soak-system", default="C", help="the service system that takes the soak (default C: INT8, fastest)")
    parser.add_argument("--packed", nargs="*", default=None, metavar="PRECISION",
                        help="precisions of the packed-against-padded section (default int8 fp32, quick int8; none: skip)")
    parser.add_argument("--packed-concurrency", type=concurrency_level, nargs="+", default=[8, 32, 64])
    parser.add_argument("--generator", choices=["wrk", "python"], default="wrk" if wrk.available() else "python",
                        help="closed-loop load generator (default wrk when installed: microseconds of CPU per request)")
    return parser.parse_args()


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None


def sst2_dev() -> tuple[list[str], list[int]]:
    """SST-2 dev sentences and their labels (0 negative, 1 positive), in file order."""
    rows = [row.rsplit("\t", 1) for row in DEV.read_text(encoding="utf-8").splitlines()[1:] if row.strip()]
    return [text.strip() for text, _ in rows], [int(label) for _, label in rows]


def export(checkpoint: Path, work: Path) -> Path:
    """The exported folder (fp32 + INT8, padded and packed, and OpenVINO's INT8 where it is installed) of `checkpoint`,
    reused when up to date."""
    from export.build import ExportOptions, export_model

    folder = work / f"{checkpoint.name}-onnx"
    export_model(ExportOptions(model=str(checkpoint), output=folder, quantize="int8", packed=True, reuse=True,
                               openvino_int8=TRAIN if openvino_installed() else None), log=lambda _: None)
    return folder


def prepare_model(quick: bool, work: Path) -> tuple[Path, Path]:
    """(PyTorch checkpoint, exported ONNX folder): the embedded model, or roberta-base shape with random weights."""
    if quick:
        checkpoint = EMBEDDED
    else:
        checkpoint = work / "roberta-base-random"
        if not (checkpoint / "config.json").is_file():
            subprocess.run([sys.executable, "scripts/random_roberta.py", "--task", "text-classification", "--output", str(checkpoint)],
                           cwd=REPO, check=True)
    return checkpoint, export(checkpoint, work)


@dataclass
class System:
    name: str
    server: servers.ServerProcess
    source: Iterator[bytes]  # its request bytes, cycled: each slice goes on where the last stopped
    is_service: bool
    bodies: Path | None = None  # the same bodies, one JSON per line, for wrk
    path: str = "/classify"  # where wrk posts them
    # Bodies wrk has had answered: its next slice starts there. Started from the first line each time, every slice
    # posted the same first couple of hundred sentences (24.5 tokens against the dev set's 25.0 on roberta-base).
    posted: int = 0


def one_slice(system: System, mode: str, level: float, seconds: float,
              account: wrk.CpuAccount | None = None) -> tuple[LoadResult, tuple]:
    """Resume the server, load it, pause it; with its batch counters before and after when it is the service.

    Closed loops come from wrk when `system.bodies` is set, which also adds the CPU taken into `account`."""
    port = system.server.port
    system.server.resume()
    try:
        before = servers.batch_counters(port) if system.is_service else None
        if mode == "closed" and system.bodies is not None:
            load = wrk.closed_loop(port, system.path, system.bodies, int(level), seconds, system.server.pids, account,
                                   start=system.posted)
            system.posted += sum(load.statuses.values())
        elif mode == "closed":
            load = asyncio.run(closed_loop("127.0.0.1", port, system.source, int(level), seconds))
        else:
            load = asyncio.run(open_loop("127.0.0.1", port, system.source, level, seconds))
        after = servers.batch_counters(port) if system.is_service else None
        system.server.settle()
    finally:
        system.server.pause()
    return load, (before, after)


def measure_interleaved(systems: list[System], levels: list[int], seconds: float, rate: float | None,
                        rounds: int, limits: Callable[[], LimitSlices],
                        more_limits: dict[str, Callable[[], LimitSlices]] | None = None) -> tuple[dict[str, dict], dict[int, dict]]:
    """Every level as `rounds` slices per system, taken in turn, with the others SIGSTOPped;
    at each closed-loop level, slices of the fp32 limits (E, E* in both layouts, single) take their turns too,
    and of the E* of each of `more_limits` (its keys prefixed with its name: int8_, openvino_bf16_, ...).

    These two cores are shared and their speed drifts by a fifth within minutes; slices taken
    in turn put that drift on every system alike, so the ratios hold even when the absolute
    figures move. Returns (per system, the limits per concurrency level).
    """
    results = {system.name: {"levels": [], "open_loop": None} for system in systems}
    limits_by_level: dict[int, dict] = {}
    for system in systems:
        system.server.pause()

    plans = [("closed", level) for level in levels] + ([("open", rate)] if rate else [])
    for mode, level in plans:
        merged: dict[str, LoadResult] = {}
        counters: dict[str, list] = {system.name: [] for system in systems}
        accounts = {system.name: wrk.CpuAccount() for system in systems}
        limit = limits() if mode == "closed" else None
        others = {prefix: make() for prefix, make in (more_limits or {}).items()} if mode == "closed" else {}
        for round_index in range(rounds):
            shift = round_index % len(systems)
            for system in systems[shift:] + systems[:shift]:
                load, counters_pair = one_slice(system, mode, level, seconds / rounds, accounts[system.name])
                merged[system.name] = merged[system.name].merge(load) if system.name in merged else load
                counters[system.name].append(counters_pair)
            for kind in LimitSlices.KINDS if limit else ():
                limit.run_for(kind, seconds / rounds)
            for other in others.values():
                other.run_for("E*", seconds / rounds)
                other.run_for("E*1", seconds / rounds)
        if limit:
            limits_by_level[int(level)] = limit.summary()
            for prefix, other in others.items():
                summary = other.summary()
                limits_by_level[int(level)] |= {f"{prefix}_{key}": summary[key] for key in
                                                ("E_star_seq_per_s", "E_star_side_by_side_seq_per_s", "E_star_one_run_seq_per_s")}
            print(f"  limits at c={level}: {limits_by_level[int(level)]}", flush=True)
        for system in systems:
            entry = merged[system.name].summary()
            if system.is_service and mode == "closed":
                entry.update(servers.batching_over(counters[system.name]))
            if accounts[system.name].requests:
                entry["cpu"] = accounts[system.name].summary()
            label = f"c={level}" if mode == "closed" else f"open loop {level:.1f}/s"
            print(f"  {system.name} {label}: {entry['requests_per_s']:.1f} req/s, p50 {entry['p50_ms']:.1f} ms, "
                  f"p99 {entry['p99_ms']:.1f} ms", flush=True)
            if mode == "closed":
                results[system.name]["levels"].append(entry)
            else:
                results[system.name]["open_loop"] = entry
    for system in systems:
        system.server.resume()
    return results, limits_by_level


def soak_memory(server: servers.ServerProcess, source: Iterator[bytes], count: int, concurrency: int) -> dict:
    """RSS once every batch shape has been seen (after the load levels), then after `count` more requests.

    A leak grows with requests; the allocator's arenas grow only with new shapes, which the levels already made.
    """
    warm = server.memory()["rss_mb"]
    load = asyncio.run(closed_loop("127.0.0.1", server.port, source, concurrency, 0, total=count))
    after = server.memory()["rss_mb"]
    entry = {"requests": load.ok, "statuses": load.summary()["statuses"], "rss_warm_mb": warm, "rss_after_mb": after,
             "growth": after / warm - 1}
    print(f"  {server.name} soak: {load.ok} requests, RSS {warm:.0f} -> {after:.0f} MB ({entry['growth']:+.1%})", flush=True)
    return entry


def throughput(report: dict, system: str, concurrency: int) -> float | None:
    for level in report["systems"].get(system, {}).get("levels", []):
        if level["level"] == concurrency:
            return level["requests_per_s"]
    return None


def latency(report: dict, system: str, concurrency: int) -> float | None:
    for level in report["systems"].get(system, {}).get("levels", []):
        if level["level"] == concurrency:
            return level["p50_ms"]
    return None


def event_loop_ms(report: dict, system: str, concurrency: int) -> float | None:
    for level in report["systems"].get(system, {}).get("levels", []):
        if level["level"] == concurrency and level.get("cpu"):
            return level["cpu"]["server_ms_per_request_by_thread"].get("event loop")
    return None


def targets(report: dict) -> dict:
    """Every target of the benchmark issue: measured value, bound, and whether it holds.

    A limit is taken from the slices run in turn with the systems at the same level, never
    from another minute of the run.
    """
    by_level = report["limits_by_level"]
    a32, a64 = throughput(report, "A", 32), throughput(report, "A", 64)

    def limit(level: int, key: str) -> float | None:
        return by_level.get(level, by_level.get(str(level), {})).get(key)

    def ratio(x, y):
        return x / y if x and y else None

    rows = {
        "A(c32) / E": (ratio(a32, limit(32, "E_seq_per_s")), ">=", 1.0),
        "A(c64) / E*": (ratio(a64, limit(64, "E_star_seq_per_s")), ">=", 0.8),
        "A / D (c32)": (ratio(a32, throughput(report, "D", 32)), ">=", 2.0),
        "C / D (c32)": (ratio(throughput(report, "C", 32), throughput(report, "D", 32)), ">=", 6.0),
        "C / A (c32)": (ratio(throughput(report, "C", 32), a32), ">=", 3.0),
        "A / B (c32)": (ratio(a32, throughput(report, "B", 32)), ">=", 1.3),
        "A / F (c32)": (ratio(a32, throughput(report, "F", 32)), ">=", 1.2),
        "A(c64) / E* (stretch)": (ratio(a64, limit(64, "E_star_seq_per_s")), ">=", 0.95),
        "C(c64) / INT8 E*": (ratio(throughput(report, "C", 64), limit(64, "int8_E_star_seq_per_s")), ">=", 0.9),
    }
    if "V" in report["systems"]:
        v64 = throughput(report, "V", 64)
        rows["V / A (c64): OpenVINO bf16 against ONNX Runtime fp32"] = (ratio(v64, a64), ">=", 3.5)
        rows["V(c64) / OpenVINO bf16 E*"] = (ratio(v64, limit(64, "openvino_bf16_E_star_seq_per_s")), ">=", 0.9)
    if "W" in report["systems"]:
        w64 = throughput(report, "W", 64)
        rows["W / C (c64): OpenVINO INT8 against ONNX Runtime INT8"] = (ratio(w64, throughput(report, "C", 64)), ">=", 1.4)
        rows["W(c64) / OpenVINO INT8 E*"] = (ratio(w64, limit(64, "openvino_int8_E_star_seq_per_s")), ">=", 0.9)
    if report["model"].startswith("embedded"):
        rows["C(c32) / INT8 E* (embedded)"] = (ratio(throughput(report, "C", 32), limit(32, "int8_E_star_seq_per_s")), ">=", 0.7)
    for name in ("A", "C", "C1"):
        loop = event_loop_ms(report, name, 64)
        if loop is not None:
            rows[f"{name} event-loop CPU per request at c=64 (ms)"] = (loop, "<=", 0.5)
    accuracy = report.get("embedded_accuracy")
    if accuracy:
        rows["embedded SST-2 dev: fp32 - INT8 accuracy (points)"] = (100 * (accuracy["fp32"] - accuracy["int8"]), "<=", 1.0)
    a1, single = latency(report, "A", 1), limit(1, "single_p50_ms")
    if a1 is not None and single is not None:
        bound = single + report["service_max_wait_ms"] + 3
        rows["A p50 at c=1 (ms) vs E single + wait + 3"] = (a1, "<=", round(bound, 1))
    for name, system in report["systems"].items():
        if system.get("soak"):
            rows[f"{name} RSS growth over {system['soak']['requests']:,} requests"] = (system["soak"]["growth"], "<=", 0.10)
    return {
        key: {"value": value, "bound": op, "target": target,
              "met": None if value is None else (value >= target if op == ">=" else value <= target)}
        for key, (value, op, target) in rows.items()
    }


def markdown(report: dict) -> str:
    lines = [f"# Benchmark ({report['model']}, {report['when']})", "", report["machine"], ""]
    limits = report["limits"]
    lines += ["Limits measured up front, alone (ONNX Runtime in this process, before any server starts):", "",
              "| limit | fp32 seq/s | INT8 seq/s | padding |", "| --- | --- | --- | --- |"]
    lines.append(f"| E (file order, batches of 32) | {limits['fp32']['E_seq_per_s']:.1f} | {limits['int8']['E_seq_per_s']:.1f} | {limits['fp32']['E_padding']:.0%} |")
    lines.append(f"| E* (sorted by length; the better layout) | {limits['fp32']['E_star_seq_per_s']:.1f} | {limits['int8']['E_star_seq_per_s']:.1f} | {limits['fp32']['E_star_padding']:.0%} |")
    for key, name in (("E_star_side_by_side_seq_per_s", f"E*, {limits['fp32'].get('E_star_runs')} single-threaded runs side by side"),
                      ("E_star_one_run_seq_per_s", "E*, one run at a time on every core")):
        if limits["fp32"].get(key) and limits["int8"].get(key):
            lines.append(f"| {name} | {limits['fp32'][key]:.1f} | {limits['int8'][key]:.1f} | |")
    lines.append(f"| single sequence p50 (ms) | {limits['fp32']['single_p50_ms']:.1f} | {limits['int8']['single_p50_ms']:.1f} | |")
    lines += ["", "fp32 limits in slices taken in turn with the systems, per level (the targets use these):", "",
              "| level | E seq/s | E* seq/s (side by side / one run) | single p50 ms | INT8 E* seq/s (side by side / one run) "
              "| OpenVINO bf16 E* | OpenVINO INT8 E* |",
              "| --- | --- | --- | --- | --- | --- | --- |"]

    def layouts(values: dict, prefix: str = "") -> str:
        best, side, one = (values.get(f"{prefix}E_star{key}seq_per_s") for key in ("_", "_side_by_side_", "_one_run_"))
        if best is None:
            return "–"
        return f"{best:.1f}" + (f" ({side:.1f} / {one:.1f})" if side and one else "")

    for level, values in report["limits_by_level"].items():
        lines.append(f"| c={level} | {values['E_seq_per_s']:.1f} | {layouts(values)} | {values['single_p50_ms']:.1f} | "
                     f"{layouts(values, 'int8_')} | {layouts(values, 'openvino_bf16_')} | {layouts(values, 'openvino_int8_')} |")
    lines += ["", "| system | concurrency | req/s | p50 ms | p95 ms | p99 ms | mean batch | padding | peak RSS MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, system in report["systems"].items():
        for level in system["levels"]:
            batch = f"{level['mean_batch']:.1f}" if level.get("mean_batch") else "–"
            padding = f"{level['mean_padding']:.0%}" if level.get("mean_padding") is not None else "–"
            lines.append(f"| {name} | {level['level']} | {level['requests_per_s']:.1f} | {level['p50_ms']:.1f} | "
                         f"{level['p95_ms']:.1f} | {level['p99_ms']:.1f} | {batch} | {padding} | {system['memory_end']['peak_mb']:.0f} |")
        if system.get("open_loop"):
            o = system["open_loop"]
            lines.append(f"| {name} | open {o['level']:.0f}/s | {o['requests_per_s']:.1f} | {o['p50_ms']:.1f} | {o['p95_ms']:.1f} | {o['p99_ms']:.1f} | | | |")
    cpu_rows = [(name, level) for name, system in report["systems"].items() for level in system["levels"] if level.get("cpu")]
    if cpu_rows:
        lines += ["", f"CPU per answered request, by server thread, and the load generator's ({report.get('generator')}) "
                  "share of all the CPU the slices took:", "",
                  "| system | concurrency | generator share | generator ms | event loop ms | tokenizer ms | onnx threads ms | all server ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, level in cpu_rows:
            cpu = level["cpu"]
            by = cpu["server_ms_per_request_by_thread"]
            onnx = sum(ms for role, ms in by.items() if role.startswith("onnx"))
            loop = f"{by['event loop']:.3f}" if name not in ("D", "F") else "–"
            tokenizer = f"{by.get('tokenizer', 0):.3f}" if name not in ("D", "F") else "–"
            onnx_ms = f"{onnx:.3f}" if name not in ("D", "F") else "–"
            total = sum(by.values())
            lines.append(f"| {name} | {level['level']} | {cpu['generator_share']:.1%} | {cpu['generator_ms_per_request']:.3f} | "
                         f"{loop} | {tokenizer} | {onnx_ms} | {total:.3f} |")
    if report.get("packed"):
        from bench import packed

        lines += ["", "Packed (padding-free graph, `ROBERTA_EXECUTION=packed`) against padded, the same export, "
                  "two servers in turn per workload:", "", *packed.markdown(report["packed"])]
    lines += ["", "| target | measured | bound | met |", "| --- | --- | --- | --- |"]
    if report["model"].startswith("embedded"):
        lines[-2:-2] = ["The targets are set for the roberta-base shape; on the small embedded model HTTP, not the model, "
                        "takes most of each request, so most ratios are not meant to hold here.", ""]
    for key, t in report["targets"].items():
        value = "–" if t["value"] is None else (f"{t['value']:+.1%}" if "RSS" in key else f"{t['value']:.2f}")
        bound = f"{t['target']:+.0%}" if "RSS" in key else f"{t['target']}"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {key} | {value} | {'≥' if t['bound'] == '>=' else '≤'} {bound} | {met} |")
    return "\n".join(lines) + "\n"


def write_report(output: Path, stem: str, report: dict, table: str) -> None:
    """`stem`.json and `stem`.md under `output`, and the table on the console."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / f"{stem}.md").write_text(table)
    print("\n" + table)


def plot(report: dict, path: Path) -> bool:
    """Latency (p50, log scale) against throughput, one curve per system over the concurrency levels."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no PNG", flush=True)
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, system in report["systems"].items():
        levels = system["levels"]
        axes.plot([x["requests_per_s"] for x in levels], [x["p50_ms"] for x in levels], marker="o", label=name)
        for x in levels:
            axes.annotate(f"c{x['level']}", (x["requests_per_s"], x["p50_ms"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    in_run = list(report["limits_by_level"].values())  # the slices taken in turn with the systems
    for key, style in (("E_seq_per_s", ":"), ("E_star_seq_per_s", "--")):
        mean = sum(values[key] for values in in_run) / len(in_run)
        axes.axvline(mean, color="grey", linestyle=style, label=f"{key.split('_seq')[0].replace('_star', '*')} fp32 (mean over levels)")
    axes.set_xlabel("requests/s (one sentence each)")
    axes.set_ylabel("p50 latency (ms)")
    axes.set_yscale("log")
    axes.set_title(report["model"])
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def describe_machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU by name and its vector instructions. ONNX Runtime's INT8 kernels gain most where VNNI is (INT8 E*
    3.3x fp32's in the 01:35 report, 1.2-1.4x on an AVX2-only EPYC), OpenVINO's bf16 where AMX is: reports compare
    only on the same kind of core."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    vector = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
              if flag in flags]
    isa = f" ({', '.join(vector)})" if vector else ""
    return f"{name}{isa}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    args = parse_args()
    seconds = args.seconds or (3.0 if args.quick else 20.0)
    output = args.output or (REPO / ("build/bench-quick" if args.quick else "build/bench"))
    work = REPO / "build" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, folder = prepare_model(args.quick, work)
    texts, labels = sst2_dev()
    soak = args.soak if args.soak is not None else (500 if args.quick else 10_000)
    report = {
        "model": "embedded roberta-mini-sst2" if args.quick else "roberta-base shape, random weights",
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe_machine(),
        "seconds_per_level": seconds,
        "limits": {},
        "systems": {},
    }
    print("limits (ONNX Runtime alone)", flush=True)
    for precision, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        report["limits"][precision] = measure_limits(folder, file, texts, seconds)
        print(f"  {precision}: {report['limits'][precision]}", flush=True)
    embedded = folder if args.quick else export(EMBEDDED, work)
    report["embedded_accuracy"] = {precision: accuracy(embedded, file, texts, labels)
                                   for precision, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))}
    print(f"  embedded model, SST-2 dev accuracy: {report['embedded_accuracy']}", flush=True)
    report["service_max_wait_ms"] = Settings.model_fields["max_wait_ms"].default

    requests = encode_requests("127.0.0.1", "/classify", [{"inputs": text} for text in texts])
    infinity_requests = encode_requests("127.0.0.1", "/classify", [{"input": [text]} for text in texts])
    report["generator"] = args.generator
    bodies = {"service": wrk.bodies_file([{"inputs": text} for text in texts]),
              "F": wrk.bodies_file([{"input": [text]} for text in texts])} if args.generator == "wrk" else {}
    configs = {
        "A": dict(backend="onnxruntime", precision="fp32"),
        "B": dict(backend="onnxruntime", precision="fp32", max_batch_size=1),
        "C": dict(backend="onnxruntime", precision="int8"),
        "C1": dict(backend="onnxruntime", precision="int8", processes=1),
        "V": dict(backend="openvino", precision="bf16"),
        "W": dict(backend="openvino", precision="int8"),
    }
    rate = args.rate or (30.0 if args.quick else 10.0)
    report["open_loop_rate"] = rate
    report["rounds"] = args.rounds
    with contextlib.ExitStack() as stack:
        systems = []
        for name in args.systems:
            port = servers.free_port()
            log = work / "logs" / f"server-{name}.log"
            if name == "D":
                server, is_service = servers.naive(checkpoint, port, log), False
            elif name == "F":
                server, is_service = servers.infinity(folder, port, log), False
            else:
                server, is_service = servers.service(name, folder, port, log, **configs[name]), True
            print(f"starting {name}", flush=True)
            stack.enter_context(server)
            system = System(name, server, itertools.cycle(infinity_requests if name == "F" else requests), is_service,
                            bodies.get("F" if name == "F" else "service"))
            asyncio.run(closed_loop("127.0.0.1", port, system.source, 1, min(2.0, seconds)))  # warm the path
            report["systems"][name] = {"memory_after_warmup": server.memory()}
            server.pause()
            systems.append(system)
        more_limits = {"int8": lambda: LimitSlices(folder, "model.int8.onnx", texts)}
        if "V" in args.systems:
            more_limits["openvino_bf16"] = lambda: LimitSlices(folder, "model.onnx", texts, engine="openvino", hint="bf16")
        if "W" in args.systems:
            more_limits["openvino_int8"] = lambda: LimitSlices(folder, "model.openvino-int8.xml", texts, engine="openvino")
        by_system, report["limits_by_level"] = measure_interleaved(
            systems, args.concurrency, seconds, rate, args.rounds, lambda: LimitSlices(folder, "model.onnx", texts),
            more_limits,
        )
        for name, result in by_system.items():
            report["systems"][name].update(result)
        for system in systems:
            if system.name == args.soak_system and soak:
                for other in systems:
                    other.server.pause()
                system.server.resume()
                report["systems"][system.name]["soak"] = soak_memory(system.server, system.source, soak, max(args.concurrency))
            report["systems"][system.name]["memory_end"] = system.server.memory()
    packed_precisions = args.packed if args.packed is not None else (["int8"] if args.quick else ["int8", "fp32"])
    if packed_precisions:
        from bench import packed

        report["packed"] = packed.run(folder, packed_precisions, texts, args.packed_concurrency, seconds, args.rounds)
    report["targets"] = targets(report)
    write_report(output, "report", report, markdown(report))
    plot(report, output / "report.png")


if __name__ == "__main__":
    main()
