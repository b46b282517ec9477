"""Native names for the threads the app starts.

Python names its threads only for itself; the kernel sees every one as "python". Giving the OS thread the same
name lets `top -H`, py-spy and the benchmark's CPU account (bench/wrk.py) tell the tokenizer from the thread
that runs a model. ONNX Runtime's own pool threads keep the name of the thread that created them.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_PR_SET_NAME = 15  # prctl option; Linux keeps the first 15 bytes


def name_native_thread(nice: int = 0) -> None:
    """ThreadPoolExecutor initializer: the OS thread takes the Python thread's name, and runs `nice` steps below
    normal priority (Linux only; else nothing). Threads this one starts inherit both."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: names are a convenience, never a reason to fail
        pass
    if nice:
        # On Linux a priority is per thread: this one only, and whatever it starts (ONNX Runtime's pool).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
