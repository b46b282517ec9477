"""Prometheus metrics, defined once per app on its own registry (no process-global state).

Each fact is recorded where it is known: queue depth and batch shape in the batcher,
inference time around the session call, end-to-end latency in the HTTP middleware.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

# Latency buckets from 1 ms to 60 s: a tiny model on a GPU and roberta-base at batch 64 on two cores.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class ModelMetrics:
    """The children labelled for one model, handed to that model's batcher and runtime."""

    queue_wait: Histogram
    tokenize: Histogram
    inference: Histogram
    batch_size: Histogram
    padded_tokens: Histogram
    padding_ratio: Histogram
    queue_depth: Gauge
    rejected: Counter
    dropped_deadline: Counter
    dropped_disconnected: Counter
    failed_batches: Counter
    memory: Gauge


# The reasons app/http/server.py answers and closes a connection with (the `error.type` of its answers).
HTTP_REFUSALS = ("bad_request", "headers_too_large", "not_ready", "request_timeout")


class Metrics:
    """The service's metrics; with `multiprocess_dir`, one of several processes (app.serving.supervisor) that share a port.

    Then every process writes its samples to files in that folder (prometheus_client's multiprocess mode, chosen
    when the variable PROMETHEUS_MULTIPROC_DIR is set before the client is imported) and each scrape, whichever
    process answers it, adds them all up: counters and histograms summed over every process that ever ran, the
    queue's depth and capacity and the models' memory summed over the live ones, readiness per live process.
    """

    def __init__(self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None and (
            values.ValueClass is values.MutexValue or os.environ.get("PROMETHEUS_MULTIPROC_DIR") != str(multiprocess_dir)
        ):  # the client writes where the variable said at its import; this reads `multiprocess_dir`
            raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must name multiprocess_dir before prometheus_client is imported")
        self.registry = registry or CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        r = self.registry
        self.requests = Counter(
            "roberta_requests", "HTTP requests by endpoint, model (empty for none) and status", ["endpoint", "model", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "roberta_request_duration_seconds", "End-to-end request latency", ["endpoint", "model"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "roberta_queue_wait_seconds", "Time a sequence waited before its batch ran", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokenize = Histogram(
            "roberta_tokenize_duration_seconds", "Tokenization time per request", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "roberta_inference_duration_seconds", "Model time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("roberta_batch_size", "Sequences per batch", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.padded_tokens = Histogram(
            "roberta_batch_padded_tokens", "Tokens per batch including padding", ["model"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            "roberta_batch_padding_ratio", "Share of a batch's tokens that are padding", ["model"], buckets=RATIO_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "roberta_queue_depth", "Sequences waiting for a batch", ["model"], registry=r, multiprocess_mode="livesum"
        )
        # The bound beside the depth, so that "queue near full" is one ratio in PromQL, whatever ROBERTA_MAX_QUEUE is.
        self.queue_capacity = Gauge(
            "roberta_queue_capacity", "Sequences the model's queue takes before requests get 429", ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter("roberta_rejected", "Requests refused because the queue was full", ["model"], registry=r)
        self.dropped = Counter(
            "roberta_dropped_sequences", "Sequences dropped before the model ran them", ["model", "reason"], registry=r
        )
        self.failed_batches = Counter("roberta_failed_batches", "Batches whose inference raised", ["model"], registry=r)
        self.memory = Gauge(
            "roberta_model_memory_bytes", "Resident memory that loading and warming up the model added", ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.provider = Gauge(
            "roberta_model_info",
            "1 for each loaded model, labelled with what runs it",
            ["model", "task", "backend", "precision", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Per process (a `pid` label) where there are several: min() over them is the pool's readiness.
        self.ready = Gauge("roberta_ready", "1 when every model is loaded and warm", registry=r, multiprocess_mode="liveall")
        self.http_refused = Counter(
            "roberta_http_refused",
            "Connections the HTTP layer answered and closed itself (headers too large, timeouts, not HTTP)",
            ["reason"],
            registry=r,
        )
        # At 0 from the start, so that rate() has a series to work on and the first refusal shows as an increase.
        for reason in HTTP_REFUSALS:
            self.http_refused.labels(reason)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The text a scrape gets, and its content type: this process's registry, or every process's samples in
        multiprocess mode; in the OpenMetrics format (which carries exemplars) when `accept` (the scrape's Accept
        header) asks for it, as Prometheus does, else in Prometheus' text format."""
        encode, content_type = choose_encoder(accept)
        if self.multiprocess_dir is None:
            return encode(self.registry), content_type
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        try:
            return encode(registry), content_type
        except struct.error:
            # A process creating its file at this moment shows it empty for an instant (prometheus/client_python#1199).
            return encode(registry), content_type

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(
            queue_wait=self.queue_wait.labels(model),
            tokenize=self.tokenize.labels(model),
            inference=self.inference.labels(model),
            batch_size=self.batch_size.labels(model),
            padded_tokens=self.padded_tokens.labels(model),
            padding_ratio=self.padding_ratio.labels(model),
            queue_depth=self.queue_depth.labels(model),
            rejected=self.rejected.labels(model),
            dropped_deadline=self.dropped.labels(model, "deadline"),
            dropped_disconnected=self.dropped.labels(model, "disconnected"),
            failed_batches=self.failed_batches.labels(model),
            memory=self.memory.labels(model),
        )
