"""One service process against N of them sharing a port, and E*, in turn: how to lay out a small model.

    python -m bench.studies.replicas                                  # embedded INT8 classifier, 2 replicas, c=32, 3 rounds
    python -m bench.studies.replicas --replicas 2 --concurrency 32 64 --rounds 4 --seconds 10

One process runs everything through one event loop; on the embedded model the two cores sat 11-14% idle at
c=32 while requests waited (docs/decisions/one-process-by-default.md). `python -m app --processes N` (app.serving.supervisor) runs N
processes, each with its share of the cores, bound to one port with SO_REUSEPORT: the kernel deals
connections out among them, as a Service deals them out among pods. The load starts once every process
is warm. The systems take each level in slices, one at a time, the others SIGSTOPped, so drift of these
shared cores falls on all alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

from bench import servers, wrk
from bench.__main__ import REPO, prepare_model, sst2_dev
from bench.limits import LimitSlices, usable_cores
from bench.load import LoadResult

WORK = REPO / "build" / "bench"


def idle_share(before: list[int], after: list[int]) -> float:
    """The share of the machine's CPU time that was idle between two readings of /proc/stat's first line."""
    spent = [a - b for a, b in zip(after, before)]
    return spent[3] / sum(spent) if sum(spent) else 0.0


def cpu_times() -> list[int]:
    return [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def measure_slice(server: servers.ServerProcess, bodies: Path, concurrency: int, seconds: float,
                  start: int) -> tuple[LoadResult, float, list[float]]:
    """(the slice's answers, the machine's idle share, each serving process's CPU seconds) for one slice of load."""
    server.resume()
    pids = server.pids
    cpu_before, stat_before = [wrk.process_cpu(pid) or 0.0 for pid in pids], cpu_times()
    result = wrk.closed_loop(server.port, "/classify", bodies, concurrency, seconds, pids, start=start)
    cpu_after, stat_after = [wrk.process_cpu(pid) or 0.0 for pid in pids], cpu_times()
    server.settle()
    server.pause()
    return result, idle_share(stat_before, stat_after), [a - b for a, b in zip(cpu_after, cpu_before)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="an exported classifier (default: the embedded one, exported as `python -m bench --quick` does)")
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--seconds", type=float, default=8.0, help="per slice")
    parser.add_argument("--rounds", type=int, default=3, help="slices per system and level")
    args = parser.parse_args()
    if not wrk.available():
        sys.exit("wrk is needed (apt-get install wrk)")
    cores = usable_cores()
    if args.replicas < 2 or cores % args.replicas:
        sys.exit(f"--replicas must be 2 or more and divide the {cores} usable cores")
    folder = args.folder or prepare_model(True, WORK)[1]
    texts, _ = sst2_dev()
    bodies = wrk.bodies_file([{"inputs": text} for text in texts])
    report: dict = {"folder": str(folder), "precision": args.precision, "replicas": args.replicas, "cores": cores, "levels": {}}
    with ExitStack() as stack:
        one = stack.enter_context(servers.service("one", folder, servers.free_port(), WORK / "logs" / "replicas-one.log",
                                                  precision=args.precision, processes=1))
        one.pause()
        name = f"{args.replicas} replicas"
        pool = stack.enter_context(servers.service(name, folder, servers.free_port(), WORK / "logs" / "replicas-pool.log",
                                                   precision=args.precision, processes=args.replicas))
        pool.pause()
        systems = {"one process": one, name: pool}
        for concurrency in args.concurrency:
            rounds = []
            limits = LimitSlices(folder, "model.int8.onnx" if args.precision == "int8" else "model.onnx", texts)  # per level
            for index in range(args.rounds):
                limits.run_for("E*", args.seconds)
                limits.run_for("E*1", args.seconds)
                row = {"E_star_seq_per_s": limits.summary()["E_star_seq_per_s"]}  # over this level's slices so far
                for name, server in systems.items():
                    result, idle, cpu = measure_slice(server, bodies, concurrency, args.seconds, start=index * 997)
                    rate = result.in_window / result.seconds
                    row[name] = {"requests_per_s": round(rate, 1), "p50_ms": round(result.summary()["p50_ms"], 1),
                                 "idle": round(idle, 3), "cpu_ms_per_request": round(sum(cpu) * 1000 / max(1, result.ok), 3),
                                 "cpu_s_by_process": [round(seconds, 2) for seconds in cpu],
                                 "errors": sum(n for status, n in result.statuses.items() if status != 200)}
                rounds.append(row)
                print(json.dumps({"concurrency": concurrency, "round": index, **row}), flush=True)
            report["levels"][concurrency] = summarize(rounds, list(systems))
    print(render(report))


def summarize(rounds: list[dict], names: list[str]) -> dict:
    """Per system: median req/s, idle share and CPU per request over the rounds; the ratios taken round by round."""
    one, many = names
    return {
        "E_star_seq_per_s": rounds[-1]["E_star_seq_per_s"],
        **{name: {key: statistics.median(r[name][key] for r in rounds) for key in ("requests_per_s", "p50_ms", "idle", "cpu_ms_per_request")}
           for name in names},
        "ratio_by_round": [round(r[many]["requests_per_s"] / r[one]["requests_per_s"], 3) for r in rounds],
        "of_E_star": {name: round(statistics.median(r[name]["requests_per_s"] for r in rounds) / rounds[-1]["E_star_seq_per_s"], 3)
                      for name in names},
        "errors": {name: sum(r[name]["errors"] for r in rounds) for name in names},
    }


def render(report: dict) -> str:
    lines = [f"{report['folder']} ({report['precision']}), {report['cores']} cores: one process against {report['replicas']} replicas",
             "", f"| c | system | req/s | of {report['precision']} E* | p50 ms | CPU idle | CPU ms / request | errors |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for concurrency, level in report["levels"].items():
        for name in level["of_E_star"]:
            row = level[name]
            lines.append(f"| {concurrency} | {name} | {row['requests_per_s']:.1f} | {level['of_E_star'][name]:.2f} | {row['p50_ms']:.1f} | "
                         f"{row['idle']:.1%} | {row['cpu_ms_per_request']:.3f} | {level['errors'][name]} |")
        lines.append(f"| {concurrency} | E* (ONNX Runtime alone) | {level['E_star_seq_per_s']:.1f} | 1.00 | | | | |")
        lines.append(f"| {concurrency} | replicas / one, round by round | {', '.join(map(str, level['ratio_by_round']))} | | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
