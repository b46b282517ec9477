"""Servers as processes on 127.0.0.1, and what only the process knows (memory, CPU).

`ServerProcess` is the one way the tests, the benchmarks and the studies start a server: `python -m
app` with its flags, or any benchmarked system's command (the naive server, infinity); its output
read as it comes (and copied to a log file), its URL, readiness, its memory and CPU, signals, a
pause (SIGSTOP) while another system is measured, and a stop that drains.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.wrk import process_cpu

REPO = Path(__file__).resolve().parents[1]


READY_LINE = re.compile(r"(?:Uvicorn running on|processes ready on) (http://127\.0\.0\.1:\d+)")
POOL_READY_LINE = re.compile(r"processes ready on (http://127\.0\.0\.1:\d+)")  # the supervisor's, once all listen


class StartFailed(RuntimeError):
    """The server process exited, or never became ready, before /readyz said 200."""

    def __init__(self, message: str, exit_code: int | None, lines: list[str]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.first_line = next((line for line in lines if line.strip()), "")


def app_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without its ROBERTA_* settings (a server gets only those it is given), this
    checkout first on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ROBERTA_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def process_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB (nan once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"rss_mb": float("nan"), "peak_mb": float("nan")}
    found = {key: re.search(rf"{key}:\s+(\d+) kB", status) for key in ("VmRSS", "VmHWM")}
    if not all(found.values()):  # a zombie: exited, not yet reaped
        return {"rss_mb": float("nan"), "peak_mb": float("nan")}
    return {"rss_mb": round(int(found["VmRSS"].group(1)) / 1024, 1), "peak_mb": round(int(found["VmHWM"].group(1)) / 1024, 1)}


class ServerProcess:
    """One server as a process on 127.0.0.1, from start to a drained stop.

    By default `python -m app --host 127.0.0.1 --port PORT --log-level LEVEL FLAGS` (or `launcher` with those flags);
    `command` runs any other system instead (the naive server, infinity), listening on `port`. Its URL comes from
    its output where it says it listens (uvicorn's "Uvicorn running on"; for a pool, --processes N > 1, the
    supervisor's "all N processes ready on", once every process is ready), else from `port`. `processes`: the pool's
size where the flags do not say it (ROBERTA_PROCESSES in `env`). Ready once
    `ready_path` answers 200 (`auth`: the API key to ask with). Its output is kept line by line, and copied to
    `log` where one is given. It runs in a session of its own, so that `pause` stops it and all its processes.
    """

    def __init__(self, *flags: str, env: dict[str, str] | None = None, wait_ready: bool = True,
                 launcher: list[str] | None = None, port: int = 0, auth: str | None = None, start_s: float = 180,
                 log_level: str = "info", command: list[str] | None = None, ready_path: str = "/readyz",
                 log: Path | None = None, name: str = "app", processes: int | None = None) -> None:
        self.env = app_env(env)
        self.processes = 1  # above 1: the service's pool (app.serving.supervisor), ready once every process is
        self.ready_line: re.Pattern | None = None
        if command is None:
            launcher = launcher or [sys.executable, "-m", "app"]
            command = [*launcher, "--host", "127.0.0.1", "--port", str(port), "--log-level", log_level, *flags]
            self.processes = processes or pool_size(flags)
            if log_level in ("debug", "info"):
                self.ready_line = POOL_READY_LINE if self.processes > 1 else READY_LINE
        if not port and self.ready_line is None:
            raise ValueError("without a port, the server must say where it listens: run the app at log level info")
        self.command, self.name, self.log, self.ready_path = command, name, log, ready_path
        self.auth_headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        self._wait_ready = wait_ready
        self._start_s = start_s
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []  # its output so far, one entry a line
        self.url = "" if self.ready_line is not None else f"http://127.0.0.1:{port}"  # else from the line
        self.ready_lines = 0  # lines written before /readyz first said 200
        self.exited_at: float | None = None  # monotonic time the process was first seen to have exited
        # A pool's processes, each in a process group of its own: paused, resumed, settled and counted with it.
        self.members: list[int] = []

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        bound = threading.Event()
        threading.Thread(target=self._read_output, args=(bound,), daemon=True).start()
        try:
            self._wait(bound)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait(self, bound: threading.Event) -> None:
        deadline = time.monotonic() + self._start_s
        while self.ready_line is not None and not bound.wait(timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)  # let the reader take the last lines
                raise StartFailed(f"{self.name} did not start:\n" + self.output, self.process.poll(), self.lines)
        if not self.url:
            raise StartFailed(f"{self.name} did not start:\n" + self.output, self.process.poll(), self.lines)
        while self._wait_ready:
            try:
                if httpx.get(f"{self.url}{self.ready_path}", headers=self.auth_headers, timeout=5).status_code == 200:
                    self.ready_lines = len(self.lines)
                    self.members = self._pool_members()
                    if len(self.members) == self.processes or self.processes == 1:
                        return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StartFailed(f"{self.name} did not become ready:\n" + self.output, self.process.poll(), self.lines)
            time.sleep(0.05)

    def _read_output(self, bound: threading.Event) -> None:
        copy = self.log.open("w") if self.log is not None else None
        try:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                if copy is not None:
                    copy.write(line)
                    copy.flush()
                found = self.ready_line.search(line) if self.ready_line is not None else None
                if found and not bound.is_set():
                    self.url = found.group(1)
                    bound.set()
        finally:
            bound.set()  # the output ended: the process exited, whether it bound or not
            if copy is not None:
                copy.close()

    def _pool_members(self) -> list[int]:
        """A pool's processes that say they are ready (roberta_ready has a `pid` label there, app.serving.metrics)."""
        if self.processes == 1:
            return []
        text = httpx.get(f"{self.url}/metrics", headers=self.auth_headers, timeout=5).text
        return sorted(int(sample.labels["pid"]) for family in text_string_to_metric_families(text) if family.name == "roberta_ready"
                      for sample in family.samples if sample.value == 1.0 and "pid" in sample.labels)

    @property
    def output(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def tail(self, lines: int = 5) -> str:
        return " / ".join(self.lines[-lines:])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """The processes that serve: its own, or its pool's."""
        return self.members or [self.process.pid]

    @property
    def port(self) -> int:
        return self.host_port[1]

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def memory(self) -> dict[str, float]:
        """Resident and peak memory in MB, summed over its process and that process's children (a pool's
        processes, the supervisor's resource tracker): a sum counts shared pages in each, and adds peaks from
        different moments. nan once it has exited."""
        found = [process_memory(pid) for pid in (self.process.pid, *children(self.process.pid))]
        return {key: round(sum(entry[key] for entry in found), 1) for key in ("rss_mb", "peak_mb")}

    def rss_bytes(self) -> int:
        return int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{self.pid}/status").read_text()).group(1)) * 1024

    def cpu(self) -> float:
        """CPU seconds (user + system, every thread) its process and a pool's members have taken; nan once its
        process has ended."""
        spent = [process_cpu(pid) for pid in (self.process.pid, *self.members)]
        return float("nan") if spent[0] is None else sum(seconds or 0.0 for seconds in spent)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def sigterm(self) -> None:
        self.signal(signal.SIGTERM)  # a pool's supervisor hands it on; one to each member would skip the drain

    def pause(self) -> None:
        """SIGSTOP the server's process group and its members: while another system is measured, this one takes
        no CPU at all."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def settle(self, quiet_s: float = 0.05, most_s: float = 5.0) -> None:
        """Return once the server has taken under a tenth of a core for `quiet_s` (at most `most_s`).

        When a load ends, the batches already in the model still run for clients that are gone; paused
        then, a server would spend the start of its next slice on them.
        """
        deadline = time.monotonic() + most_s
        last = self.cpu()
        while last == last and time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = self.cpu()
            if now != now or now - last < 0.1 * quiet_s:
                return
            last = now

    def _signal_all(self, number: int) -> None:
        for send, pid in [(os.killpg, self.process.pid), *((os.kill, member) for member in self.members)]:
            try:
                send(pid, number)
            except ProcessLookupError:  # it has exited; __exit__ and its output say why
                pass

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        if self.process.poll() is None:
            return True
        self.exited_at = self.exited_at or time.monotonic()
        return False

    def wait_exit(self, seconds: float, poll_s: float = 0.5) -> tuple[float | None, int | None]:
        """Poll until the process exits or `seconds` pass: (seconds to exit, exit code), or (None, None)."""
        started = time.monotonic()
        while self.alive():
            if time.monotonic() - started >= seconds:
                return None, None
            time.sleep(poll_s)
        return round(max(0.0, self.exited_at - started), 2), self.process.returncode

    def kill(self) -> None:
        """SIGKILL its process alone (a pool's supervisor: what its members do then is the pool's to handle), and
        reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self._reap()

    def _reap(self) -> None:
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.resume()
            self.sigterm()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # it did not drain: nothing of it is left behind
                self._signal_all(signal.SIGKILL)
                self._reap()


def pool_size(flags: tuple[str, ...]) -> int:
    """How many processes `python -m app FLAGS` runs: --processes N or --processes=N, else one."""
    for flag, value in zip(flags, (*flags[1:], "")):
        if flag == "--processes":
            return int(value)
        if flag.startswith("--processes="):
            return int(flag.partition("=")[2])
    return 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            continue
    return found


def service(name: str, folder: Path, port: int, log: Path, task: str = "classify", **settings) -> ServerProcess:
    """This service on `folder`, as its `task` model (classify or fill-mask), with `settings` as flags."""
    return ServerProcess(f"--{task}-model", str(folder), *_flags(settings), port=port, log=log, name=name, log_level="warning")


def naive(checkpoint: Path, port: int, log: Path, task: str = "text-classification") -> ServerProcess:
    return ServerProcess(command=[sys.executable, "-m", "bench.systems.naive_server", str(checkpoint), str(port), task],
                         port=port, log=log, name="D")


def service_of(name: str, models: dict[str, Path], port: int, log: Path, **settings) -> ServerProcess:
    """This service on named model folders (`--models name=path,...`): any task, each served at its own route."""
    listed = ",".join(f"{model}={path}" for model, path in models.items())
    return ServerProcess("--models", listed, *_flags(settings), port=port, log=log, name=name, log_level="warning")


def _flags(settings: dict) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]


INFINITY_VENV = REPO / "build" / "infinity-venv"


def infinity(folder: Path, port: int, log: Path, *flags: str) -> ServerProcess:
    """F: infinity-emb on its optimum (ONNX) engine, in its own venv, built on first use from
    bench/systems/infinity-requirements.txt; `flags` go to the shim (and on to `infinity_emb v2`)."""
    python = INFINITY_VENV / "bin" / "python"
    if not python.is_file():
        print(f"  building {INFINITY_VENV} (infinity-emb 0.0.78 and its pins; a few minutes, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REPO / "bench" / "systems" / "infinity-requirements.txt")], check=True)
    command = [str(python), str(REPO / "bench" / "systems" / "infinity_shim.py"), "--model", str(folder), "--port", str(port),
               "--log-level", "warning", *flags]
    return ServerProcess(command=command, port=port, log=log, name="F", ready_path="/health")


def batch_counters(port: int) -> dict[str, float]:
    """The service's own batch counters; two snapshots give one load level's mean batch and padding."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("roberta_batch_size_sum", "roberta_batch_size_count", "roberta_batch_padding_ratio_sum")
    values = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    return values


def batching_over(pairs: list[tuple[dict[str, float], dict[str, float]]]) -> dict:
    """Mean batch size and padding share over (before, after) counter snapshots of each slice."""
    def moved(key: str) -> float:
        return sum(after[key] - before[key] for before, after in pairs)

    batches = moved("roberta_batch_size_count")
    if batches <= 0:
        return {"mean_batch": None, "mean_padding": None}
    return {
        "mean_batch": moved("roberta_batch_size_sum") / batches,
        "mean_padding": moved("roberta_batch_padding_ratio_sum") / batches,
    }
