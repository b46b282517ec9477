"""The service from this checkout against the service from another, same model, same load, in turn.

    python -m bench.studies.ab ../other-checkout                      # embedded INT8 classifier, c=32 and 64, 20 s each
    python -m bench.studies.ab ../other-checkout --seconds 10 --concurrency 8
    python -m bench.studies.ab . --other-env ROBERTA_ONNX_SCHEDULER=idle     # a setting
    python -m bench.studies.ab . --folder NEW_EXPORT --other-folder OLD_EXPORT   # two exports of one model
    python -m bench.studies.ab . --log-level info --this-env OTEL_TRACES_EXPORTER=otlp   # tracing on against off

For a change to the serving path (the HTTP layer, the batcher) whose cost must be seen beside the
code before it: both servers run `python -m app` with the same flags on the same exported folder,
and every level is taken in slices, one server at a time, the other SIGSTOPped (bench.__main__'s
measure_interleaved), so drift of these shared cores falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
from pathlib import Path

from bench import servers, wrk
from bench.__main__ import REPO, System, measure_interleaved, sst2_dev
from bench.load import closed_loop, concurrency_level, encode_requests

WORK = REPO / "build" / "bench"


def checkout_server(name: str, checkout: Path, folder: Path, precision: str, env: dict[str, str],
                    log_level: str = "warning") -> servers.ServerProcess:
    """`python -m app` with `checkout` first on sys.path, so its `app` package is the one that runs, and `env`
    (ROBERTA_* settings; a pool's size among them) added to its environment."""
    launcher = f"import sys; sys.path.insert(0, {str(checkout.resolve())!r}); from app.__main__ import main; main()"
    return servers.ServerProcess("--classify-model", str(folder), "--precision", precision, launcher=[sys.executable, "-c", launcher],
                                 port=servers.free_port(), log_level=log_level, env=env, log=WORK / "logs" / f"ab-{name}.log",
                                 name=name, processes=int(env.get("ROBERTA_PROCESSES", 1)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.ab", description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="another checkout of this repository (e.g. a git worktree)")
    parser.add_argument("--folder", type=Path, default=REPO / "build" / "onnx" / "roberta-mini-sst2",
                        help="exported classifier both serve (default: the embedded one, as serve-default.sh exports it)")
    parser.add_argument("--other-folder", type=Path, default=None,
                        help="the other's exported classifier, to compare two exports of one model (default: --folder)")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=concurrency_level, nargs="+", default=[32, 64])
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--log-level", default="warning", help="both servers' (info: an access line per request)")
    parser.add_argument("--this-env", nargs="*", default=[], metavar="KEY=VALUE", help="settings for this checkout's server")
    parser.add_argument("--other-env", nargs="*", default=[], metavar="KEY=VALUE", help="settings for the other's")
    args = parser.parse_args()
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    texts = sst2_dev()[0]
    requests = encode_requests("127.0.0.1", "/classify", [{"inputs": text} for text in texts])
    bodies = wrk.bodies_file([{"inputs": text} for text in texts]) if wrk.available() else None
    envs = {"this": dict(e.split("=", 1) for e in args.this_env), "other": dict(e.split("=", 1) for e in args.other_env)}
    with contextlib.ExitStack() as stack:
        systems = []
        folders = {"this": args.folder, "other": args.other_folder or args.folder}
        for name, checkout in (("this", REPO), ("other", args.other)):
            server = stack.enter_context(checkout_server(name, checkout, folders[name], args.precision, envs[name],
                                                         args.log_level))
            system = System(name, server, itertools.cycle(requests), is_service=True, bodies=bodies)
            asyncio.run(closed_loop("127.0.0.1", server.port, system.source, 1, 2.0))  # warm the path
            server.pause()
            systems.append(system)
        results, _ = measure_interleaved(systems, args.concurrency, args.seconds, None, args.rounds, lambda: None)
    for this, other in zip(results["this"]["levels"], results["other"]["levels"]):
        print(f"c={this['level']}: this {this['requests_per_s']:.1f} req/s, other {other['requests_per_s']:.1f}: "
              f"this / other {this['requests_per_s'] / other['requests_per_s']:.3f}")
        for name, level in (("this", this), ("other", other)):
            if level.get("cpu"):
                by = level["cpu"]["server_ms_per_request_by_thread"]
                print(f"  {name}: CPU ms per request " + ", ".join(f"{role} {ms:.3f}" for role, ms in by.items())
                      + f"; generator share {level['cpu']['generator_share']:.1%}")
            if level.get("mean_batch"):
                print(f"  {name}: mean batch {level['mean_batch']:.1f} at {level['mean_padding']:.1%} padding, p50 {level['p50_ms']:.0f} ms")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
