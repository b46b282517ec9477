"""Closed-loop load on /classify: C clients each send one SST-2 dev sentence at a time, for D seconds.

    python scripts/load.py --url http://127.0.0.1:8000 --concurrency 64 --duration 20

Prints requests/s and latency percentiles. The benchmark issue builds the full comparison on top of this.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from pathlib import Path

import httpx

DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2" / "dev.tsv"


def sentences(path: Path) -> list[str]:
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [row.split("\t")[0].strip() for row in rows if row.strip()]


async def run(url: str, concurrency: int, duration: float, texts: list[str]) -> dict:
    source = itertools.cycle(texts)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        stop_at = time.monotonic() + duration

        async def worker():
            while time.monotonic() < stop_at:
                started = time.monotonic()
                response = await client.post("/classify", json={"inputs": next(source), "parameters": {"truncation": True}})
                latencies.append(time.monotonic() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--data", type=Path, default=DEV)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.concurrency, args.duration, sentences(args.data)))
    print(
        f"c={result['concurrency']} requests={result['requests']} rps={result['rps']:.1f} "
        f"p50={result['p50_ms']:.0f}ms p95={result['p95_ms']:.0f}ms p99={result['p99_ms']:.0f}ms statuses={result['statuses']}"
    )


if __name__ == "__main__":
    main()
