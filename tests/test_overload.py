"""A flood at several times capacity against a real `python -m app`: only 200s and 429s, bounded memory, quick recovery.

Capacity is kept small on purpose (batches of 4, a queue of 32 sequences, 8 sequences
per request) so that a Python client on the same two cores can outrun it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter

import httpx
import pytest

from server import ServerProcess, metric_value

FLOOD_S = 4.0
CLIENTS = 64
TEXTS = [f"review number {i}: the plot was thin but the acting was lovely" for i in range(8)]


@pytest.fixture(scope="module")
def server(exported_classifier):
    flags = ["--classify-model", str(exported_classifier), "--max-batch-size", "4", "--max-queue", "32", "--max-inputs", "8",
             "--max-wait-ms", "2"]
    with ServerProcess(*flags) as process:
        yield process


def latencies(url: str, count: int) -> list[float]:
    seconds = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            assert client.post(f"{url}/classify", json={"inputs": TEXTS[0]}).status_code == 200
            seconds.append(time.perf_counter() - started)
    return seconds


async def flood(url: str) -> tuple[Counter, list[float], list[float], int]:
    """Keep-alive connections writing pre-encoded requests: a few microseconds of client CPU per request.

    (An httpx client spends more CPU per request than the server does on a 429, so it cannot flood.)
    """
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"inputs": TEXTS}).encode()
    request = (
        f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    statuses: Counter = Counter()
    refused_in: list[float] = []
    served_in: list[float] = []
    missing_retry_after = 0
    stop_at = time.monotonic() + FLOOD_S

    async def one_client() -> None:
        nonlocal missing_retry_after
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = int(head.split("content-length:")[1].split("\r\n")[0])
                answer = await reader.readexactly(length)
                elapsed = time.perf_counter() - started
                status = int(head.split(" ", 2)[1])
                statuses[status] += 1
                if status == 429:
                    refused_in.append(elapsed)
                    missing_retry_after += "\r\nretry-after:" not in head
                    assert json.loads(answer)["error_type"] == "overloaded"
                elif status == 200:
                    served_in.append(elapsed)
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return statuses, refused_in, served_in, missing_retry_after


def test_a_flood_gets_only_200_and_429_memory_stays_bounded_and_service_recovers(server):
    latencies(server.url, 5)  # warm the path
    normal = statistics.median(latencies(server.url, 20))
    rss_before = server.rss_bytes()

    statuses, refused_in, served_in, missing_retry_after = asyncio.run(flood(server.url))
    rss_after = server.rss_bytes()
    after = statistics.median(latencies(server.url, 20))

    total = sum(statuses.values())
    print(
        f"\nflood {FLOOD_S:.0f}s x {CLIENTS} clients: {dict(statuses)} ({total / FLOOD_S:.0f} req/s offered, "
        f"{statuses[200] / FLOOD_S:.0f} served); 429 median {statistics.median(refused_in) * 1e3:.1f} ms, "
        f"200 median {statistics.median(served_in) * 1e3:.1f} ms; RSS {rss_before / 2**20:.0f} -> "
        f"{rss_after / 2**20:.0f} MiB; latency before {normal * 1e3:.1f} ms, after {after * 1e3:.1f} ms"
    )
    assert set(statuses) == {200, 429}, statuses
    assert statuses[429] > statuses[200]  # well past capacity: most of the flood is refused
    assert missing_retry_after == 0
    assert statistics.median(refused_in) < statistics.median(served_in)  # refused at once, not after waiting
    assert rss_after - rss_before < 100 * 2**20
    assert metric_value(server.url, "roberta_queue_depth", model="cls") == 0
    assert after < max(3 * normal, normal + 0.05)
