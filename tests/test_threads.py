from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.engine.threads import cgroup_cpu_quota, name_native_thread, usable_cores


def native_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native thread names are read from /proc")
def test_executor_threads_carry_their_python_name_to_the_kernel():
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-a-very-long-model-name", initializer=name_native_thread) as pool:
        assert pool.submit(native_name).result() == "onnx-a-very-lon"  # the kernel keeps 15 bytes
    if sys.version_info < (3, 14):  # from 3.14 Python names OS threads itself; before, only the initializer does
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plain") as pool:
            assert pool.submit(native_name).result() != "plain_0"


def test_a_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1") == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path / "v1") is None
    assert cgroup_cpu_quota(tmp_path / "nothing") is None


def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_up(tmp_path):
    import os

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cores(tmp_path) == affinity  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cores(tmp_path) == 1  # half a CPU still runs one thread
    (tmp_path / "cpu.max").write_text(f"{100000 * (affinity + 8)} 100000\n")
    assert usable_cores(tmp_path) == affinity  # a quota above the affinity changes nothing
