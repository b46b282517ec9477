"""Native names for the threads the app starts, and how many cores it may use.

Python names its threads only for itself; the kernel sees every one as "python". Giving the OS thread the same
name lets `top -H`, py-spy and the benchmark's CPU account (bench/wrk.py) tell the tokenizer from the thread
that runs a model. ONNX Runtime's own pool threads keep the name of the thread that created them.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
from pathlib import Path

_PR_SET_NAME = 15  # prctl option; Linux keeps the first 15 bytes


def name_native_thread() -> None:
    """ThreadPoolExecutor initializer: the OS thread takes the Python thread's name (Linux only; else nothing).
    Threads this one starts (ONNX Runtime's pool) inherit it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: names are a convenience, never a reason to fail
        pass


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota.

    A container limited to 2 CPUs on a 64-core node sees 64 in its affinity; sizing threads from that
    would put 64 runs on 2 CPUs' worth of time (Kubernetes' `limits.cpu` is such a quota).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time per period the cgroup allows (cgroup v2 cpu.max, or v1 cfs quota); None: no limit."""
    try:
        if (root / "cpu.max").is_file():
            quota, _, period = (root / "cpu.max").read_text().partition(" ")
            return None if quota.strip() == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        return None if quota_us <= 0 else quota_us / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup files (not Linux, or hidden): no known limit
        return None
