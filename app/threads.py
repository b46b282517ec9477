"""Native names for the threads the app starts, and how many cores it may use.

Python names its threads only for itself; the kernel sees every one as "python". Giving the OS thread the same
name lets `top -H`, py-spy and the benchmark's CPU account (bench/wrk.py) tell the tokenizer from the thread
that runs a model. ONNX Runtime's own pool threads keep the name of the thread that created them.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger("app.threads")

_PR_SET_NAME = 15  # prctl option; Linux keeps the first 15 bytes


def name_native_thread(nice: int = 0, idle: bool = False) -> None:
    """ThreadPoolExecutor initializer: the OS thread takes the Python thread's name, and runs `nice` steps below
    normal priority, or under SCHED_IDLE with `idle` (Linux only; else nothing). Threads this one starts inherit
    all three."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: names are a convenience, never a reason to fail
        pass
    # On Linux a priority and a policy are per thread: this one only, and whatever it starts (ONNX Runtime's pool).
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    if idle:
        # A SCHED_IDLE thread gives way at once to any normal thread of its cgroup that wakes (the event loop, the
        # tokenizer), where nice only weighs its share. Lowering a policy needs no privilege; a sandbox may
        # still refuse it, and then the thread keeps its nice level.
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.warning("could not run %s under SCHED_IDLE (%s); it runs at nice %d", threading.current_thread().name, exc, nice)


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
