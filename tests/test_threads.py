from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.threads import name_native_thread


def native_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native thread names are read from /proc")
def test_executor_threads_carry_their_python_name_to_the_kernel():
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-a-very-long-model-name", initializer=name_native_thread) as pool:
        assert pool.submit(native_name).result() == "onnx-a-very-lon"  # the kernel keeps 15 bytes
    if sys.version_info < (3, 14):  # from 3.14 Python names OS threads itself; before, only the initializer does
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plain") as pool:
            assert pool.submit(native_name).result() != "plain_0"
