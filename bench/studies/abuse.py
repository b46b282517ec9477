"""Attack and new-user cases against a real `python -m app` process: one figure per case.

What it measures (case letters as in `--cases`):

  A  fill-mask memory: big-vocabulary model, 32 texts of ~505 tokens, then 64 texts x 8 masks (time, RSS)
  B  headers: an 8 MB header, ten unfinished 50 MB headers, a body that never completes, half a request line
  C  SIGTERM: with a stalled upload, with 20 clients that never read a large answer, keep-alive during the drain
  D  event-loop stalls: worst /healthz latency (polled every 10 ms) while heavy requests run (tiny and big vocab)
  E  1,000 long fill-mask targets: the size of the X-Warning header and whether httpx / urllib can read it
  F  a queue smaller than one request (--max-queue 8, 16 inputs): statuses and Retry-After
  G  exposure: /info without a key, the Server header, /docs /redoc /openapi.json with everything protected
  H  contract: UTF-16/32 bodies, text/json, empty body, a protocol error, error messages, a 1 MB key
  I  start-up errors: exit codes, stderr lines, tracebacks; WARNING lines of a normal start

On the model repository (below), every request and server under a memory watchdog (SIGKILL past 6,000 MB):

  J  zero-shot templates: a 100,000-field template, a ~600 KB template of 1,000-character labels, "{{}}"
  K  zero-shot with a 900 KB text x 64 labels: time and RSS; CPU spent after the client left; another model's latency
     beside it, and beside one unbroken 1 MB word x 64 labels (K4)
  L  token classification with stride 509: one 300 KB text, 64 texts of 4 KB
  M  pipelined GET /healthz (2 MB per connection) never read, on 1, 10, 30 connections: RSS, a new client's wait
  N  RSS ratchet: J1, L1, K1, M2 one after another on one server
  O  two pools (--processes 2) started on one port at once
  P  small ones: API keys with a newline / blank / two headers, a trailing-slash redirect, HEAD, HTTP/2.0 and
     HTTP/0.9 request lines, a port already taken, SIGTERM under load on a pool, a SIGKILLed pool's metrics
     folder, access logs into a pipe nobody reads

The code under test is the repository in the current directory (`python -m app` is started with
that directory first on sys.path). Models are exported on first use into build/abuse/ and reused
(only those the chosen cases need):

  models/roberta-mini-sst2, models/roberta-mini-mlm   -> build/abuse/<name> (fp32 + INT8)
  a RobertaForMaskedLM with roberta-base's vocabulary (50,265) and length (512) but a 2-layer,
  64-wide encoder, random weights, the real roberta-base tokenizer  -> build/abuse/bigvocab-onnx (fp32)
  cases J-P: build/abuse/repository/{sentiment,mlm,ner,nli}, the same shape (sentiment: negative/positive,
  mlm: bigvocab-onnx, ner: O and B-/I- PER ORG LOC MISC, nli: contradiction/neutral/entailment), fp32,
  served with --model-repository build/abuse/repository --processes 1

Data from ../shared/data (SST-2 dev sentences, the roberta-base tokenizer files, books/books_clean.txt).
Run from a repo root:

    python -m bench.studies.abuse --out /tmp/abuse.json            # every case, ~10 min on two cores (A-I) + ~7 min (J-P)
    python -m bench.studies.abuse --cases B H --out /tmp/bh.json   # a subset
    python -m bench.studies.abuse --cases K --out /tmp/k.json      # one case

stdout is a Markdown table (case, what was sent, what was observed); --out gets the same figures as
JSON, case id -> dict. A case that fails records its error and the run goes on; every wait has a timeout
and every server process is killed on exit.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import re
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import servers
from bench.servers import POOL_READY_LINE, StartFailed
from bench.wrk import process_cpu

REPO = Path.cwd()
BUILD = REPO / "build" / "abuse"
DEFAULT_SHARED = REPO.parent / "shared" / "data"
MIB = 1024 * 1024
JSON_HEADERS = {"Content-Type": "application/json"}
LONG_WAIT = {"X-Request-Timeout": "120"}  # heavy requests: measure the stall, not the default 30 s deadline


def log(message: str) -> None:
    print(f"[abuse {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- processes

_CHILDREN: set[subprocess.Popen] = set()


def _kill(process: subprocess.Popen) -> None:
    """Kill a child and reap it, giving up after 10 s (it may be stopped or stuck in the kernel)."""
    if process.poll() is None:
        process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _kill_children() -> None:
    for process in list(_CHILDREN):
        _kill(process)


atexit.register(_kill_children)


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return servers.app_env(extra)


memory_mb = servers.process_memory


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    spent = process_cpu(pid)
    return float("nan") if spent is None else spent


class Server(servers.ServerProcess):
    """bench.servers.ServerProcess, killed at exit if a case left it running, with what these cases read from /info and
    /metrics."""

    def __enter__(self) -> Server:
        try:
            super().__enter__()
        finally:
            if self.process is not None:
                _CHILDREN.add(self.process)
        return self

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        _CHILDREN.discard(self.process)

    def rss(self) -> float:
        return self.memory()["rss_mb"]

    def _model_of(self, task: str) -> tuple[str, dict]:
        """(name, /info entry) of the model serving `task`: /info keys models by name now, by task before."""
        models = httpx.get(f"{self.url}/info", headers=self.auth_headers, timeout=10).json()["models"]
        return next((name, entry) for name, entry in models.items() if entry.get("task", name) == task)

    def run_overhead_tokens(self, task: str = "fill-mask") -> float | None:
        """The batching cost model's cost of a run by its tokens, as /info reports it (it decides how batches are cut)."""
        try:
            return self._model_of(task)[1]["batching"]["run_overhead_tokens"]
        except Exception:
            return None

    def batches(self, task: str = "fill-mask") -> tuple[float, float]:
        """(batches run, sequences batched) so far for the model of `task`, from /metrics."""
        try:
            model = self._model_of(task)[0]
            text = httpx.get(f"{self.url}/metrics", headers=self.auth_headers, timeout=10).text
        except (httpx.HTTPError, StopIteration, KeyError, ValueError):
            return float("nan"), float("nan")

        def sample(name: str) -> float:
            found = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
            return float(found.group(1)) if found else float("nan")

        return sample("roberta_batch_size_count"), sample("roberta_batch_size_sum")


# --------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Models:
    classify: Path
    fill_mask: Path
    bigvocab: Path
    repository: Path = BUILD / "repository"  # cases J-P: sentiment, mlm, ner, nli

    def repository_flags(self, processes: int = 1) -> list[str]:
        return ["--model-repository", str(self.repository), "--processes", str(processes)]

    def tiny_flags(self) -> list[str]:
        return ["--classify-model", str(self.classify), "--fill-mask-model", str(self.fill_mask)]

    def big_flags(self) -> list[str]:
        return ["--classify-model", str(self.classify), "--fill-mask-model", str(self.bigvocab), "--precision", "fp32"]


def run_export(source: Path, output: Path, *flags: str) -> None:
    command = [sys.executable, "-m", "export", str(source), "--output", str(output), "--reuse", *flags]
    done = subprocess.run(command, cwd=REPO, env=server_env(), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")


def write_bigvocab_checkpoint(output: Path, tokenizer_dir: Path, architecture: str = "RobertaForMaskedLM",
                              labels: tuple[str, ...] = ()) -> None:
    """roberta-base's vocabulary and positions on a 2-layer, 64-wide encoder with random weights: a masked LM, or
    `architecture` (RobertaForSequenceClassification, ...) with `labels` as its id2label."""
    import shutil

    import torch
    import transformers
    from transformers import RobertaConfig, RobertaTokenizerFast

    torch.manual_seed(0)
    named = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}} if labels else {}
    config = RobertaConfig(
        vocab_size=50265, max_position_embeddings=514, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, architectures=[architecture], **named,
    )
    tokenizer = RobertaTokenizerFast(
        vocab_file=str(tokenizer_dir / "vocab.json"), merges_file=str(tokenizer_dir / "merges.txt"), model_max_length=512
    )
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    getattr(transformers, architecture)(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(output)


NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
REPOSITORY_MODELS = {  # name -> (architecture, labels); "mlm" is the big-vocab fill-mask export
    "sentiment": ("RobertaForSequenceClassification", ("negative", "positive")),
    "ner": ("RobertaForTokenClassification", NER_LABELS),
    "nli": ("RobertaForSequenceClassification", ("contradiction", "neutral", "entailment")),
}
TINY_CASES = set("ABCDEFGHI")  # the cases on the tiny models and the big-vocab one; J-P use the repository


def prepare_models(shared: Path, cases: list[str] | None = None) -> Models:
    """The exports the chosen cases need (every case's when `cases` is None), each reused when up to date."""
    BUILD.mkdir(parents=True, exist_ok=True)
    cases = list(CASES) if cases is None else cases
    models = Models(BUILD / "roberta-mini-sst2", BUILD / "roberta-mini-mlm", BUILD / "bigvocab-onnx")
    if TINY_CASES & set(cases):
        for name in ("roberta-mini-sst2", "roberta-mini-mlm"):
            log(f"export models/{name} -> build/abuse/{name} (reused when up to date)")
            run_export(REPO / "models" / name, BUILD / name, "--quantize", "int8")
    checkpoint = BUILD / "bigvocab-ckpt"
    if not (checkpoint / "config.json").is_file():
        log("writing the big-vocab fill-mask checkpoint (random weights, roberta-base tokenizer)")
        write_bigvocab_checkpoint(checkpoint, shared / "roberta-base-tokenizer")
    log("export build/abuse/bigvocab-ckpt -> build/abuse/bigvocab-onnx (fp32)")
    run_export(checkpoint, models.bigvocab)
    if set(cases) - TINY_CASES:
        prepare_repository(shared, models)
    return models


def prepare_repository(shared: Path, models: Models) -> None:
    """build/abuse/repository: one symlink per model to its fp32 export (written and exported when missing)."""
    exports = {"mlm": models.bigvocab}
    for name, (architecture, labels) in REPOSITORY_MODELS.items():
        checkpoint = BUILD / f"{name}-ckpt"
        if not (checkpoint / "config.json").is_file():
            log(f"writing the {name} checkpoint ({architecture}, labels {', '.join(labels)}; random weights)")
            write_bigvocab_checkpoint(checkpoint, shared / "roberta-base-tokenizer", architecture, labels)
        log(f"export build/abuse/{name}-ckpt -> build/abuse/{name}-onnx (fp32)")
        run_export(checkpoint, BUILD / f"{name}-onnx")
        exports[name] = BUILD / f"{name}-onnx"
    models.repository.mkdir(parents=True, exist_ok=True)
    for name, target in exports.items():
        link = models.repository / name
        relative = Path("..") / target.name
        if link.is_symlink() and os.readlink(link) == str(relative):
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(relative, target_is_directory=True)


# --------------------------------------------------------------------------------------------- request bodies


class TextMaker:
    """Long SST-2 dev texts with masks, their length counted by the model's own tokenizer.json."""

    def __init__(self, shared: Path, model_folder: Path) -> None:
        from tokenizers import Tokenizer

        rows = (shared / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
        self.sentences = [row.split("\t")[0].strip() for row in rows if row.strip()]
        self.tokenizer = Tokenizer.from_file(str(model_folder / "tokenizer.json"))
        self.max_seq_len = int(json.loads((model_folder / "manifest.json").read_text())["max_seq_len"])
        self.mask_id = self.tokenizer.token_to_id("<mask>")

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)  # special tokens included

    def text(self, start: int, tokens: int) -> str:
        """SST-2 sentences from `start` on, each added while the whole stays within `tokens` (specials included)."""
        parts: list[str] = []
        for step in range(len(self.sentences)):
            candidate = parts + [self.sentences[(start + step) % len(self.sentences)]]
            if self.count(" ".join(candidate)) <= tokens:
                parts = candidate
            if self.count(" ".join(parts)) >= tokens - 2 or step > 400:
                break
        return " ".join(parts)

    def masked(self, count: int, masks: int, tokens: int | None = None) -> list[str]:
        """`count` distinct texts of about `tokens` tokens (default: as long as fits with the masks), `masks` masks each."""
        tokens = tokens if tokens is not None else self.max_seq_len - masks - 2
        texts = []
        for index in range(count):
            words = self.text(index * 13, tokens).split(" ")
            for slot in range(masks, 0, -1):  # from the right, so earlier positions stay put
                words.insert(slot * len(words) // (masks + 1), "<mask>")
            text = " ".join(words)
            ids = self.tokenizer.encode(text).ids
            if ids.count(self.mask_id) != masks or len(ids) > self.max_seq_len:
                raise RuntimeError(f"text {index}: {ids.count(self.mask_id)} masks, {len(ids)} tokens")
            texts.append(text)
        return texts

    def mean_tokens(self, texts: list[str]) -> float:
        return round(sum(self.count(t) for t in texts) / len(texts), 1)


def dumps(value) -> bytes:
    return json.dumps(value).encode()


def one_mb_word(room: int) -> str:
    """A single word that leaves `room` bytes of the 1 MiB body limit for the rest of the JSON."""
    return "a" * (MIB - room)


# --------------------------------------------------------------------------------------------- clients


@dataclass
class Answer:
    status: int | None
    seconds: float
    size: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None

    def json_error(self) -> tuple[str | None, str | None]:
        try:
            value = json.loads(self.body)
        except ValueError:
            return None, None
        if isinstance(value, dict):
            return value.get("error_type"), value.get("error")
        return None, None

    def short(self) -> str:
        """'200', '413 input_too_long', or the client's exception."""
        if self.error:
            return self.error
        error_type = self.json_error()[0] if self.status != 200 else None
        return f"{self.status} {error_type}" if error_type else str(self.status)


def post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 300,
         client: httpx.Client | None = None, keep_body: bool = True) -> Answer:
    started = time.perf_counter()
    try:
        if client is None:
            with httpx.Client(timeout=timeout) as own:
                response = own.post(url + path, content=body, headers={**JSON_HEADERS, **(headers or {})})
        else:
            response = client.post(url + path, content=body, headers={**JSON_HEADERS, **(headers or {})})
        return Answer(
            response.status_code, round(time.perf_counter() - started, 3), len(response.content),
            dict(response.headers), response.content if keep_body else response.content[:4096],
        )
    except Exception as exc:
        return Answer(None, round(time.perf_counter() - started, 3), error=f"{type(exc).__name__}: {str(exc)[:120]}")


class HealthPoller:
    """GET /healthz every `interval_s` on one keep-alive connection, in a thread: the worst latency seen."""

    def __init__(self, url: str, interval_s: float = 0.01, timeout_s: float = 120) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    self._probe(client)
                except Exception as exc:
                    self.failures.append(type(exc).__name__)
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(self.interval_s)

    def _probe(self, client: httpx.Client) -> None:
        client.get(f"{self.url}/healthz").raise_for_status()

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.latencies and time.monotonic() < deadline:  # connected and answered once before the load starts
            time.sleep(0.005)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)

    @property
    def worst_ms(self) -> float:
        return round(max(self.latencies, default=float("nan")) * 1000, 1)

    def figures(self) -> dict:
        return {"worst_healthz_ms": self.worst_ms, "healthz_polls": len(self.latencies), "healthz_failures": len(self.failures)}


def idle_worst_healthz(url: str, seconds: float = 2.0) -> float:
    with HealthPoller(url) as poller:
        time.sleep(seconds)
    return poller.worst_ms


def raw_connect(server: Server, timeout: float = 10, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: it sets the TCP window
    sock.settimeout(timeout)
    sock.connect(server.host_port)
    return sock


def await_reply(sock: socket.socket, seconds: float) -> tuple[str, float]:
    """Wait up to `seconds` for the first line the server sends, or for it to close: (what, after how long)."""
    started = time.monotonic()
    data = b""
    while True:
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            return ("nothing, still open" if not data else first_line(data)), round(time.monotonic() - started, 2)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError as exc:
            return f"reset ({type(exc).__name__})", round(time.monotonic() - started, 2)
        if not chunk:
            return (first_line(data) + ", then closed" if data else "closed"), round(time.monotonic() - started, 2)
        data += chunk
        if b"\r\n" in data:
            return first_line(data), round(time.monotonic() - started, 2)


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("latin-1")[:120]


def read_response(sock: socket.socket, timeout: float = 60) -> tuple[str, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 response from a raw socket: status line, headers, body (by Content-Length, else to close)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0], headers, body


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


# --------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    out: Path | None
    figures: dict[str, dict] = field(default_factory=dict)
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def print_header(self) -> None:
        print("| case | sent | observed |\n| --- | --- | --- |", flush=True)

    def add(self, case_id: str, sent: str, observed: str, figures: dict) -> None:
        self.rows.append((case_id, sent, observed))
        self.figures[case_id] = {"sent": sent, "observed": observed, **figures}
        cells = (cell.replace("|", "\\|").replace("\n", " ") for cell in (case_id, sent, observed))
        print("| " + " | ".join(cells) + " |", flush=True)
        self.save()

    def save(self) -> None:
        if self.out is not None:
            self.out.write_text(json.dumps(self.figures, indent=2, default=str) + "\n")


Outcome = tuple[str, dict]  # (observed, figures)


def attempt(report: Report, case_id: str, sent: str, measure: Callable[[], Outcome]) -> dict:
    """Run one measurement; an exception becomes the observed figure and the run goes on."""
    log(f"{case_id}: {sent}")
    try:
        observed, figures = measure()
    except Exception as exc:
        observed = f"ERROR {type(exc).__name__}: {str(exc)[:300]}"
        figures = {"error": observed, "traceback": traceback.format_exc()[-2000:]}
    report.add(case_id, sent, observed, figures)
    return figures


@dataclass
class Context:
    models: Models
    shared: Path
    report: Report

    def texts(self, folder: Path) -> TextMaker:
        return TextMaker(self.shared, folder)


# --------------------------------------------------------------------------------------------- A: fill-mask memory


def case_a(ctx: Context) -> None:
    maker = ctx.texts(ctx.models.bigvocab)
    with Server(*ctx.models.big_flags()) as server:
        one = maker.masked(32, masks=1, tokens=503)
        attempt(ctx.report, "A1", f"big-vocab fill-mask: 32 texts x ~{maker.mean_tokens(one):.0f} tokens, 1 mask, top_k 1",
                lambda: fill_mask_memory(server, one))
        eight = maker.masked(64, masks=8)
        attempt(ctx.report, "A2", f"big-vocab fill-mask: 64 texts x ~{maker.mean_tokens(eight):.0f} tokens, 8 masks, top_k 1",
                lambda: fill_mask_memory(server, eight))


def fill_mask_memory(server: Server, texts: list[str]) -> Outcome:
    body = dumps({"inputs": texts, "parameters": {"top_k": 1}})
    before = server.rss()
    batches_before, sequences_before = server.batches()
    answer = post(server.url, "/fill-mask", body, LONG_WAIT)
    after = server.memory()
    time.sleep(2)
    idle = server.rss()
    batches_after, sequences_after = server.batches()
    batches = batches_after - batches_before
    mean_batch = (sequences_after - sequences_before) / batches if batches else float("nan")
    error_type, message = answer.json_error() if answer.status != 200 else (None, None)
    figures = {
        "batches": batches, "mean_batch": round(mean_batch, 1), "run_overhead_tokens": server.run_overhead_tokens(),
        "status": answer.status, "error": answer.error, "error_type": error_type, "message": (message or "")[:200],
        "seconds": answer.seconds, "body_kb": round(len(body) / 1024, 1), "response_kb": round(answer.size / 1024, 1),
        "rss_before_mb": before, "rss_after_mb": after["rss_mb"], "rss_after_2s_idle_mb": idle, "peak_rss_mb": after["peak_mb"],
    }
    observed = (
        f"{answer.short()} in {answer.seconds:.1f} s; body {figures['body_kb']:.0f} KB; "
        f"RSS {before:.0f} -> {after['rss_mb']:.0f} MB (2 s idle: {idle:.0f}; peak {after['peak_mb']:.0f}); "
        f"{batches:.0f} batches of {mean_batch:.1f}"
    )
    return observed, figures


# --------------------------------------------------------------------------------------------- B: headers


def case_b(ctx: Context) -> None:
    with Server(*ctx.models.tiny_flags()) as server:
        attempt(ctx.report, "B1", "GET /healthz with one 8 MB header value (raw socket)", lambda: big_header(server))
        attempt(ctx.report, "B2", "10 connections, each a request line + a 50 MB header never finished (64 KB chunks, 30 s)",
                lambda: endless_headers(server))
        attempt(ctx.report, "B3", "POST /classify, Content-Length 1000, 15 body bytes, then nothing (wait 40 s)",
                lambda: stalled_body(server))
        attempt(ctx.report, "B4", "half a request line, then nothing (wait 40 s)", lambda: half_request_line(server))


def big_header(server: Server) -> Outcome:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 * MIB) + b"\r\n\r\n"
    started = time.monotonic()
    with raw_connect(server, timeout=30) as sock:
        send_error = None
        try:
            sock.sendall(request)
        except OSError as exc:
            send_error = type(exc).__name__
        reply, _ = await_reply(sock, 30)
    seconds = round(time.monotonic() - started, 2)
    observed = f"{reply} after {seconds} s" + (f" (send failed: {send_error})" if send_error else "")
    return observed, {"reply": reply, "seconds": seconds, "send_error": send_error, "rss_mb_after": server.rss()}


def endless_headers(server: Server, connections: int = 10, total: int = 50 * MIB, give_up_s: float = 30) -> Outcome:
    before = server.rss()
    cpu_before = cpu_seconds(server.pid)
    results: list[dict] = [{} for _ in range(connections)]
    sockets: list[socket.socket] = []
    chunk = b"a" * 65536

    def feed(index: int) -> None:
        sent, started = 0, time.monotonic()
        try:
            sock = raw_connect(server, timeout=5)
        except OSError as exc:
            results[index] = {"sent": 0, "end": f"connect failed: {type(exc).__name__}"}
            return
        sockets.append(sock)
        end = f"gave up at {give_up_s:.0f} s"
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < total:
                left = give_up_s - (time.monotonic() - started)
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    sent += sock.send(chunk[: min(len(chunk), total - sent)])
                except TimeoutError:
                    break
            if sent >= total:
                end = "sent all"
        except OSError as exc:
            end = f"closed by server ({type(exc).__name__})"
        results[index] = {"sent": sent, "end": end, "seconds": round(time.monotonic() - started, 2)}

    threads = [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.rss())
        time.sleep(0.25)
    with_open = server.rss()
    cpu = round(cpu_seconds(server.pid) - cpu_before, 1)
    for sock in sockets:
        sock.close()
    time.sleep(2)
    after_close = server.rss()
    health = healthz_status(server)
    ends = sorted({r["end"] for r in results})
    sent_mb = [round(r["sent"] / MIB, 1) for r in results]
    observed = (
        f"{'; '.join(ends)}; MB sent per connection {sent_mb}; RSS {before:.0f} -> peak {peak:.0f}, "
        f"{with_open:.0f} with them open, {after_close:.0f} 2 s after closing; server CPU {cpu} s; /healthz then {health}"
    )
    figures = {"connections": results, "server_cpu_s": cpu, "rss_before_mb": before, "rss_peak_mb": peak, "rss_with_open_mb": with_open,
               "rss_after_close_mb": after_close, "healthz_after": health}
    return observed, figures


def healthz_status(server: Server) -> str:
    try:
        return str(httpx.get(f"{server.url}/healthz", timeout=10).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


STALLED_POST = (
    b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    b'{"inputs": "ab'  # 15 of the 1,000 bytes promised
)


def stalled_body(server: Server) -> Outcome:
    with raw_connect(server) as sock:
        sock.sendall(STALLED_POST)
        reply, seconds = await_reply(sock, 40)
    return f"{reply} after {seconds} s", {"reply": reply, "seconds": seconds}


def half_request_line(server: Server) -> Outcome:
    with raw_connect(server) as sock:
        sock.sendall(b"GET /hea")
        reply, seconds = await_reply(sock, 40)
    return f"{reply} after {seconds} s", {"reply": reply, "seconds": seconds}


# --------------------------------------------------------------------------------------------- C: SIGTERM


def case_c(ctx: Context) -> None:
    flags = [*ctx.models.tiny_flags(), "--shutdown-timeout-s", "5"]
    attempt(ctx.report, "C1", "--shutdown-timeout-s 5: a client sent 15 of 1,000 body bytes, then SIGTERM (watch 20 s)",
            lambda: sigterm_with_stalled_upload(flags))
    maker = ctx.texts(ctx.models.fill_mask)
    texts = maker.masked(64, masks=8)
    attempt(ctx.report, "C2", "--shutdown-timeout-s 5 --max-queue 2048: 20 clients (SO_RCVBUF 4 KB) each POST /fill-mask "
            "64 texts x 8 masks top_k 100 and never read; then SIGTERM (watch 30 s)",
            lambda: sigterm_with_unread_answers([*flags, "--max-queue", "2048"], texts))
    long_texts = ctx.texts(ctx.models.bigvocab).masked(8, masks=1, tokens=503)
    drain_flags = [*ctx.models.big_flags(), "--shutdown-timeout-s", "5", "--shutdown-delay-s", "3", "--max-batch-tokens", "4096"]
    attempt(ctx.report, "C3", "big-vocab server --shutdown-delay-s 3 --shutdown-timeout-s 5 --max-batch-tokens 4096: "
            "keep-alive POST /classify every 0.1 s from SIGTERM on, while 6 fill-mask requests (8 x ~503 tokens, top_k 1: "
            "model time, not event-loop time) keep the drain open",
            lambda: keep_alive_during_drain(drain_flags, long_texts))


def exit_figures(server: Server, seconds: float) -> tuple[str, dict]:
    """Watch for `seconds` after a signal: the exit time and code, or how busy it still is (CPU over the last 5 s)."""
    started = time.monotonic()
    server.wait_exit(seconds - 5)
    cpu_before = cpu_seconds(server.pid)
    server.wait_exit(5)
    if server.alive():
        cpu = round(cpu_seconds(server.pid) - cpu_before, 2)
        rss = server.rss()
        return (f"still alive after {seconds:.0f} s (CPU {cpu} s in the last 5 s, RSS {rss:.0f} MB)",
                {"alive_after_s": seconds, "exit_s": None, "exit_code": None, "cpu_last_5s": cpu, "rss_mb": rss})
    exit_s = round(server.exited_at - started, 2)
    code = server.process.returncode
    return f"exited after {exit_s} s with code {code}", {"alive_after_s": None, "exit_s": exit_s, "exit_code": code}


def sigterm_with_stalled_upload(flags: list[str]) -> Outcome:
    with Server(*flags) as server, raw_connect(server) as sock:
        sock.sendall(STALLED_POST)
        time.sleep(0.5)
        server.sigterm()
        observed, figures = exit_figures(server, 20)
        reply, _ = await_reply(sock, 0.5)
        figures["client_got"] = reply
        return f"{observed}; the client got: {reply}", figures


def watch_until_idle(server: Server, since: float, up_to_s: float, idle_for_s: float = 10) -> tuple[float | None, str]:
    """Poll each second until the process exits, or has used no CPU for `idle_for_s`, or `up_to_s` after `since`."""
    idle_from = None
    cpu = cpu_seconds(server.pid)
    while time.monotonic() - since < up_to_s and server.alive():
        time.sleep(1)
        now_cpu = cpu_seconds(server.pid)
        busy = now_cpu - cpu > 0.05
        cpu = now_cpu
        if busy:
            idle_from = None
        elif idle_from is None:
            idle_from = round(time.monotonic() - 1 - since, 1)
        if idle_from is not None and time.monotonic() - since - idle_from >= idle_for_s:
            break
    if not server.alive():
        return idle_from, f"exited {server.exited_at - since:.1f} s after SIGTERM with code {server.process.returncode}"
    return idle_from, f"still alive {time.monotonic() - since:.0f} s after SIGTERM (RSS {server.rss():.0f} MB)"


def sigterm_with_unread_answers(flags: list[str], texts: list[str], clients: int = 20) -> Outcome:
    body = dumps({"inputs": texts, "parameters": {"top_k": 100}})
    request = (
        f"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Timeout: 120\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with Server(*flags) as server:
        sockets = []
        try:
            for _ in range(clients):
                sock = raw_connect(server, timeout=30, rcvbuf=4096)
                sock.sendall(request)
                sockets.append(sock)
            time.sleep(0.5)
            rss_at_term = server.rss()
            server.sigterm()
            signalled = time.monotonic()
            observed, figures = exit_figures(server, 30)
            figures.update(rss_at_sigterm_mb=rss_at_term, request_body_kb=round(len(body) / 1024, 1))
            if server.alive():  # still answering, or done and stuck on the unread answers? watch on until idle
                idle_from, end = watch_until_idle(server, signalled, up_to_s=150)
                figures.update(cpu_idle_from_s=idle_from, later=end)
                observed += f"; CPU idle from {idle_from} s after SIGTERM; then {end}"
            return f"{observed}; RSS at SIGTERM {rss_at_term:.0f} MB; request body {len(body) / 1024:.0f} KB each", figures
        finally:
            for sock in sockets:
                sock.close()


def keep_alive_during_drain(flags: list[str], texts: list[str], heavy: int = 6, watch_s: float = 15) -> Outcome:
    heavy_body = dumps({"inputs": texts, "parameters": {"top_k": 1}})
    classify = dumps({"inputs": "a fine film"})
    with Server(*flags) as server, httpx.Client(timeout=30) as client:
        client.post(server.url + "/classify", content=classify, headers=JSON_HEADERS)
        in_flight: list[Answer] = []
        blockers = [threading.Thread(target=lambda: in_flight.append(post(server.url, "/fill-mask", heavy_body, LONG_WAIT, 120)),
                                     daemon=True) for _ in range(heavy)]
        for thread in blockers:
            thread.start()
        time.sleep(0.3)
        server.sigterm()
        signalled = time.monotonic()
        timeline = []
        while time.monotonic() - signalled < watch_s:
            answer = post(server.url, "/classify", classify, client=client, timeout=10)
            timeline.append({"t": round(time.monotonic() - signalled, 2), "status": answer.status, "error": answer.error,
                             "connection": answer.headers.get("connection"), "retry_after": answer.headers.get("retry-after")})
            if answer.status is None and not server.alive():
                break
            time.sleep(0.1)
        exit_s, code = server.wait_exit(15)
        if exit_s is not None:
            exit_s = round(server.exited_at - signalled, 2)
    for thread in blockers:
        thread.join(5)
    observed, figures = summarise_drain(timeline, exit_s, code)
    figures["in_flight_statuses"] = [a.short() for a in in_flight]
    return f"{observed}; the {heavy} in-flight requests got {count_statuses(figures['in_flight_statuses'])}", figures


def summarise_drain(timeline: list[dict], exit_s: float | None, code: int | None) -> Outcome:
    first = timeline[0]
    first_503 = next((t for t in timeline if t["status"] == 503), None)
    last_200 = max((t["t"] for t in timeline if t["status"] == 200), default=None)
    first_error = next((t for t in timeline if t["status"] is None), None)
    parts = [f"first after SIGTERM: {first['status']} (Connection: {first['connection'] or '-'})",
             f"last 200 at {last_200} s"]
    if first_503:
        parts.append(f"first 503 at {first_503['t']} s (Connection: {first_503['connection'] or '-'}, "
                     f"Retry-After: {first_503['retry_after']})")
    else:
        parts.append("no 503 seen")
    if first_error:
        parts.append(f"connection refused/failed from {first_error['t']} s")
    parts.append(f"exit code {code} at {exit_s} s" if exit_s is not None else "still alive")
    statuses = sorted({str(t["status"]) for t in timeline})
    figures = {"first_status": first["status"], "first_connection_header": first["connection"],
               "first_503": first_503, "last_200_s": last_200, "first_error": first_error, "statuses": statuses,
               "exit_s": exit_s, "exit_code": code, "timeline": timeline}
    return "; ".join(parts), figures


# --------------------------------------------------------------------------------------------- D: event-loop stalls


def case_d(ctx: Context) -> None:
    for name, folder, flags in (("tiny", ctx.models.fill_mask, ctx.models.tiny_flags()),
                                ("big", ctx.models.bigvocab, ctx.models.big_flags())):
        try:
            texts = ctx.texts(folder).masked(64, masks=8)
            with Server(*flags) as server:
                stalls_on(ctx.report, name, server, texts)
        except Exception as exc:
            ctx.report.add(f"D.{name}", "start", f"ERROR {type(exc).__name__}: {str(exc)[:300]}", {"error": str(exc)})


def stalls_on(report: Report, name: str, server: Server, texts: list[str]) -> None:
    idle = idle_worst_healthz(server.url)
    run_cost = server.run_overhead_tokens()
    heavy = dumps({"inputs": texts, "parameters": {"top_k": 100}})
    big_classify = dumps({"inputs": one_mb_word(100)})
    big_target = dumps({"inputs": "the <mask>", "parameters": {"targets": [one_mb_word(200)]}})
    label = f"{name} fill-mask model"
    attempt(report, f"D0.{name}", f"{label}: nothing else running, /healthz every 10 ms for 2 s",
            lambda: (f"worst /healthz {idle} ms (batching: a run costs {run_cost} tokens beyond its own)",
                     {"worst_healthz_ms": idle, "run_overhead_tokens": run_cost, "rss_mb": server.rss()}))
    attempt(report, f"D1.{name}", f"{label}: 1 x fill-mask 64 texts x 8 masks top_k 100 ({len(heavy) / 1024:.0f} KB body)",
            lambda: under_load(server, [("/fill-mask", heavy)], idle))
    attempt(report, f"D2.{name}", f"{label}: 4 x that fill-mask at once",
            lambda: under_load(server, [("/fill-mask", heavy)] * 4, idle))
    attempt(report, f"D3.{name}", f"{label}: /classify one {len(big_classify) / MIB:.2f} MiB word",
            lambda: under_load(server, [("/classify", big_classify)], idle))
    attempt(report, f"D4.{name}", f"{label}: /fill-mask 'the <mask>', targets [one {len(big_target) / MIB:.2f} MiB word]",
            lambda: under_load(server, [("/fill-mask", big_target)], idle))
    attempt(report, f"D5.{name}", f"{label}: 4 x D3 + 4 x D4 at once",
            lambda: under_load(server, [("/classify", big_classify)] * 4 + [("/fill-mask", big_target)] * 4, idle))


def under_load(server: Server, requests: list[tuple[str, bytes]], idle_ms: float) -> Outcome:
    before = server.rss()
    batches_before = server.batches()
    answers: list[Answer | None] = [None] * len(requests)

    def one(index: int) -> None:
        path, body = requests[index]
        answers[index] = post(server.url, path, body, LONG_WAIT, timeout=300, keep_body=False)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(requests))]
    started = time.perf_counter()
    with HealthPoller(server.url) as poller:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(310)
    seconds = round(time.perf_counter() - started, 2)
    after = server.memory()
    batches_after = server.batches()
    answers = [a or Answer(None, 300, error="did not finish") for a in answers]
    statuses = [a.short() for a in answers]
    error_types = sorted({t for t in (a.json_error()[0] for a in answers) if t})
    size_mb = round(max(a.size for a in answers) / 1e6, 2)
    figures = {"statuses": statuses, "error_types": error_types, "largest_response_mb": size_mb, "seconds": seconds,
               "idle_worst_healthz_ms": idle_ms, "rss_before_mb": before, "rss_after_mb": after["rss_mb"],
               "peak_rss_mb": after["peak_mb"], "fill_mask_batches": batches_after[0] - batches_before[0],
               "fill_mask_sequences": batches_after[1] - batches_before[1], **poller.figures()}
    status_text = count_statuses(statuses)
    unreadable = [requests[i] for i, a in enumerate(answers) if a.error and "RemoteProtocolError" in a.error]
    if unreadable:  # httpx could not parse the answer: what did the server really send?
        path, body = unreadable[0]
        figures["raw_reply"] = raw_post(server, path, body)
        status_text += (f" (raw socket: {figures['raw_reply']['status_line']}, "
                        f"largest header {figures['raw_reply']['largest_header_kb']} KB)")
    observed = (
        f"{status_text}, response {size_mb} MB, {seconds} s; "
        f"worst /healthz {poller.worst_ms} ms (idle {idle_ms}); RSS {before:.0f} -> {after['rss_mb']:.0f} MB "
        f"(peak so far {after['peak_mb']:.0f})"
    )
    return observed, figures


def count_statuses(statuses: list[str]) -> str:
    """'200' for one answer; '4 x 413, 4 x RemoteProtocolError: ...' for several."""
    if len(statuses) == 1:
        return statuses[0]
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} x {status}" for status, n in counts.items())


def raw_post(server: Server, path: str, body: bytes, timeout: float = 120) -> dict:
    """POST over a raw socket: the status line and header sizes, whatever an HTTP client library would accept."""
    with raw_connect(server, timeout=timeout) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-Timeout: 120\r\nConnection: close\r\n\r\n".encode() + body
        )
        status_line, headers, response_body = read_response(sock, timeout)
    largest = max(headers, key=lambda kv: len(kv[1]), default=("", ""))
    return {"status_line": status_line, "largest_header": largest[0], "largest_header_kb": round(len(largest[1]) / 1024, 1),
            "header_kb": round(sum(len(k) + len(v) + 4 for k, v in headers) / 1024, 1), "body_bytes": len(response_body)}


# --------------------------------------------------------------------------------------------- E: long targets


def case_e(ctx: Context) -> None:
    with Server(*ctx.models.tiny_flags()) as server:
        words = long_words(1000, 200)
        body = dumps({"inputs": "the <mask>.", "parameters": {"targets": words}})
        attempt(ctx.report, "E1", f"/fill-mask 'the <mask>.' with 1,000 distinct non-vocabulary targets of 200 chars "
                f"({len(body) / 1024:.0f} KB body)", lambda: long_targets(server, body))


def long_words(count: int, length: int) -> list[str]:
    rng = random.Random(0)
    return ["".join(rng.choices(string.ascii_lowercase, k=length)) for _ in range(count)]


def long_targets(server: Server, body: bytes) -> Outcome:
    with raw_connect(server, timeout=60) as sock:
        sock.sendall(
            f"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body
        )
        status_line, headers, _ = read_response(sock)
    warning = header(headers, "x-warning") or ""
    header_bytes = sum(len(k) + len(v) + 4 for k, v in headers)
    httpx_result = client_result(lambda: httpx.post(server.url + "/fill-mask", content=body, headers=JSON_HEADERS, timeout=60).status_code)
    urllib_result = client_result(lambda: urllib_post(server.url + "/fill-mask", body))
    observed = (f"{status_line}; X-Warning {len(warning) / 1024:.0f} KB (all headers {header_bytes / 1024:.0f} KB); "
                f"httpx: {httpx_result}; urllib.request: {urllib_result}")
    figures = {"status_line": status_line, "x_warning_bytes": len(warning), "header_bytes": header_bytes,
               "httpx": httpx_result, "urllib": urllib_result}
    return observed, figures


def urllib_post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers=JSON_HEADERS, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def client_result(call: Callable[[], int]) -> str:
    try:
        return f"ok, {call()}"
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {str(exc)[:100]}"


# --------------------------------------------------------------------------------------------- F: small queue


def case_f(ctx: Context) -> None:
    attempt(ctx.report, "F1", "--max-queue 8: POST /classify with 16 inputs, 3 times 1 s apart",
            lambda: queue_smaller_than_request(ctx.models))


def queue_smaller_than_request(models: Models) -> Outcome:
    body = dumps({"inputs": [f"film number {i} was fine" for i in range(16)]})
    results = []
    with ExitStack() as stack:
        try:
            server = stack.enter_context(Server("--max-queue", "8", "--classify-model", str(models.classify)))
        except StartFailed as exc:
            return (f"refused to start: exit {exc.exit_code}: {exc.first_line}",
                    {"exit_code": exc.exit_code, "line": exc.first_line})
        for attempt_number in range(3):
            if attempt_number:
                time.sleep(1)
            answer = post(server.url, "/classify", body, timeout=30)
            results.append({"status": answer.short(), "retry_after": answer.headers.get("retry-after"),
                            "error_type": answer.json_error()[0]})
    observed = "; ".join(f"{r['status']}, Retry-After {r['retry_after']}" for r in results)
    return observed, {"attempts": results}


# --------------------------------------------------------------------------------------------- G: exposure

ABSOLUTE_PATH = re.compile(r"(/work|/tmp|/home|/root)[^\"\s]*")
VERSION_KEYS = re.compile(r'"(python|torch|transformers|optimum|onnx|onnxruntime|optimum-onnx|accelerate)"\s*:\s*"([^"]+)"')


def case_g(ctx: Context) -> None:
    with Server(*ctx.models.tiny_flags(), "--api-key", "secret") as server:
        attempt(ctx.report, "G1", "--api-key secret: GET /info without a key", lambda: info_exposure(server))
        attempt(ctx.report, "G2", "--api-key secret: the Server header of GET /healthz and of a 401 POST /classify",
                lambda: server_header(server))
    with Server(*ctx.models.tiny_flags(), "--api-key", "secret", "--protect-health-and-metrics", "true", auth="secret") as server:
        attempt(ctx.report, "G3", "--api-key secret --protect-health-and-metrics true: GET /docs /redoc /openapi.json "
                "/info without a key", lambda: docs_exposure(server))


def info_exposure(server: Server) -> Outcome:
    response = httpx.get(server.url + "/info", timeout=10)
    paths = sorted({m.group(0) for m in ABSOLUTE_PATH.finditer(response.text)})
    versions = sorted({f"{m.group(1)} {m.group(2)}" for m in VERSION_KEYS.finditer(response.text)})
    observed = (f"{response.status_code}; absolute paths: {', '.join(paths) if paths else 'none'}; "
                f"versions: {', '.join(versions) if versions else 'none'}")
    return observed, {"status": response.status_code, "absolute_paths": paths, "versions": versions,
                      "body_head": response.text[:600]}


def server_header(server: Server) -> Outcome:
    health = httpx.get(server.url + "/healthz", timeout=10)
    refused = httpx.post(server.url + "/classify", json={"inputs": "x"}, timeout=10)
    observed = f"/healthz: Server: {health.headers.get('server')}; 401: Server: {refused.headers.get('server')} ({refused.status_code})"
    return observed, {"healthz_server": health.headers.get("server"), "refused_status": refused.status_code,
                      "refused_server": refused.headers.get("server")}


def docs_exposure(server: Server) -> Outcome:
    statuses = {path: httpx.get(server.url + path, timeout=10) for path in ("/docs", "/redoc", "/openapi.json", "/info")}
    hosts = sorted(set(re.findall(r"https?://([^/\"'\s]+)", statuses["/docs"].text)))
    redoc_hosts = sorted(set(re.findall(r"https?://([^/\"'\s]+)", statuses["/redoc"].text)))
    observed = (", ".join(f"{path} {r.status_code}" for path, r in statuses.items())
                + f"; /docs loads from: {', '.join(hosts) or 'nothing external'}; /redoc from: {', '.join(redoc_hosts) or '-'}")
    return observed, {"statuses": {p: r.status_code for p, r in statuses.items()}, "docs_external_hosts": hosts,
                      "redoc_external_hosts": redoc_hosts}


# --------------------------------------------------------------------------------------------- H: contract


def case_h(ctx: Context) -> None:
    valid = {"inputs": "a fine film"}
    text = json.dumps(valid)
    with Server(*ctx.models.tiny_flags()) as server:
        sends = [
            ("H1", "POST /classify, UTF-16 JSON body with BOM", text.encode("utf-16"), JSON_HEADERS),
            ("H2", "POST /classify, UTF-32 JSON body (with BOM)", text.encode("utf-32"), JSON_HEADERS),
            ("H3", "POST /classify, Content-Type: text/json, valid body", text.encode(), {"Content-Type": "text/json"}),
            ("H4", "POST /classify, empty body, application/json", b"", JSON_HEADERS),
            ("H6", 'POST /classify {"inputs": 5}', dumps({"inputs": 5}), JSON_HEADERS),
            ("H7", 'POST /classify {"inputs": "x", "<1 MB key>": 1}', dumps({"inputs": "x", "k" * 1_000_000: 1}), JSON_HEADERS),
        ]
        for case_id, sent, body, headers in sends:
            attempt(ctx.report, case_id, sent, lambda body=body, headers=headers: contract_answer(server, body, headers))
        attempt(ctx.report, "H5", 'raw socket: "GARBAGE\\r\\n\\r\\n"', lambda: protocol_error(server))


def contract_answer(server: Server, body: bytes, headers: dict[str, str]) -> Outcome:
    with httpx.Client(timeout=60) as client:
        response = client.post(server.url + "/classify", content=body, headers=headers)
    answer = Answer(response.status_code, 0, len(response.content), dict(response.headers), response.content)
    error_type, message = answer.json_error()
    message = (message or "")[:200]
    kind = f" {error_type}" if error_type else ""
    observed = f"{response.status_code}{kind}: {message or response.text[:200]} ({len(response.content)} bytes)"
    return observed, {"status": response.status_code, "error_type": error_type, "message": message,
                      "response_bytes": len(response.content)}


def protocol_error(server: Server) -> Outcome:
    with raw_connect(server) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        try:
            status_line, headers, body = read_response(sock, timeout=10)
        except TimeoutError:
            return "no answer in 10 s", {}
    content_type = header(headers, "content-type")
    body_text = body.decode("latin-1")[:200]
    return (f"{status_line or 'closed'}; Content-Type: {content_type}; body: {body_text}",
            {"status_line": status_line, "content_type": content_type, "body": body_text})


# --------------------------------------------------------------------------------------------- I: start-up errors


def case_i(ctx: Context) -> None:
    bind = ["--host", "127.0.0.1", "--port", "0"]
    uvicorn = ["-m", "uvicorn", "--factory", "app.main:create_app", *bind]
    runs = [
        ("I1", "python -m app (no model setting)", ["-m", "app", *bind], {}),
        ("I2", "python -m app --classify-model /nonexistent", ["-m", "app", *bind, "--classify-model", "/nonexistent"], {}),
        ("I3", "python -m uvicorn --factory app.main:create_app, ROBERTA_CLASSIFY_MODEL=/nonexistent", uvicorn,
         {"ROBERTA_CLASSIFY_MODEL": "/nonexistent"}),
        ("I4", "python -m uvicorn --factory app.main:create_app (no model setting)", uvicorn, {}),
    ]
    for case_id, sent, arguments, env in runs:
        attempt(ctx.report, case_id, sent, lambda arguments=arguments, env=env: startup_failure(arguments, env))
    attempt(ctx.report, "I5", "python -m app with both tiny models, CPU, default settings: WARNING lines until ready",
            lambda: startup_warnings(ctx.models))


def communicate_within(process: subprocess.Popen, timeout: float) -> tuple[str, str, int | None]:
    """A started process's stdout, stderr and exit code; killed after `timeout` seconds (code None)."""
    _CHILDREN.add(process)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return stdout, stderr, process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate(timeout=10)
        return stdout, stderr, None
    finally:
        _CHILDREN.discard(process)


def startup_failure(arguments: list[str], env: dict[str, str], timeout: float = 60) -> Outcome:
    process = subprocess.Popen([sys.executable, *arguments], cwd=REPO, env=server_env(env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stdout, stderr, code = communicate_within(process, timeout)
    lines = stderr.splitlines()
    last = next((line for line in reversed(lines) if line.strip()), "")
    observed = (f"exit {code if code is not None else f'none (still running after {timeout:.0f} s)'}; "
                f"{len(lines)} stderr lines; Traceback: {'yes' if 'Traceback' in stderr else 'no'}; last: {last[:160]}")
    return observed, {"exit_code": code, "stderr_lines": len(lines), "traceback": "Traceback" in stderr,
                      "stdout_lines": len(stdout.splitlines()), "stderr_head": stderr[:1500], "stderr_last_line": last}


def startup_warnings(models: Models) -> Outcome:
    with Server(*models.tiny_flags()) as server:
        lines = server.lines[: server.ready_lines]
    warnings = [line for line in lines if "WARNING" in line]
    observed = " / ".join(warnings) if warnings else "no WARNING lines"
    return observed, {"warnings": warnings, "startup_lines": lines}


# --------------------------------------------------------------------------------------------- J-P: shared helpers

WATCHDOG_MB = 6000.0  # a server (or pool) past this is SIGKILLed: the machine must never run out of memory


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descending from it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack += children.get(current, [])
    return tree


def rss_mb(pids: list[int]) -> float:
    """The summed VmRSS of `pids` in MB; nan when none of them is left."""
    values = [memory_mb(pid)["rss_mb"] for pid in pids]
    values = [value for value in values if value == value]
    return round(sum(values), 1) if values else float("nan")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when gone): with the pid, who it is."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def identities(pids: list[int]) -> dict[int, int | None]:
    return {pid: start_time(pid) for pid in pids}


def kill_tree(pids: list[int] | dict[int, int | None]) -> None:
    """SIGKILL to each of `pids`; given identities (pid -> start time), only to those that are still the same process."""
    for pid in pids:
        if isinstance(pids, dict) and (pids[pid] is None or start_time(pid) != pids[pid]):
            continue  # gone, or the pid now names another process
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Watchdog:
    """A thread polling a server's VmRSS (with its descendants' for a pool) every 0.1 s; once it passes `limit_mb`,
    or `limit_s` pass, the whole tree gets SIGKILL and `killed` says "killed at N MB after T s"."""

    def __init__(self, process: subprocess.Popen, limit_s: float = 60, limit_mb: float = WATCHDOG_MB,
                 tree: bool = False, interval_s: float = 0.1) -> None:
        self.process = process
        self.limit_s = limit_s
        self.limit_mb = limit_mb
        self.tree = tree
        self.interval_s = interval_s
        self.killed: str | None = None
        self.peak_mb = 0.0  # the largest sampled RSS (of the tree)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        pids, listed = [self.process.pid], 0.0
        while not self._stop.wait(self.interval_s):
            if self.process.poll() is not None:
                return
            if self.tree and time.monotonic() - listed > 1:
                pids, listed = process_tree(self.process.pid), time.monotonic()
            rss = rss_mb(pids)
            if rss == rss:
                self.peak_mb = max(self.peak_mb, rss)
            elapsed = time.monotonic() - started
            if rss > self.limit_mb or elapsed > self.limit_s:
                kill_tree(process_tree(self.process.pid) if self.tree else pids)
                why = "over the memory limit" if rss > self.limit_mb else "out of time"
                self.killed = f"killed at {rss:.0f} MB after {elapsed:.1f} s ({why})"
                log(f"watchdog: pid {self.process.pid} {self.killed}")
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                return

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    def figures(self) -> dict:
        return {"watchdog_killed": self.killed, "watchdog_peak_mb": round(self.peak_mb, 1),
                "watchdog_limits": f"{self.limit_mb:.0f} MB / {self.limit_s:.0f} s"}


def watched(server: Server, limit_s: float = 150, **kwargs) -> Watchdog:
    return Watchdog(server.process, limit_s=limit_s, tree=server.ready_line is POOL_READY_LINE, **kwargs)


class Servers:
    """The repository servers of one case: `get()` the running one (a new one if it died, e.g. by the watchdog),
    `fresh()` a new one in its place. Each is ended on exit."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self.flags = flags
        self.env = env
        self.current: Server | None = None

    def fresh(self) -> Server:
        self.close()
        self.current = Server(*self.flags, env=self.env).__enter__()
        return self.current

    def get(self) -> Server:
        if self.current is None or not self.current.alive():
            return self.fresh()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dumps_utf8(value) -> bytes:
    """JSON as UTF-8 (not \\u escapes), so that a text of N bytes makes a body of about N bytes."""
    return json.dumps(value, ensure_ascii=False).encode()


class Book:
    """The shared public-domain book text, whitespace collapsed to single spaces."""

    def __init__(self, shared: Path) -> None:
        self.text = " ".join((shared / "books" / "books_clean.txt").read_text(encoding="utf-8").split())

    def piece(self, size_bytes: int, start: int = 0) -> str:
        """Text from character `start` on, at most `size_bytes` bytes of UTF-8."""
        chunk = self.text[start : start + size_bytes]
        return chunk.encode()[:size_bytes].decode("utf-8", "ignore")


def mb(value: float) -> str:
    return "?" if value != value else f"{value:,.0f}"


def heavy_post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None,
               limit_s: float = 150, hold_s: float = 2) -> Outcome:
    """One request under the watchdog: status, wall time, server CPU (send -> `hold_s` after the answer),
    RSS before / peak (VmHWM) / `hold_s` after."""
    before = server.rss()
    cpu_before = cpu_seconds(server.pid)
    with watched(server, limit_s) as dog:
        answer = post(server.url, path, body, headers, timeout=limit_s + 10, keep_body=False)
        after = server.memory()
        if server.alive():
            time.sleep(hold_s)
        held = server.rss()
        cpu = round(cpu_seconds(server.pid) - cpu_before, 1) if server.alive() else float("nan")
    error_type, message = answer.json_error() if answer.status != 200 else (None, None)
    peak = after["peak_mb"] if after["peak_mb"] == after["peak_mb"] else dog.peak_mb
    figures = {"status": answer.status, "short": answer.short(), "error_type": error_type, "message": (message or "")[:300],
               "seconds": answer.seconds, "body_kb": round(len(body) / 1024, 1), "server_cpu_s": cpu,
               "rss_before_mb": before, "rss_peak_mb": peak, "rss_held_mb": held, "rss_after_mb": held, **dog.figures()}
    if dog.killed:
        observed = f"{dog.killed}; client got {answer.short()} after {answer.seconds:.1f} s; RSS {mb(before)} MB before"
    else:
        observed = (f"{answer.short()} after {answer.seconds:.1f} s; server CPU {cpu} s; "
                    f"RSS {mb(before)} -> peak {mb(peak)} MB, {mb(held)} held {hold_s:.0f} s after")
    if message:
        observed += f" ({message[:120]})"
    return observed, figures


def latency_summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    if not ordered:
        return {"count": 0, "p50_ms": None, "max_ms": None}
    return {"count": len(ordered), "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def tail_line(lines: list[str]) -> str:
    return next((line for line in reversed(lines) if line.strip()), "")


# --------------------------------------------------------------------------------------------- J: zero-shot templates


ZERO_SHOT = "/models/nli"


def j1_body() -> bytes:
    return dumps({"inputs": "hi", "parameters": {"candidate_labels": ["y" * 100], "hypothesis_template": "{0}" * 100_000}})


def j2_body(size: int = 600 * 1024) -> bytes:
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma "
    labels = [(words * 20)[:1000], (words[::-1] * 20)[:1000]]
    overhead = len(dumps({"inputs": "hi", "parameters": {"candidate_labels": labels, "hypothesis_template": ""}}))
    return dumps({"inputs": "hi", "parameters": {"candidate_labels": labels,
                                                 "hypothesis_template": "{0}" * ((size - overhead) // 3)}})


def case_j(ctx: Context) -> None:
    with Servers(*ctx.models.repository_flags()) as servers:
        j1, j2 = j1_body(), j2_body()
        attempt(ctx.report, "J1", f"POST {ZERO_SHOT} (X-Request-Timeout 120): 1 label of 100 chars, hypothesis_template "
                f"'{{0}}' x 100,000 ({len(j1) / 1024:.0f} KB body)",
                lambda: heavy_post(servers.fresh(), ZERO_SHOT, j1, LONG_WAIT))
        attempt(ctx.report, "J2", f"POST {ZERO_SHOT} (X-Request-Timeout 120): 2 labels of 1,000 chars (words), template "
                f"'{{0}}' x {j2.count(b'{0}'):,} ({len(j2) / 1024:.0f} KB body); watchdog 6,000 MB / 60 s, fresh server",
                lambda: heavy_post(servers.fresh(), ZERO_SHOT, j2, LONG_WAIT, limit_s=60))
        attempt(ctx.report, "J3", f"POST {ZERO_SHOT}: hypothesis_template '{{{{}}}}', labels [a, b]",
                lambda: braces_template(servers.get()))


def braces_template(server: Server) -> Outcome:
    body = dumps({"inputs": "a fine film", "parameters": {"candidate_labels": ["a", "b"], "hypothesis_template": "{{}}"}})
    with watched(server, 60) as dog:
        answer = post(server.url, ZERO_SHOT, body, LONG_WAIT, timeout=70)
    scores = None
    if answer.status == 200:
        value = json.loads(answer.body)
        scores = dict(zip(value["labels"], (round(s, 4) for s in value["scores"])))
    error_type, message = answer.json_error() if answer.status != 200 else (None, None)
    observed = f"{answer.short()} in {answer.seconds:.2f} s; " + (f"scores {scores}" if scores is not None else (message or "")[:200])
    if dog.killed:
        observed = f"{dog.killed}; {observed}"
    return observed, {"status": answer.status, "scores": scores, "error_type": error_type, "message": message,
                      "seconds": answer.seconds, **dog.figures()}


# --------------------------------------------------------------------------------------------- K: zero-shot, long text

LABEL_WORDS = (
    "sports politics business science health music film travel food fashion history art law crime weather war "
    "peace money love family school nature animals technology religion education economy energy space ocean city "
    "village farm forest river mountain desert winter summer spring autumn child king queen ship train car horse "
    "garden house church army navy court market bank factory hospital theatre library museum poetry dance adventure"
).split()


def k_body(book: Book) -> bytes:
    return dumps_utf8({"inputs": book.piece(900 * 1024), "parameters": {"candidate_labels": LABEL_WORDS[:64]}})


def case_k(ctx: Context) -> None:
    body = k_body(Book(ctx.shared))
    sent = f"POST {ZERO_SHOT}: a 900 KB book text x 64 one-word labels, default template ({len(body) / 1024:.0f} KB body)"
    with Servers(*ctx.models.repository_flags()) as servers:
        attempt(ctx.report, "K1", f"{sent}, default deadline", lambda: heavy_post(servers.fresh(), ZERO_SHOT, body))
        attempt(ctx.report, "K2", "K1 with X-Request-Timeout: 1, the client closing its connection at 2 s: server CPU "
                "from sending until idle (no growth for 2 s, up to 60 s)", lambda: abandoned(servers.fresh(), body))
        attempt(ctx.report, "K3", "POST /models/sentiment 'a fine film' back to back, one at a time, while K1 runs "
                "(and for 3 s with nothing else running)", lambda: neighbour_latency(servers.fresh(), body))
        # The heaviest zero-shot request a 1 MB body can make the tokenizer do: a text with no whitespace to cut
        # it at, tokenized whole (as the pipeline tokenizes it), beside 64 labels.
        word = dumps_utf8({"inputs": "x1" * 500_000, "parameters": {"candidate_labels": [f"topic {i}" for i in range(64)]}})
        attempt(ctx.report, "K4", f"as K3, the zero-shot text one unbroken 1,000,000-character word ('x1' repeated; "
                f"{len(word) / 1024:.0f} KB body) x 64 labels", lambda: neighbour_latency(servers.fresh(), word))


def abandoned(server: Server, body: bytes, leave_at_s: float = 2, idle_s: float = 2, up_to_s: float = 60) -> Outcome:
    before = server.rss()
    with watched(server, up_to_s + 30) as dog:
        cpu_start = cpu_seconds(server.pid)
        started = time.monotonic()
        with raw_connect(server, timeout=10) as sock:
            sock.sendall(
                f"POST {ZERO_SHOT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"X-Request-Timeout: 1\r\n\r\n".encode() + body
            )
            reply, reply_s = await_reply(sock, max(0.0, leave_at_s - (time.monotonic() - started)))
            left_at = time.monotonic() - started
            if left_at < leave_at_s:  # answered (or closed) early: stay until the client would have left
                time.sleep(leave_at_s - left_at)
        cpu_at_leave = cpu_seconds(server.pid)
        left = time.monotonic()
        last_cpu, last_growth = cpu_at_leave, left
        while time.monotonic() - left < up_to_s and server.alive():
            time.sleep(0.25)
            now = cpu_seconds(server.pid)
            if now - last_cpu > 0.02:
                last_growth = time.monotonic()
            last_cpu = now
            if time.monotonic() - last_growth >= idle_s:
                break
        idle_after_s = round(last_growth - left, 1)
        cpu_end = cpu_seconds(server.pid)
        rss = server.memory()
    total = round(cpu_end - cpu_start, 1)
    after_leave = round(cpu_end - cpu_at_leave, 1)
    figures = {"reply_before_leaving": reply, "reply_s": reply_s, "server_cpu_total_s": total,
               "server_cpu_after_client_left_s": after_leave, "busy_until_s_after_leaving": idle_after_s,
               "rss_before_mb": before, "rss_peak_mb": rss["peak_mb"], "rss_after_mb": rss["rss_mb"], **dog.figures()}
    observed = (f"the client saw: {reply} (within {leave_at_s:.0f} s); server CPU {total} s from sending, "
                f"{after_leave} s of it after the client left (busy until {idle_after_s} s after); RSS {mb(before)} -> "
                f"peak {mb(rss['peak_mb'])} MB")
    if dog.killed:
        observed = f"{dog.killed}; {observed}"
    return observed, figures


class Neighbour(HealthPoller):
    """POST /models/sentiment back to back on one keep-alive connection, in a thread: each latency and status."""

    BODY = dumps({"inputs": "a fine film"})

    def __init__(self, url: str) -> None:
        super().__init__(url, interval_s=0, timeout_s=150)
        self.statuses: list[str] = []

    def _probe(self, client: httpx.Client) -> None:
        self.statuses.append(post(self.url, "/models/sentiment", self.BODY, client=client).short())


def neighbour_latency(server: Server, body: bytes) -> Outcome:
    with Neighbour(server.url) as idle:
        time.sleep(3)
    with watched(server, 150) as dog, Neighbour(server.url) as busy:
        busy.latencies.clear()  # the ones before K1 was sent
        busy.statuses.clear()
        answer = post(server.url, ZERO_SHOT, body, timeout=160, keep_body=False)
    quiet, loaded = latency_summary(idle.latencies), latency_summary(busy.latencies)
    figures = {"idle": quiet, "during_k1": loaded, "k1_status": answer.short(), "k1_seconds": answer.seconds,
               "statuses_during": count_statuses(busy.statuses) if busy.statuses else "none", **dog.figures()}
    observed = (f"during it ({answer.short()} after {answer.seconds:.1f} s): {loaded['count']} answers, p50 "
                f"{loaded['p50_ms']} ms, max {loaded['max_ms']} ms ({figures['statuses_during']}); nothing else running: "
                f"{quiet['count']} in 3 s, p50 {quiet['p50_ms']} ms, max {quiet['max_ms']} ms")
    if dog.killed:
        observed = f"{dog.killed}; {observed}"
    return observed, figures


# --------------------------------------------------------------------------------------------- L: token classification

NER = "/models/ner"
STRIDE = {"aggregation_strategy": "simple", "stride": 509}


def l1_body(book: Book) -> bytes:
    return dumps_utf8({"inputs": book.piece(300 * 1024, start=1_000_000), "parameters": STRIDE})


def l2_body(book: Book) -> bytes:
    return dumps_utf8({"inputs": [book.piece(4 * 1024, start=2_000_000 + i * 5000) for i in range(64)], "parameters": STRIDE})


def case_l(ctx: Context) -> None:
    book = Book(ctx.shared)
    l1, l2 = l1_body(book), l2_body(book)
    with Servers(*ctx.models.repository_flags()) as servers:
        attempt(ctx.report, "L1", f"POST {NER} (X-Request-Timeout 120): one 300 KB book text, aggregation_strategy "
                f"simple, stride 509 ({len(l1) / 1024:.0f} KB body)", lambda: heavy_post(servers.fresh(), NER, l1, LONG_WAIT))
        attempt(ctx.report, "L2", f"POST {NER} (X-Request-Timeout 120): 64 texts of 4 KB, the same parameters "
                f"({len(l2) / 1024:.0f} KB body)", lambda: heavy_post(servers.fresh(), NER, l2, LONG_WAIT))


# --------------------------------------------------------------------------------------------- M: pipelining, unread

PIPELINED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def case_m(ctx: Context) -> None:
    with Servers(*ctx.models.repository_flags()) as servers:
        for case_id, connections in (("M1", 1), ("M2", 10), ("M3", 30)):
            attempt(ctx.report, case_id, f"{connections} connection(s) (SO_RCVBUF 4 KB), each 2 MB of pipelined "
                    "GET /healthz (whatever is accepted in 20 s), never read; fresh server",
                    lambda connections=connections: pipelined_unread(servers.fresh(), connections))


def pipelined_unread(server: Server, connections: int, total: int = 2 * MIB, send_s: float = 20,
                     probe_s: float = 15) -> Outcome:
    payload = PIPELINED * (total // len(PIPELINED))
    before = server.rss()
    cpu_before = cpu_seconds(server.pid)
    sent = [0] * connections
    ends = [""] * connections
    sockets: list[socket.socket] = []

    def feed(index: int) -> None:
        try:
            sock = raw_connect(server, timeout=10, rcvbuf=4096)
        except OSError as exc:
            ends[index] = f"connect failed: {type(exc).__name__}"
            return
        sockets.append(sock)
        view, started = memoryview(payload), time.monotonic()
        ends[index] = "sent all"
        while sent[index] < len(payload):
            left = send_s - (time.monotonic() - started)
            if left <= 0:
                ends[index] = f"{send_s:.0f} s over"
                break
            sock.settimeout(left)
            try:
                sent[index] += sock.send(view[sent[index] : sent[index] + 65536])
            except TimeoutError:
                ends[index] = f"{send_s:.0f} s over"
                break
            except OSError as exc:
                ends[index] = f"closed by server ({type(exc).__name__})"
                break

    with watched(server, send_s + probe_s + 60) as dog:
        try:
            threads = [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(connections)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(send_s + 15)
            time.sleep(2)
            with_open = server.memory()
            started = time.perf_counter()
            try:
                status = str(httpx.get(server.url + "/healthz", timeout=probe_s).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            probe_ms = round((time.perf_counter() - started) * 1000, 1)
            after_probe = server.memory()
        finally:
            for sock in sockets:
                sock.close()
        time.sleep(3)
        end = server.memory()
        after_close = end["rss_mb"]
        cpu = round(cpu_seconds(server.pid) - cpu_before, 1)
    open_rss = max(with_open["rss_mb"], after_probe["rss_mb"])
    accepted_mb = round(sum(sent) / MIB, 1)
    end_counts = count_statuses(ends)
    figures = {"connections": connections, "accepted_mb": accepted_mb, "sent_mb_each": [round(s / MIB, 2) for s in sent],
               "ends": end_counts, "rss_before_mb": before, "rss_with_open_mb": open_rss,
               "rss_peak_open_mb": after_probe["peak_mb"], "rss_peak_mb": end["peak_mb"], "new_client_healthz": status,
               "new_client_ms": probe_ms,
               "rss_after_close_mb": after_close, "rss_after_mb": after_close, "server_cpu_s": cpu, **dog.figures()}
    observed = (f"server took {accepted_mb} MB ({end_counts}); RSS {mb(before)} -> {mb(open_rss)} MB with them open, "
                f"{mb(after_close)} 3 s after closing (peak {mb(end['peak_mb'])}); a new GET /healthz: {status} "
                f"after {probe_ms:.0f} ms; server CPU {cpu} s")
    if dog.killed:
        observed = f"{dog.killed}; {observed}"
    return observed, figures


# --------------------------------------------------------------------------------------------- N: RSS ratchet


def case_n(ctx: Context) -> None:
    attempt(ctx.report, "N1", "one fresh server: J1, L1, K1, M2 one after another; RSS 2 s after each (3 s after "
            "closing for M2)", lambda: ratchet(ctx))


def ratchet(ctx: Context) -> Outcome:
    book = Book(ctx.shared)
    steps = [
        ("J1", lambda server: heavy_post(server, ZERO_SHOT, j1_body(), LONG_WAIT)),
        ("L1", lambda server: heavy_post(server, NER, l1_body(book), LONG_WAIT)),
        ("K1", lambda server: heavy_post(server, ZERO_SHOT, k_body(book))),
        ("M2", lambda server: pipelined_unread(server, 10)),
    ]
    chain, results = [], {}
    with Server(*ctx.models.repository_flags()) as server:
        chain.append(("before", server.rss()))
        for name, step in steps:
            log(f"N1: {name}")
            observed, figures = step(server)
            results[name] = {"observed": observed, "rss_after_mb": figures.get("rss_after_mb"),
                             "killed": figures.get("watchdog_killed")}
            if figures.get("watchdog_killed") or not server.alive():
                chain.append((name, f"{figures.get('watchdog_killed') or 'server died'}"))
                break
            chain.append((name, figures["rss_after_mb"]))
    text = " -> ".join(f"{name} {mb(value) if isinstance(value, float) else value}" for name, value in chain)
    return f"RSS MB: {text}", {"chain": chain, "steps": results}


# --------------------------------------------------------------------------------------------- O: two pools, one port


def listeners(port: int) -> int:
    """Listening TCP sockets on `port` (ss -ltnH), any address."""
    try:
        done = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
        return len([line for line in done.stdout.splitlines() if line.strip()])
    except (OSError, subprocess.TimeoutExpired):  # no ss: /proc/net/tcp{,6}, state 0A is LISTEN
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            count += sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")
        return count


class Launched:
    """A `python -m app` process started by hand (not waited for): its output lines read in a thread."""

    def __init__(self, arguments: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "app", *arguments], cwd=REPO, env=server_env(env),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _CHILDREN.add(self.process)
        self.started = time.monotonic()
        self.lines: list[str] = []
        self.ready_at: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if POOL_READY_LINE.search(line) and self.ready_at is None:
                self.ready_at = time.monotonic() - self.started

    def settled(self) -> bool:
        return self.ready_at is not None or self.process.poll() is not None

    def state(self) -> str:
        if self.ready_at is not None:
            code = self.process.poll()
            return f"ready after {self.ready_at:.1f} s" + ("" if code is None else f", then exit {code}")
        if self.process.poll() is not None:
            return f"exit {self.process.returncode}: {tail_line(self.lines)[:160]}"
        return "neither ready nor exited"

    def stop(self) -> None:
        pids = identities(process_tree(self.process.pid))
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        kill_tree(pids)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _CHILDREN.discard(self.process)


def case_o(ctx: Context) -> None:
    attempt(ctx.report, "O1", "two `python -m app --processes 2 --port P` (repository) started within 0.5 s; wait up to 120 s",
            lambda: two_pools(ctx.models))


def two_pools(models: Models, wait_s: float = 120) -> Outcome:
    port = free_port()
    arguments = [*models.repository_flags(2), "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    pools: list[Launched] = []
    try:
        pools.append(Launched(arguments))
        time.sleep(0.3)
        pools.append(Launched(arguments))
        dogs = [Watchdog(pool.process, limit_s=wait_s + 60, tree=True).__enter__() for pool in pools]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not all(pool.settled() for pool in pools):
            time.sleep(0.5)
        time.sleep(1)
        count = listeners(port)
        for dog in dogs:
            dog.__exit__(None, None, None)
        states = [pool.state() for pool in pools]
    finally:
        for pool in pools:
            pool.stop()
    killed = [dog.killed for dog in dogs if dog.killed]
    observed = f"first: {states[0]}; second: {states[1]}; {count} listening sockets on port P" + (
        f"; {'; '.join(killed)}" if killed else "")
    return observed, {"port": port, "first": states[0], "second": states[1], "listening_sockets": count,
                      "first_lines": pools[0].lines[-20:], "second_lines": pools[1].lines[-20:],
                      "watchdog_killed": killed or None}


# --------------------------------------------------------------------------------------------- P: the small ones

SENTIMENT_BODY = dumps({"inputs": "a fine film"})


def case_p(ctx: Context) -> None:
    models = ctx.models
    attempt(ctx.report, "P1", 'ROBERTA_API_KEY="secret\\n" (as read from a secret file): POST /models/sentiment with '
            "Authorization: Bearer secret", lambda: keyed_post(models, "secret\n", {"Authorization": "Bearer secret"}))
    attempt(ctx.report, "P2", 'ROBERTA_API_KEY="   ": does it start; POST /models/sentiment without Authorization',
            lambda: keyed_post(models, "   ", {}))
    attempt(ctx.report, "P3", "ROBERTA_API_KEY=secret: raw POST /models/sentiment with two Authorization headers "
            "(Bearer wrong, Bearer secret), then the reverse order", lambda: two_authorizations(models))
    with Servers(*models.repository_flags()) as servers:
        attempt(ctx.report, "P4", f"POST {ZERO_SHOT}/ (trailing slash), a valid zero-shot body, Host: evil.example",
                lambda: trailing_slash(servers.get()))
        attempt(ctx.report, "P5", "HEAD /healthz, HEAD /readyz, HEAD /metrics", lambda: heads(servers.get()))
        attempt(ctx.report, "P6", "raw: 'GET /healthz HTTP/2.0' + Host, and 'GET /healthz' with no version (HTTP/0.9)",
                lambda: odd_versions(servers.get()))
    attempt(ctx.report, "P7", "port held by a plain listening socket: python -m app --model-repository R --processes 1 "
            "--port P", lambda: port_taken(models))
    attempt(ctx.report, "P8", "pool --processes 2: 16 threads POST /models/sentiment, a new connection each "
            "(http.client, Connection: close); SIGTERM to the supervisor after 3 s; until each sees refused for 2 s",
            lambda: sigterm_under_load(models))
    attempt(ctx.report, "P9", "pool --processes 2 (TMPDIR a fresh folder): SIGKILL the supervisor, wait 10 s: "
            "roberta-metrics-* left?", lambda: killed_pool_leftovers(models))
    attempt(ctx.report, "P10", "stdout/stderr a pipe never read, --log-level info: 2,000 sequential POST "
            "/models/sentiment, 5 s timeout each", lambda: blocked_logs(models))


def started_or_refused(flags: list[str], env: dict[str, str] | None = None) -> tuple[Server | None, str | None, dict]:
    try:
        return Server(*flags, env=env).__enter__(), None, {}
    except StartFailed as exc:
        return None, f"refused to start: exit {exc.exit_code}: {exc.first_line[:160]}", {
            "started": False, "exit_code": exc.exit_code, "line": exc.first_line}


def keyed_post(models: Models, key: str, headers: dict[str, str]) -> Outcome:
    server, refused, figures = started_or_refused(models.repository_flags(), {"ROBERTA_API_KEY": key})
    if server is None:
        return refused, figures
    try:
        with watched(server, 60) as dog:
            answer = post(server.url, "/models/sentiment", SENTIMENT_BODY, headers, timeout=30)
    finally:
        server.__exit__(None, None, None)
    observed = f"started; {answer.short()}" + (f" (WWW-Authenticate: {answer.headers['www-authenticate']})"
                                               if "www-authenticate" in answer.headers else "")
    return observed, {"started": True, "status": answer.status, "short": answer.short(), **dog.figures()}


def raw_exchange(server: Server, request: bytes, timeout: float = 30) -> tuple[str, list[tuple[str, str]], bytes]:
    with raw_connect(server, timeout=timeout) as sock:
        sock.sendall(request)
        return read_response(sock, timeout)


def two_authorizations(models: Models) -> Outcome:
    server, refused, figures = started_or_refused(models.repository_flags(), {"ROBERTA_API_KEY": "secret"})
    if server is None:
        return refused, figures
    statuses = {}
    try:
        with watched(server, 60) as dog:
            for order in (("wrong", "secret"), ("secret", "wrong")):
                request = (f"POST /models/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Authorization: Bearer {order[0]}\r\nAuthorization: Bearer {order[1]}\r\n"
                           f"Content-Length: {len(SENTIMENT_BODY)}\r\nConnection: close\r\n\r\n").encode() + SENTIMENT_BODY
                statuses[" then ".join(order)] = raw_exchange(server, request)[0]
    finally:
        server.__exit__(None, None, None)
    observed = "; ".join(f"{order}: {status}" for order, status in statuses.items())
    return observed, {"statuses": statuses, **dog.figures()}


def trailing_slash(server: Server) -> Outcome:
    body = dumps({"inputs": "a fine film", "parameters": {"candidate_labels": ["good", "bad"]}})
    request = (f"POST {ZERO_SHOT}/ HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with watched(server, 60) as dog:
        status_line, headers, response = raw_exchange(server, request)
    location, content_type = header(headers, "location"), header(headers, "content-type")
    head = response[:100].decode("latin-1")
    observed = f"{status_line}; Location: {location}; Content-Type: {content_type}; body: {head!r}"
    return observed, {"status_line": status_line, "location": location, "content_type": content_type, "body_head": head,
                      **dog.figures()}


def heads(server: Server) -> Outcome:
    statuses = {}
    with watched(server, 60) as dog:
        for path in ("/healthz", "/readyz", "/metrics"):
            try:
                statuses[path] = httpx.head(server.url + path, timeout=10).status_code
            except httpx.HTTPError as exc:
                statuses[path] = type(exc).__name__
    return ", ".join(f"HEAD {path} {status}" for path, status in statuses.items()), {"statuses": statuses, **dog.figures()}


def odd_versions(server: Server) -> Outcome:
    replies = {}
    with watched(server, 60) as dog:
        for name, request in (("HTTP/2.0", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n"), ("HTTP/0.9", b"GET /healthz\r\n\r\n")):
            with raw_connect(server) as sock:
                sock.sendall(request)
                reply, seconds = await_reply(sock, 10)
            replies[name] = "timeout (nothing in 10 s)" if reply == "nothing, still open" else reply
    return "; ".join(f"{name}: {reply}" for name, reply in replies.items()), {"replies": replies, **dog.figures()}


LOADING_LINE = re.compile(r"(\S+) warm in |(\S+): (?:text-classification|fill-mask|token-classification), ")


def port_taken(models: Models, timeout: float = 180) -> Outcome:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "app", *models.repository_flags(), "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "info"], cwd=REPO, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        with Watchdog(process, limit_s=timeout + 30):
            stdout, stderr, code = communicate_within(process, timeout)
        seconds = round(time.monotonic() - started, 1)
    lines = stderr.splitlines() + stdout.splitlines()
    loaded = sorted({next(g for g in m.groups() if g) for line in lines for m in [LOADING_LINE.search(line)] if m})
    last = tail_line(stderr.splitlines()) or tail_line(stdout.splitlines())
    error = next((line for line in lines if re.search(r"\berror\b", line, re.I)), None)
    observed = (f"exit {code if code is not None else f'none in {timeout:.0f} s'} after {seconds} s; "
                f"{len(stderr.splitlines())} stderr + {len(stdout.splitlines())} stdout lines; Traceback: "
                f"{'yes' if 'Traceback' in stderr + stdout else 'no'}; models loaded first: {', '.join(loaded) or 'none'}; "
                f"error line: {(error or 'none')[:160]}; last: {last[:160]}")
    return observed, {"exit_code": code, "seconds": seconds, "stderr_lines": len(stderr.splitlines()),
                      "stdout_lines": len(stdout.splitlines()), "traceback": "Traceback" in stderr + stdout,
                      "loaded_first": loaded, "error_line": error, "last_line": last, "stderr_head": stderr[:1500],
                      "stderr_tail": stderr[-1500:]}


def outcome_of(exc: Exception) -> str:
    """refused, reset (a reset, or closed without an answer: http.client's RemoteDisconnected, httpx's
    RemoteProtocolError), or other."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, httpx.ConnectError) and "refused" in text):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, httpx.RemoteProtocolError)) or "reset" in text:
        return "reset"
    return "other"


def post_new_connection(host: str, port: int, path: str, body: bytes, timeout: float = 30) -> int:
    """One POST on a connection of its own (Connection: close), with http.client: light enough that 16 threads
    keep a pool busy."""
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", path, body, {**JSON_HEADERS, "Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def sigterm_under_load(models: Models, clients: int = 16, load_s: float = 3, refused_for_s: float = 2,
                       give_up_s: float = 90) -> Outcome:
    port = free_port()
    counts = {"before": {}, "after": {}}
    others: list[str] = []
    lock = threading.Lock()
    signalled = threading.Event()
    stop = threading.Event()

    def client(host: str, port: int) -> None:
        refused_since = None
        while not stop.is_set():
            try:
                status = post_new_connection(host, port, "/models/sentiment", SENTIMENT_BODY)
                outcome = str(status) if status in (200, 503) else f"status {status}"
            except Exception as exc:
                outcome = outcome_of(exc)
                if outcome == "other":
                    with lock:
                        others.append(f"{type(exc).__name__}: {str(exc)[:80]}")
            phase = "after" if signalled.is_set() else "before"
            with lock:
                counts[phase][outcome] = counts[phase].get(outcome, 0) + 1
            if outcome == "refused":
                refused_since = refused_since or time.monotonic()
                if signalled.is_set() and time.monotonic() - refused_since >= refused_for_s:
                    return
                time.sleep(0.01)
            else:
                refused_since = None

    with Server(*models.repository_flags(2), port=port) as server, watched(server, give_up_s + 60) as dog:
        threads = [threading.Thread(target=client, args=server.host_port, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(load_s)
        signalled.set()
        server.sigterm()
        sent_at = time.monotonic()
        for thread in threads:
            thread.join(max(0.0, give_up_s - (time.monotonic() - sent_at)))
        stop.set()
        for thread in threads:
            thread.join(35)
        exit_s, code = server.wait_exit(max(1.0, 45 - (time.monotonic() - sent_at)))
        if exit_s is not None:
            exit_s = round(server.exited_at - sent_at, 1)
    total: dict[str, int] = {}
    for phase in counts.values():
        for outcome, n in phase.items():
            total[outcome] = total.get(outcome, 0) + n
    order = ["200", "503", "reset", "refused", "other"]
    keys = order + sorted(k for k in total if k not in order)
    text = ", ".join(f"{total.get(k, 0)} {k}" for k in keys if k in order or total.get(k))
    after = ", ".join(f"{n} {k}" for k, n in sorted(counts["after"].items()))
    observed = (f"{text} (after SIGTERM: {after or 'none'}); supervisor "
                + (f"exit {code} {exit_s} s after SIGTERM" if exit_s is not None else "still running 45 s after SIGTERM"))
    if others:
        observed += f"; other: {others[0]}"
    if dog.killed:
        observed = f"{dog.killed}; {observed}"
    return observed, {"total": total, "by_phase": counts, "others": others[:20], "exit_code": code, "exit_s": exit_s,
                      **dog.figures()}


def killed_pool_leftovers(models: Models, wait_s: float = 10) -> Outcome:
    import shutil
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="abuse-p9-"))
    try:
        before = sorted(p.name for p in private.glob("roberta-metrics-*"))
        with Server(*models.repository_flags(2), port=free_port(), env={"TMPDIR": str(private)}) as server:
            during = sorted(p.name for p in private.glob("roberta-metrics-*"))
            pids = identities(process_tree(server.pid))
            with watched(server, wait_s + 30):
                server.process.kill()
                server.process.wait(timeout=10)
                time.sleep(wait_s)
            after = sorted(p.name for p in private.glob("roberta-metrics-*"))
            alive = [pid for pid in list(pids)[1:]
                     if start_time(pid) == pids[pid] and memory_mb(pid)["rss_mb"] == memory_mb(pid)["rss_mb"]]  # no zombie
            kill_tree(pids)
        left = [name for name in after if name not in before]
        files = sum(1 for name in left for _ in (private / name).rglob("*"))
        observed = (f"roberta-metrics-* while running: {len(during)}; {wait_s:.0f} s after SIGKILL: "
                    f"{', '.join(left) + f' left ({files} files)' if left else 'none left'}; "
                    f"pool processes still alive: {len(alive)}")
        return observed, {"before": before, "during": during, "after": after, "left": left, "children_alive": alive}
    finally:
        shutil.rmtree(private, ignore_errors=True)


def blocked_logs(models: Models, requests: int = 2000, timeout: float = 5, start_s: float = 180) -> Outcome:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", *models.repository_flags(), "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "info"], cwd=REPO, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _CHILDREN.add(process)  # its output is never read
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_s
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                return f"did not become ready (exit {process.poll()})", {"ready": False, "exit_code": process.poll()}
            time.sleep(0.2)
        ok, first_timeout, outcomes = 0, None, {}
        started = time.monotonic()
        with Watchdog(process, limit_s=requests * 0.5 + 60) as dog, httpx.Client(timeout=timeout) as client:
            for index in range(requests):
                answer = post(url, "/models/sentiment", SENTIMENT_BODY, client=client, timeout=timeout)
                outcome = answer.short() if answer.error is None else answer.error.split(":")[0]
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if answer.status == 200:
                    ok += 1
                elif answer.error and "Timeout" in answer.error:
                    first_timeout = {"request": index + 1, "s_after_start": round(time.monotonic() - started, 1)}
                    break
            health = healthz_status_url(url, timeout)
        seconds = round(time.monotonic() - started, 1)
    finally:
        _kill(process)
        _CHILDREN.discard(process)
    if first_timeout:
        observed = (f"{ok} answered 200, then request {first_timeout['request']} timed out ({timeout:.0f} s), "
                    f"{first_timeout['s_after_start']} s after the first; then GET /healthz: {health}")
    else:
        observed = (f"{ok} of {requests} answered 200 in {seconds} s, no timeout ("
                    + ", ".join(f"{n} x {outcome}" for outcome, n in outcomes.items()) + ")")
    if dog.killed:
        observed = f"{dog.killed}; {observed}"
    return observed, {"ok": ok, "first_timeout": first_timeout, "outcomes": outcomes, "seconds": seconds,
                      "healthz_after": health, **dog.figures()}


def healthz_status_url(url: str, timeout: float) -> str:
    try:
        return str(httpx.get(url + "/healthz", timeout=timeout).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


# --------------------------------------------------------------------------------------------- main

CASES: dict[str, Callable[[Context], None]] = {
    "A": case_a, "B": case_b, "C": case_c, "D": case_d, "E": case_e, "F": case_f, "G": case_g, "H": case_h, "I": case_i,
    "J": case_j, "K": case_k, "L": case_l, "M": case_m, "N": case_n, "O": case_o, "P": case_p,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.abuse", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), type=str.upper, choices=list(CASES),
                        help="case letters to run (default: all)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data folder (default ../shared/data)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so atexit kills the servers
    import app

    log(f"code under test: {Path(app.__file__).resolve().parent} (python {sys.executable})")
    models = prepare_models(args.shared, args.cases)
    report = Report(args.out)
    context = Context(models, args.shared, report)
    report.print_header()
    for letter in args.cases:
        try:
            CASES[letter](context)
        except Exception as exc:
            report.add(letter, "case setup", f"ERROR {type(exc).__name__}: {str(exc)[:300]}",
                       {"error": str(exc), "traceback": traceback.format_exc()[-2000:]})
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
