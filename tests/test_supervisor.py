"""`python -m app --processes 2`: one port, two processes, one scrape for both, one drain, a dead one replaced."""

from __future__ import annotations

import os
import sys
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.serving.metrics import Metrics
from bench.servers import free_port
from server import ServerProcess, metric_value

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier

CONNECTIONS = 32  # all 32 hash to one process's socket once in 2^31 runs


def pool(folder: Path, *flags: str, tmp: Path | None = None, port: int | None = None) -> ServerProcess:
    """Two processes; with `tmp`, the supervisor's metrics folder goes there (TMPDIR)."""
    env = {"TMPDIR": str(tmp)} if tmp is not None else None
    return ServerProcess("--classify-model", str(folder), "--processes", "2", *flags, env=env, port=port or free_port())


def metrics_folders(tmp: Path) -> list[Path]:
    return list(tmp.glob("roberta-metrics-*"))


def ready_by_pid(url: str) -> dict[int, float]:
    """roberta_ready of every live process, by its `pid` label (multiprocess mode's `liveall`)."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return {int(s.labels["pid"]): s.value for f in families if f.name == "roberta_ready" for s in f.samples if "pid" in s.labels}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def load(url: str, requests_each: int, connections: int = CONNECTIONS) -> list[int]:
    """`connections` clients, each on its own keep-alive connection; the status of every answer."""
    statuses: list[int] = []

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            for _ in range(requests_each):
                statuses.append(http.post(f"{url}/classify", json={"inputs": "a fine film"}).status_code)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def test_both_processes_answer_on_one_port_and_any_scrape_counts_both(exported_classifier):
    with pool(exported_classifier) as server:
        pids = ready_by_pid(server.url)
        assert len(pids) == 2 and set(pids.values()) == {1.0} and server.process.pid not in pids
        before = {pid: cpu_seconds(pid) for pid in pids}
        statuses = load(server.url, requests_each=8)
        spent = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
        # A scrape on a fresh connection each time: the kernel deals them to either process, each adds up both.
        counted = [metric_value(server.url, "roberta_requests_total", endpoint="/classify", status="200") for _ in range(6)]
        capacity = metric_value(server.url, "roberta_queue_capacity")
    assert statuses == [200] * CONNECTIONS * 8
    assert all(seconds > 0.02 for seconds in spent.values()), spent  # the kernel gave both of them connections
    assert counted == [CONNECTIONS * 8] * 6
    assert capacity == 2 * 1024  # one queue per process, summed over the live ones


def test_sigterm_drains_every_process_and_exits_0(exported_classifier, tmp_path):
    # A lone request waits up to 3 s for company: the requests are queued, in both processes, at the signal.
    with pool(exported_classifier, "--max-wait-ms", "3000", tmp=tmp_path) as server:
        assert len(metrics_folders(tmp_path)) == 1
        pids = list(ready_by_pid(server.url))
        results: list[int] = []
        senders = [threading.Thread(target=lambda: results.extend(load(server.url, requests_each=1, connections=1)))
                   for _ in range(8)]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 10
        while metric_value(server.url, "roberta_queue_depth") < 8:  # summed over both processes' queues
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.signal(signal.SIGTERM)
        for sender in senders:
            sender.join(timeout=60)
        code = server.wait(timeout=60)
    assert results == [200] * 8  # every request accepted before the signal was answered
    assert code == 0
    assert server.output.count("received SIGTERM: draining") == 2  # once each: the supervisor handed it on once
    assert all(ended(pid) for pid in pids)
    assert metrics_folders(tmp_path) == []


def test_a_process_that_dies_is_replaced_and_leaves_the_scrape(exported_classifier):
    with pool(exported_classifier) as server:
        killed, kept = list(ready_by_pid(server.url))
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        # The new process shows 0 from its start until it is warm and listens.
        while len(now := ready_by_pid(server.url)) < 2 or killed in now or set(now.values()) != {1.0}:
            assert time.monotonic() < deadline, server.output
            time.sleep(0.2)
        statuses = load(server.url, requests_each=2)
    assert kept in now
    assert statuses == [200] * CONNECTIONS * 2
    assert "exited with status -9; starting another" in server.output


def test_a_model_that_does_not_load_stops_the_pool_with_one_line(tmp_path):
    server = pool(tmp_path / "missing")
    with pytest.raises(RuntimeError, match="did not start"):
        server.__enter__()
    assert server.wait(timeout=30) == 1
    errors = [line for line in server.lines if line.startswith("error:")]
    assert len(errors) == 1 and "missing" in errors[0], server.output


def test_a_killed_supervisor_takes_its_processes_with_it(exported_classifier, tmp_path):
    with pool(exported_classifier, tmp=tmp_path) as server:  # its metrics folder is left behind, in tmp_path
        pids = list(ready_by_pid(server.url))
        server.kill()
        deadline = time.monotonic() + 30
        while not all(ended(pid) for pid in pids):
            assert time.monotonic() < deadline, f"still running: {[pid for pid in pids if not ended(pid)]}"
            time.sleep(0.1)


def test_a_signal_while_the_pool_starts_ends_it_cleanly(exported_classifier, tmp_path):
    # SIGTERM the moment the first process is ready: the second is still loading, and has accepted nothing.
    command = [sys.executable, "-m", "app", "--classify-model", str(exported_classifier), "--processes", "2",
               "--host", "127.0.0.1", "--port", str(free_port())]
    supervisor = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in supervisor.stdout:
        lines.append(line)
        if "process 1 of 2" in line:
            supervisor.send_signal(signal.SIGTERM)
    code = supervisor.wait(timeout=60)
    output = "".join(lines)
    assert code == 0, output
    assert "process 2 of 2" not in output and "all 2 processes ready" not in output
    assert "Traceback" not in output and metrics_folders(tmp_path) == []


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_taken_stops_the_pool_before_any_model_loads(exported_classifier, reuse_port):
    # Taken by a socket with SO_REUSEPORT too: another pool on the port would otherwise share its connections.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT if reuse_port else socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        command = [sys.executable, "-m", "app", "--classify-model", str(exported_classifier), "--processes", "2",
                   "--host", "127.0.0.1", "--port", str(holder.getsockname()[1])]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot bind" in errors[0] and "ROBERTA_PORT" in errors[0], result.stderr
    assert "app.engine.onnx_runtime" not in result.stderr  # no model was loaded


def test_multiprocess_metrics_refuse_a_client_imported_without_the_folder(tmp_path):
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: its values live in memory.
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiprocess_dir=tmp_path)


def test_under_uvicorn_the_setting_says_it_does_not_apply_and_the_app_serves_alone(exported_classifier):
    env = {"ROBERTA_CLASSIFY_MODEL": str(exported_classifier), "ROBERTA_PROCESSES": "2"}
    launcher = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    with ServerProcess(env=env, launcher=launcher) as server:
        answer = httpx.post(f"{server.url}/classify", json={"inputs": "a fine film"})
        by_pid, ready = ready_by_pid(server.url), metric_value(server.url, "roberta_ready")
    assert answer.status_code == 200
    assert "ROBERTA_PROCESSES=2 is for python -m app" in server.output
    assert by_pid == {} and ready == 1.0  # one process: roberta_ready is one series, no pid label
