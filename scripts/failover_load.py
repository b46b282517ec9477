"""Load through the balancer for 60 s while replicas fail: the measuring half of scripts/failover-check.sh.

  python scripts/failover_load.py --url http://127.0.0.1:8080 --prometheus http://127.0.0.1:9091 \
      --kill roberta-failover-roberta-1 --term roberta-failover-roberta-2

Closed loop: `--concurrency` clients each post /classify (SST-2-like sentences, 1-8 texts) and send the next as
soon as the answer comes. At 20 s the first replica gets SIGKILL, at 40 s the second SIGTERM. Every request ends
in one of: 200; 429/503 with Retry-After (retryable: the client may send it again); another status; lost (no
answer: connection reset, empty response, timeout). Prints the counts, which must add up to what was sent, and
the number of replicas Prometheus saw up, second by second. Exit status 1 if anything was lost or not retryable,
or if Prometheus did not see 3, then 2, then 1 up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import time
from collections import Counter

import httpx

SENTENCES = [
    "a gripping, beautifully acted film",
    "tedious and far too long",
    "the plot never quite comes together, but the cast is wonderful",
    "one of the best films of the year",
    "I wanted to leave after twenty minutes",
    "fine",
    "a warm, funny and surprisingly moving story about growing up",
    "the dialogue is flat and the jokes fall flat too",
]


def outcome_of(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    if response.status_code in (429, 503) and response.headers.get("retry-after"):
        return f"{response.status_code} with Retry-After"
    return f"{response.status_code} (not retryable)"


async def client(url: str, until: float, outcomes: Counter, rng: random.Random, http: httpx.AsyncClient) -> None:
    while time.monotonic() < until:
        body = {"inputs": rng.sample(SENTENCES, rng.randint(1, len(SENTENCES)))}
        try:
            outcomes[outcome_of(await http.post(f"{url}/classify", json=body))] += 1
        except httpx.HTTPError as exc:
            outcomes[f"lost ({type(exc).__name__})"] += 1


async def replicas_up(prometheus: str, http: httpx.AsyncClient) -> int | None:
    try:
        answer = await http.get(f"{prometheus}/api/v1/query", params={"query": 'sum(up{job="roberta"})'})
        result = answer.json()["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0
    except (httpx.HTTPError, KeyError, ValueError):
        return None


async def watch(prometheus: str, start: float, until: float, seen: list[tuple[float, int | None]]) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < until:
            seen.append((round(time.monotonic() - start, 1), await replicas_up(prometheus, http)))
            await asyncio.sleep(1)


def signal(container: str, name: str, start: float, events: list[str]) -> None:
    subprocess.run(["podman", "kill", "--signal", name, container], check=True, capture_output=True)
    events.append(f"{time.monotonic() - start:5.1f} s: SIG{name} to {container}")


async def main(args: argparse.Namespace) -> int:
    outcomes: Counter = Counter()
    seen: list[tuple[float, int | None]] = []
    events: list[str] = []
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    until = start + args.duration
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as http:
        clients = [asyncio.create_task(client(args.url, until, outcomes, random.Random(i), http)) for i in range(args.concurrency)]
        watcher = asyncio.create_task(watch(args.prometheus, start, until + args.settle, seen))
        loop.call_at(loop.time() + args.kill_at, signal, args.kill, "KILL", start, events)
        loop.call_at(loop.time() + args.term_at, signal, args.term, "TERM", start, events)
        await asyncio.gather(*clients)
        await watcher

    sent = sum(outcomes.values())
    lost = sum(n for key, n in outcomes.items() if key.startswith("lost"))
    not_retryable = sum(n for key, n in outcomes.items() if "not retryable" in key)
    retryable = sum(n for key, n in outcomes.items() if "with Retry-After" in key)
    # The distinct counts of replicas up, in the order Prometheus saw them
    steps = [count for i, (_, count) in enumerate(seen) if count is not None and (i == 0 or count != seen[i - 1][1])]
    report = {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "events": events,
        "sent": sent,
        "answered_200": outcomes["200"],
        "answered_429_503_with_retry_after": retryable,
        "not_retryable": not_retryable,
        "lost": lost,
        "outcomes": dict(outcomes),
        "counts_add_up": outcomes["200"] + retryable + not_retryable + lost == sent,
        "replicas_up_seen_in_order": steps,
        # each change of the count, with when Prometheus first answered it
        "replicas_up_timeline": ", ".join(
            f"{t:.1f} s: {count}" for i, (t, count) in enumerate(seen) if i == 0 or count != seen[i - 1][1]
        ),
    }
    print(json.dumps(report, indent=2))
    ok = lost == 0 and not_retryable == 0 and report["counts_add_up"] and _in_order(steps, [3, 2, 1])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def _in_order(steps: list[int], wanted: list[int]) -> bool:
    position = 0
    for count in steps:
        if position < len(wanted) and count == wanted[position]:
            position += 1
    return position == len(wanted)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9091")
    parser.add_argument("--kill", required=True, help="container to SIGKILL at --kill-at")
    parser.add_argument("--term", required=True, help="container to SIGTERM at --term-at")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--kill-at", type=float, default=20)
    parser.add_argument("--term-at", type=float, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60, help="a request without an answer by then is lost")
    parser.add_argument("--settle", type=float, default=8, help="seconds to keep watching Prometheus after the load")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
