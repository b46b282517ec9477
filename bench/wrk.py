"""Closed-loop load from wrk, and the CPU that wrk and each of the server's threads took.

wrk (Debian's package) spends a few microseconds of CPU per request; the Python generator of bench/load.py spent
about 2.3 ms, a tenth of what it measured on two cores. So the closed-loop levels use wrk when it is installed,
and report the generator's share of the CPU beside the server's, thread by thread.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import LoadResult

POST_LUA = Path(__file__).with_name("post.lua")
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
IN_WINDOW_MARGIN_S = 0.05  # read the CPU this long before wrk's duration ends: its done() must not have begun


def available() -> bool:
    return shutil.which("wrk") is not None


def bodies_file(bodies: list[dict]) -> Path:
    """The request bodies, one JSON per line, for post.lua (a temporary file that lives as long as the run)."""
    handle = tempfile.NamedTemporaryFile("w", suffix=".jsonl", prefix="bench-bodies-", delete=False)
    with handle:
        for body in bodies:
            handle.write(json.dumps(body) + "\n")
    path = Path(handle.name)
    atexit.register(path.unlink, missing_ok=True)
    return path


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every thread of `pid`, by thread id, with the thread's name."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) * TICK_S)
    return out


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) a running process has taken; None once it has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * TICK_S


def thread_role(pid: int, tid: int, name: str) -> str:
    """What a server thread does: the event loop is the main thread; the app names the threads it starts
    (tokenize, onnx-<model>, openvino-<model>), and the threads those start (ONNX Runtime's pool, tokenizers' own)
    keep the name. OpenVINO's own worker threads do not: they count as other."""
    if tid == pid:
        return "event loop"
    if name.startswith("tokenize"):
        return "tokenizer"
    if name.startswith("onnx-"):
        return "onnx runtime"
    if name.startswith("openvino-"):
        return "openvino"
    return "other"


@dataclass
class CpuAccount:
    """CPU seconds taken during some slices: the generator's and the server's, by thread role."""

    generator_s: float = 0.0
    server_s: Counter = field(default_factory=Counter)
    requests: float = 0.0  # answered while the CPU was read: a slice's count scaled to that window

    def add(self, generator_s: float, before: list[dict], after: list[dict], pids: Sequence[int], requests: float) -> None:
        """`before` and `after`: thread_cpu() of each of `pids`, in their order."""
        self.generator_s += generator_s
        self.requests += requests
        for pid, threads_before, threads_after in zip(pids, before, after):
            for tid, (name, seconds) in threads_after.items():
                self.server_s[thread_role(pid, tid, name)] += seconds - threads_before.get(tid, (name, 0.0))[1]

    def summary(self) -> dict:
        server = sum(self.server_s.values())
        per_request_ms = {role: 1000 * s / self.requests for role, s in self.server_s.items()} if self.requests else {}
        return {
            "generator_cpu_s": round(self.generator_s, 3),
            "server_cpu_s": round(server, 3),
            "generator_share": self.generator_s / (self.generator_s + server) if server else None,
            "generator_ms_per_request": 1000 * self.generator_s / self.requests if self.requests else None,
            "server_ms_per_request_by_thread": {role: round(ms, 4) for role, ms in sorted(per_request_ms.items())},
        }


def closed_loop(port: int, path: str, bodies: Path, concurrency: int, seconds: float, server_pids: Sequence[int],
                account: CpuAccount | None = None, start: int = 0) -> LoadResult:
    """`concurrency` wrk connections for `seconds`, posting the bodies from line `start` on: the answers, the
    latency distribution and (into `account`) the CPU the generator and each thread of the server's processes
    (one, or a pool's, app.serving.supervisor) took.

    The throughput, and the CPU, are counted between two readings inside the run (see COUNTED_FROM_S).
    """
    duration = max(1, round(seconds))
    origin = time.monotonic()
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "30s",
               "-s", str(POST_LUA), f"http://127.0.0.1:{port}", "--", path, str(bodies), str(start), f"{origin:.6f}"]
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, last = count_window(duration)
    time.sleep(max(0.0, origin + first - time.monotonic()))
    opened = time.monotonic() - origin
    before, generator_before = [thread_cpu(pid) for pid in server_pids], process_cpu(wrk.pid)
    time.sleep(max(0.0, origin + last - time.monotonic()))
    closed = time.monotonic() - origin
    after, generator_after = [thread_cpu(pid) for pid in server_pids], process_cpu(wrk.pid)
    stdout, stderr = wrk.communicate()
    if wrk.returncode:
        raise subprocess.CalledProcessError(wrk.returncode, command, stdout, stderr)
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    quantiles = next(line["quantiles_us"] for line in lines if "quantiles_us" in line)
    answered_at = next(line["answered_at_s"] for line in lines if "answered_at_s" in line)
    stats = next(line for line in lines if "requests" in line)
    result = LoadResult("closed", concurrency, closed - opened)
    # 1,000 evenly spaced quantiles stand for the slice's latencies: slices of one level, of equal length and
    # near-equal counts, pool into percentiles good to 0.1%
    result.latencies = [us / 1e6 for us in quantiles]
    errors = stats["connect_errors"] + stats["read_errors"] + stats["write_errors"] + stats["timeouts"]
    ok = stats["requests"] - stats["status_errors"]
    result.statuses = {200: ok, **({0: errors} if errors else {}), **({-1: stats["status_errors"]} if stats["status_errors"] else {})}
    result.in_window = answered_between(answered_at, opened, closed)
    if account is not None:
        # wrk runs past both readings (its done() comes after the second); were it gone, its CPU would be unknown
        generator = generator_after - generator_before if generator_before is not None and generator_after is not None else 0.0
        account.add(generator, before, after, server_pids, result.in_window)
    return result


# A slice's throughput and CPU are read from its first second (a quarter of a shorter slice) to 50 ms before its
# end. The count over the whole run fell short: the server starts it idle, and at the end the work done on the
# batches still running (at c=64 on roberta-base, two runs of about 0.3 s) was in the time but not in the count.
# Inside the run, the work in progress at the window's start and at its end are alike and cancel. The margin keeps
# the end before wrk's done(), which turns its histogram into quantiles (0.5 s of CPU at c=64).
COUNTED_FROM_S = 1.0


def count_window(duration: float) -> tuple[float, float]:
    """(from, to) in seconds after wrk is started: where a run of `duration` seconds is counted."""
    return min(COUNTED_FROM_S, duration / 4), duration - IN_WINDOW_MARGIN_S


def answered_between(times: list[float], first: float, last: float) -> int:
    return sum(1 for t in times if first < t <= last)
