"""Load generators: closed loop at a fixed concurrency, and open loop at a fixed arrival rate.

Requests are pre-encoded HTTP/1.1 bytes written on keep-alive sockets, so the client spends
microseconds per request; an httpx client on the same two cores would be the bottleneck and
flatten every system to the same number.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    level: float  # concurrency, or arrivals per second
    seconds: float  # the measuring window
    latencies: list[float] = field(default_factory=list)  # of 200s only
    statuses: dict[int, int] = field(default_factory=dict)
    in_window: int = 0  # 200s answered before the window closed: the throughput count

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def merge(self, other: LoadResult) -> LoadResult:
        """One result from slices of the same load taken at different times (interleaved with other systems)."""
        statuses = dict(self.statuses)
        for status, count in other.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
        return LoadResult(self.mode, self.level, self.seconds + other.seconds, self.latencies + other.latencies,
                          statuses, self.in_window + other.in_window)

    def summary(self) -> dict:
        ordered = sorted(self.latencies)

        def quantile(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

        return {
            "mode": self.mode,
            "level": self.level,
            "requests_per_s": self.in_window / self.seconds,
            "p50_ms": quantile(0.50),
            "p95_ms": quantile(0.95),
            "p99_ms": quantile(0.99),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def concurrency_level(text: str) -> int:
    """argparse type for a closed loop's clients: a level of 0 would start wrk with no connections, which fails
    minutes into a run."""
    level = int(text)
    if level < 1:
        raise argparse.ArgumentTypeError(f"a concurrency level is at least 1, not {level}")
    return level


def encode_requests(host: str, path: str, bodies: list[dict]) -> list[bytes]:
    requests = []
    for payload in bodies:
        body = json.dumps(payload).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        requests.append(head.encode() + body)
    return requests


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(head.split(" ", 2)[1])

    def close(self) -> None:
        self.writer.close()


async def closed_loop(
    host: str, port: int, source: Iterator[bytes], concurrency: int, seconds: float, total: int | None = None
) -> LoadResult:
    """`concurrency` clients, each sending its next request as soon as the last is answered.

    Runs for a window of `seconds` and counts the answers inside it (requests still out when
    it closes finish but do not count: the drain would favour fast answers), or until `total`
    requests were sent when that is given.
    """
    result = LoadResult("closed", concurrency, seconds)
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    began = time.perf_counter()
    stop_at = began + seconds if total is None else float("inf")
    left = itertools.count(total, -1) if total is not None else itertools.repeat(1)

    async def client(connection: Connection) -> None:
        while time.perf_counter() < stop_at and next(left) > 0:
            started = time.perf_counter()
            status = await connection.send(next(source))
            finished = time.perf_counter()
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies.append(finished - started)
                result.in_window += finished <= stop_at

    await asyncio.gather(*(client(c) for c in connections))
    if total is not None:
        result.seconds = time.perf_counter() - began
    for connection in connections:
        connection.close()
    return result


async def open_loop(host: str, port: int, source: Iterator[bytes], rate: float, seconds: float) -> LoadResult:
    """Arrivals every 1/rate s whatever the answers do (a queue builds if the server is slower).

    Connections are kept alive and reused, the most recent first, and opened when none is idle. One
    the server closed while it sat idle (its keep-alive timeout) is reopened and the request sent
    again, as HTTP clients do with a stale pooled connection.
    """
    result = LoadResult("open", rate, seconds)
    idle: list[Connection] = []

    async def one(request: bytes, scheduled: float) -> None:
        connection = idle.pop() if idle else await Connection.open(host, port)
        try:
            status = await connection.send(request)
        except (asyncio.IncompleteReadError, ConnectionError):
            connection.close()
            connection = await Connection.open(host, port)
            status = await connection.send(request)
        idle.append(connection)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 200:
            result.latencies.append(time.perf_counter() - scheduled)  # from the planned arrival: queueing counts
            result.in_window += 1

    tasks = []
    began = time.perf_counter()
    for index in range(int(rate * seconds)):
        scheduled = began + index / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(one(next(source), scheduled)))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - began
    for connection in idle:
        connection.close()
    return result
