"""`python -m bench --quick` end to end (short levels): every system answers and the report is complete."""

from __future__ import annotations

import pytest

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import REPO

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier


def test_quick_benchmark_writes_a_complete_report(tmp_path):
    command = [sys.executable, "-m", "bench", "--quick", "--seconds", "1", "--concurrency", "1", "8", "--soak", "200",
               "--systems", "A", "B", "C", "D", "--packed-concurrency", "8", "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["systems"]) == {"A", "B", "C", "D"}
    for name, system in report["systems"].items():
        assert [level["level"] for level in system["levels"]] == [1, 8], name
        assert all(level["requests_per_s"] > 0 and level["statuses"] == {"200": level["statuses"]["200"]}
                   for level in system["levels"]), name
        assert system["open_loop"]["requests_per_s"] > 0
    limits = report["limits"]["fp32"]
    assert limits["E_star_padding"] < limits["E_padding"]  # sorting by length removes padding
    assert report["systems"]["B"]["levels"][1]["mean_batch"] == 1.0  # batches of one really are
    assert set(report["targets"]) >= {"A(c32) / E", "A / B (c32)", "C / D (c32)"}
    soak = report["systems"]["C"]["soak"]
    assert soak["requests"] == 200 and soak["rss_after_mb"] > 0
    assert report["embedded_accuracy"]["fp32"] > 0.78  # the real sentences got the embedded model's real answers
    assert "| target | measured | bound | met |" in (tmp_path / "report.md").read_text()
    assert all("int8_E_star_seq_per_s" in values for values in report["limits_by_level"].values())
    packed = report["packed"]
    assert 100 < packed["workloads"]["mixed"]["tokens_max"] <= 128  # the long tail, cut at the model's limit
    assert packed["workloads"]["mixed"]["tokens_mean"] > 2 * packed["workloads"]["sst2"]["tokens_mean"]
    for workload in ("sst2", "mixed"):
        (level,) = packed["results"]["int8"][workload]["levels"]
        assert level["level"] == 8 and level["packed_req_s"] > 0 and level["padded_req_s"] > 0, workload
    assert "| int8 | mixed | 8 |" in (tmp_path / "report.md").read_text()
    if shutil.which("wrk") or os.environ.get("CI"):  # .ci/run installs wrk
        assert report["generator"] == "wrk"
        for name, system in report["systems"].items():
            for level in system["levels"]:
                cpu = level["cpu"]
                # /proc counts CPU in 10 ms ticks: wrk's share of a 1 s slice against a slow server can read 0.
                assert 0 <= cpu["generator_share"] < 0.5 and cpu["generator_ms_per_request"] >= 0, (name, cpu)
                if name in "ABC":  # the service: its event loop, tokenizer and ONNX Runtime threads apart
                    assert {"event loop", "tokenizer", "onnx runtime"} <= set(cpu["server_ms_per_request_by_thread"])
        assert sum(level["cpu"]["generator_cpu_s"] for system in report["systems"].values() for level in system["levels"]) > 0
        assert "A event-loop CPU per request at c=64 (ms)" not in report["targets"]  # no c=64 level in this run


def test_quick_task_benchmark_measures_every_system_for_every_task(tmp_path):
    command = [sys.executable, "-m", "bench.tasks", "--quick", "--seconds", "1", "--rounds", "1", "--concurrency", "1", "4",
               "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "tasks.json").read_text())
    assert set(report["tasks"]) == {"fill-mask", "token-classification", "question-answering"}
    for task, entry in report["tasks"].items():
        for name in ("S", "S8", "D"):
            levels = entry["systems"][name]["levels"]
            assert [level["level"] for level in levels] == [1, 4], (task, name)
            assert all(level["requests_per_s"] > 0 and set(level["statuses"]) == {"200"} for level in levels), (task, name)
        assert all(v["E_star_seq_per_s"] > 0 and v["int8_E_star_seq_per_s"] > 0 for v in entry["limits_by_level"].values())
    table = (tmp_path / "tasks.md").read_text()
    assert "| fill-mask | 4 |" in table and "| token-classification | 4 |" in table and "| question-answering | 4 |" in table


def test_quick_embeddings_benchmark_measures_the_service_and_sentence_transformers(tmp_path):
    # infinity (F) builds its own virtual environment on first use, minutes: left to the full benchmark.
    command = [sys.executable, "-m", "bench.embeddings", "--quick", "--seconds", "1", "--rounds", "1", "--concurrency", "1", "4",
               "--systems", "S8", "D", "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "embeddings.json").read_text())
    assert set(report["workloads"]) == {"feature-extraction", "text-ranking"}
    for task, entry in report["workloads"].items():
        assert set(entry["systems"]) == {"S", "S8", "D"}, task
        for name, system in entry["systems"].items():
            levels = system["levels"]
            assert [level["level"] for level in levels] == [1, 4], (task, name)
            assert all(level["requests_per_s"] > 0 and set(level["statuses"]) == {"200"} for level in levels), (task, name)
    assert all(v["E_star_seq_per_s"] > 0 for v in report["workloads"]["feature-extraction"]["limits_by_level"].values())
    assert "| feature-extraction | 4 |" in (tmp_path / "embeddings.md").read_text()


def test_a_generators_cpu_is_read_while_it_runs_and_not_once_it_is_gone():
    import time

    from bench.wrk import process_cpu

    # busy for 0.4 s, then idle: what wrk does under load, then while the bench reads its CPU
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 0.4\nwhile time.time() < end: pass\ntime.sleep(5)"])
    try:
        time.sleep(1.0)
        busy = process_cpu(child.pid)
        assert busy is not None and 0.3 <= busy <= 1.0, busy
    finally:
        child.kill()
        child.wait()
    assert process_cpu(child.pid) is None  # reaped: nothing to read


def test_settle_waits_for_a_server_to_finish_its_work_and_no_longer():
    import time

    from bench.servers import ServerProcess

    # busy for 0.6 s, then idle: a server answering the requests still in flight when a load ended
    spin = "import sys, time\nprint('spinning', flush=True)\nend = time.time() + 0.6\nwhile time.time() < end: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    server = ServerProcess(command=[], port=1, name="busy")
    server.process = child
    try:
        assert child.stdout.readline() == "spinning\n"  # the interpreter is up: its busy loop starts now
        started = time.monotonic()
        server.settle()
        waited = time.monotonic() - started
        assert 0.3 < waited < 2.0, waited
        started = time.monotonic()
        server.settle()  # idle now: back at once
        assert time.monotonic() - started < 0.5
    finally:
        child.kill()
        child.wait()


def test_a_limits_rate_is_that_of_a_whole_pass_whichever_batches_its_slices_reached():
    import numpy as np

    from bench.limits import pass_rate

    # three batches of 4 sequences: 16, 32 and 64 padded tokens, taking 1 s + 1 s per 16 tokens
    batches = [(np.ones((4, width), dtype=np.int64), np.ones((4, width), dtype=np.int64)) for width in (4, 8, 16)]
    seconds = {0: 2.0, 1: 3.0, 2: 5.0}
    whole = pass_rate(batches, {index: [took] for index, took in seconds.items()}, runs=1)
    assert whole == 12 / 10
    assert pass_rate(batches, {index: [took] for index, took in seconds.items()}, runs=2) == 2 * 12 / 10
    # the longest batch never ran (a plain count over the time would read 12 sequences / 7 s): the line through
    # the others gives it its time
    assert abs(pass_rate(batches, {0: [2.0, 2.0], 1: [3.0]}, runs=1) - 12 / 10) < 1e-9
    assert pass_rate(batches, {0: [2.0]}, runs=1) is None  # one size timed: no line to draw


@contextlib.contextmanager
def answering(on_body: Callable[[dict], None]) -> Iterator[int]:
    """A threaded HTTP server on 127.0.0.1 that hands each POSTed JSON body to `on_body` and answers 200 `{}`; its port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            on_body(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            # in one write: headers and body apart would wait on the client's delayed ACK (40 ms) from the second on
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_wrk_posts_the_bodies_from_the_line_it_is_told():
    import pytest

    from bench import wrk

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (.ci/run installs it)")
    seen: list[int] = []
    with answering(lambda body: seen.append(body["n"])) as port:
        bodies = wrk.bodies_file([{"n": index} for index in range(50)])
        wrk.closed_loop(port, "/", bodies, 1, 1, [os.getpid()], start=47)
    assert seen[:5] == [47, 48, 49, 0, 1]  # from line 48 on, then round again


def test_wrk_counts_the_answers_inside_its_run_at_the_rate_they_come():
    """A server that takes 50 ms an answer, two clients: 40 answers a second, counted between the two readings."""
    import time

    import pytest

    from bench import wrk

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (.ci/run installs it)")
    with answering(lambda body: time.sleep(0.05)) as port:
        bodies = wrk.bodies_file([{"n": index} for index in range(5)])
        account = wrk.CpuAccount()
        result = wrk.closed_loop(port, "/", bodies, 2, 3, [os.getpid()], account)
    first, last = wrk.count_window(3)
    assert (first, last) == (0.75, 2.95) and abs(result.seconds - (last - first)) < 0.1
    # Above 1.05 it would count answers from outside the window; a busy machine may answer more slowly.
    assert 0.6 < result.in_window / result.seconds / 40 < 1.05, result.in_window
    assert result.in_window < result.ok and account.requests == result.in_window


def test_a_concurrency_level_below_one_is_refused_before_the_run_starts():
    result = subprocess.run([sys.executable, "-m", "bench", "--packed-concurrency", "8", "0"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "a concurrency level is at least 1, not 0" in result.stderr


def test_the_report_names_the_cpu_and_the_vector_instructions_int8_depends_on(tmp_path):
    from bench.__main__ import describe_machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
    )
    assert describe_machine(cpuinfo).startswith("Intel(R) Xeon(R) Platinum 8375C (avx2, avx512f, avx512_vnni), ")
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n")
    assert describe_machine(cpuinfo).startswith("AMD EPYC (avx2), ")
    assert " cores, Python " in describe_machine(tmp_path / "absent")  # no /proc: the platform's name, still a line


def test_replicas_share_the_port_and_both_answer():
    """`python -m bench.studies.replicas`, one short round: both layouts answer without an error, and the kernel deals the
    connections out to every replica (each takes CPU), not to the first to bind. 32 connections: the kernel hashes
    each to a replica, and 8 would all land on one about once in 128 runs."""
    import pytest

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (.ci/run installs it)")
    command = [sys.executable, "-m", "bench.studies.replicas", "--seconds", "2", "--rounds", "1", "--concurrency", "32"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    row = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    for name in ("one process", "2 replicas"):
        assert row[name]["requests_per_s"] > 0 and row[name]["errors"] == 0, row
    assert len(row["2 replicas"]["cpu_s_by_process"]) == 2
    assert min(row["2 replicas"]["cpu_s_by_process"]) > 0.05, row
    assert "| 32 | 2 replicas |" in result.stdout
