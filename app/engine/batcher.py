"""Dynamic batching: one task per model owns the queue and decides every batch.

Callers may only `submit` (and be refused at once when the queue is full); the task
alone reads the queue. A batch closes when it holds `max_batch_size` sequences, when
its padded tokens would pass `max_batch_tokens`, or `max_wait_s` after its oldest
sequence arrived. Waiting sequences are sorted by length and cut into the batches that
cost least to run (see plan_batch), and the batch that holds the oldest sequence runs
next: similar lengths ride together, so little compute goes to padding, and nobody waits
behind a stream of newcomers.
The next batch is cut when a run is free: `concurrency` batches run at once (one per core
on a CPU, see app.engine.onnx_runtime.run_layout). When nothing else runs or waits, a batch is shared
out among the runs, or, with fewer sequences than runs, runs alone in every run's place,
so the model may give it every core.
Sequences whose deadline passed, or whose caller left, are dropped before the model
sees them; every future is resolved exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app.errors import DeadlineExceeded, InferenceFailed, NotReady, QueueFull
from app.serving.metrics import ModelMetrics
from app.serving.tracing import RequestRecord, Tracing

log = logging.getLogger("app.engine.batcher")

# run(input_ids, attention_mask, positions, alone) -> one output row per sequence, or, when `positions` ([n, 2]:
# batch row, token index) is given, one row per position. `alone`: nothing else runs meanwhile, and nothing waits.
# (input_ids, attention_mask, positions, alone) -> every output of the model by name, a row per sequence or position.
RunBatch = Callable[[np.ndarray, np.ndarray, np.ndarray | None, bool], Awaitable[dict[str, np.ndarray]]]
Rows = dict[str, np.ndarray]  # one sequence's share of each output


@dataclass(eq=False)
class Item:
    ids: np.ndarray
    deadline: float  # time.monotonic()
    future: asyncio.Future
    positions: np.ndarray | None = None  # token indices to compute output rows at (masks); None: one row per sequence
    record: RequestRecord | None = None  # the request's, told its wait and its batch
    enqueued_at: float = field(default_factory=time.monotonic)
    length: int = field(init=False)  # read a few times per sequence per cut: an attribute, not a property

    def __post_init__(self) -> None:
        self.length = len(self.ids)


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_s: float = 0.0
    max_queue: int = 1024
    # What one run costs beyond its tokens, in tokens of work (see plan_batch). The default makes a run cost
    # more than any padding, so everything that fits rides together; the service measures it at start-up.
    run_overhead_tokens: float = 1e9
    # Packed execution (export --packed): the padded row length at which one padded slot's attention costs as
    # much as one real token's other work (measured at start-up). None: padded execution, every slot a token.
    attention_tokens: float | None = None


PLAN_WINDOW = 4  # plan over this many batches' worth of sequences around the oldest: bounds the cost of planning


def padded_tokens(lengths: Sequence[int]) -> int:
    return len(lengths) * max(lengths) if lengths else 0


def plan_batch(pending: list[Item], limits: BatchLimits) -> tuple[list[Item], list[Item]]:
    """Split `pending` into (the batch to run now, what keeps waiting).

    A model run costs `limits.run_overhead_tokens` plus its padded tokens (rows x longest row): on
    a CPU, padding is paid in full, and a batch of 32 SST-2 sentences in arrival order is half padding.
    Sorted by length, the waiting sequences are cut into the runs of least total cost
    (dynamic programming over cut points), within the size and token limits, and the run
    that holds the oldest sequence goes now: nobody waits behind a stream of newcomers.
    Runs that cost little more when small (a CPU) give small batches of equal lengths; runs
    that cost the same whatever their size (a GPU) give few large ones. A sequence longer than
    the token budget still runs, alone.
    A padding-free graph pays for its real tokens plus attention over the padded rows
    (rows x longest^2 / attention_tokens): lengths may mix more before a cut pays.
    """
    ordered = sorted(pending, key=lambda item: item.length)
    oldest = min(range(len(ordered)), key=lambda index: ordered[index].enqueued_at)
    reach = PLAN_WINDOW * limits.max_batch_size
    start = max(0, oldest - reach)
    window = ordered[start : oldest + reach + 1]
    lengths = [item.length for item in window]
    real = [0]  # real[j]: tokens in window[:j]
    for length in lengths:
        real.append(real[-1] + length)
    # best[j]: least cost of running window[:j]; first[j]: where the last run of that plan starts.
    best = [0.0] + [float("inf")] * len(window)
    first = [0] * (len(window) + 1)
    # The limits as locals: this loop runs on the event loop, up to max_batch_size times per waiting sequence.
    most, budget, attention = limits.max_batch_size, limits.max_batch_tokens, limits.attention_tokens
    overhead = limits.run_overhead_tokens
    for end in range(1, len(window) + 1):
        longest = lengths[end - 1]
        fits = min(most, end, max(1, budget // longest) if longest else most)  # one sequence runs whatever its length
        least, cut = best[end], first[end]
        for size in range(1, fits + 1):
            if attention is None:
                cost = best[end - size] + overhead + size * longest
            else:
                tokens = real[end] - real[end - size]
                cost = best[end - size] + overhead + tokens + size * longest * longest / attention
            if cost < least:
                least, cut = cost, end - size
        best[end], first[end] = least, cut
    end = len(window)
    while first[end] > oldest - start:
        end = first[end]
    low, high = start + first[end], start + end
    return ordered[low:high], ordered[:low] + ordered[high:]


def share_out(batch: list[Item], parts: int) -> list[list[Item]]:
    """`batch` (sorted by length) as `parts` runs of neighbouring lengths, as near equal in size as can be."""
    size, extra = divmod(len(batch), parts)
    out, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        if end > start:
            out.append(batch[start:end])
        start = end
    return out


def right_pad(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right padding: left padding shifts RoBERTa's position ids and changes classifier logits."""
    width = max(len(ids) for ids in sequences)
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class Batcher:
    def __init__(self, run: RunBatch, *, pad_id: int, limits: BatchLimits, metrics: ModelMetrics, concurrency: int = 1,
                 tracing: Tracing | None = None, model: str = "") -> None:
        self._run = run
        self._tracing = tracing or Tracing()
        self._model = model  # its name, for the batch spans
        self.concurrency = concurrency
        self._pad_id = pad_id
        self.limits = limits
        self._metrics = metrics
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._depth = 0  # sequences submitted and not yet batched or dropped
        self._task: asyncio.Task | None = None
        self._closing = False
        self.consecutive_failures = 0

    @property
    def depth(self) -> int:
        return self._depth

    def check_room(self, count: int) -> None:
        """Raise now if `count` more sequences cannot be accepted."""
        if self._closing:
            raise NotReady("the server is shutting down", headers={"Retry-After": "1"})
        if self._depth + count > self.limits.max_queue:
            self._metrics.rejected.inc()
            raise QueueFull("the server is at capacity; retry shortly", headers={"Retry-After": "1"})

    def submit(self, sequences: Sequence[np.ndarray], deadline: float, positions: Sequence[np.ndarray | None] | None = None,
               record: RequestRecord | None = None) -> list[asyncio.Future]:
        """Queue one request's sequences; refused whole, at once, if they do not all fit."""
        self.check_room(len(sequences))
        loop = asyncio.get_running_loop()
        futures = []
        for index, ids in enumerate(sequences):
            item = Item(ids=ids, deadline=deadline, future=loop.create_future(), positions=positions[index] if positions else None,
                        record=record)
            self._queue.put_nowait(item)
            futures.append(item.future)
        self._count(len(sequences))
        return futures

    def _count(self, change: int) -> None:
        # Set at each change, not read at the scrape: in a pool of processes (app.serving.supervisor) a scrape reads
        # every process's value from its file, where a function read at the scrape would give 0.
        self._depth += change
        self._metrics.queue_depth.set(self._depth)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Refuse new work, finish everything already accepted, then end the task."""
        self._closing = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        pending: list[Item] = []
        running: set[asyncio.Task] = set()  # batches in the model; each resolves its own futures
        busy = 0  # runs taken: one per batch, every run for a batch that runs alone
        freed = asyncio.Event()

        def release(taken: int) -> None:
            nonlocal busy
            busy -= taken
            freed.set()

        while True:
            # Cut a batch only when a run can take it: while every run is busy, the queue fills and the next
            # cut has more lengths to choose from.
            while busy >= self.concurrency:
                freed.clear()
                await freed.wait()
            if not pending:
                if self._closing and self._queue.empty():
                    break
                self._take(await self._queue.get(), pending)
            self._drain(pending)
            await self._wait_for_company(pending)
            pending = self._drop_abandoned(pending)
            if not pending:
                continue
            batch, pending = plan_batch(pending, self.limits)
            self._count(-len(batch))
            idle = self.concurrency > 1 and busy == 0 and not pending and self._queue.empty()
            # Nothing else to do: a batch of at least one sequence per run is shared out among the runs; a
            # smaller one runs alone, holding every run (the model may give it every core).
            alone = idle and len(batch) < self.concurrency
            parts = share_out(batch, self.concurrency) if idle and not alone else [batch]
            for part in parts:
                taken = self.concurrency if alone else 1
                busy += taken
                run = asyncio.create_task(self._execute(part, alone))
                running.add(run)
                run.add_done_callback(lambda done, taken=taken: (running.discard(done), release(taken)))
        await asyncio.gather(*running)  # stop() returns when everything accepted has been answered

    def _take(self, item: Item | None, pending: list[Item]) -> None:
        if item is not None:
            pending.append(item)

    def _drain(self, pending: list[Item]) -> None:
        while not self._queue.empty():
            self._take(self._queue.get_nowait(), pending)

    async def _wait_for_company(self, pending: list[Item]) -> None:
        """Hold the batch open until it is full or its oldest sequence has waited max_wait."""
        while pending and not self._closing and not self._is_full(pending):
            oldest = min(item.enqueued_at for item in pending)
            remaining = oldest + self.limits.max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=remaining)
            except TimeoutError:
                return
            self._take(item, pending)
            self._drain(pending)

    def _is_full(self, pending: list[Item]) -> bool:
        if len(pending) >= self.limits.max_batch_size:
            return True
        return padded_tokens([item.length for item in pending]) >= self.limits.max_batch_tokens

    def _drop_abandoned(self, pending: list[Item]) -> list[Item]:
        now = time.monotonic()
        keep = []
        for item in pending:
            if item.deadline <= now:
                if not item.future.done():
                    item.future.set_exception(DeadlineExceeded("the request's deadline passed before it reached the model"))
                self._metrics.dropped_deadline.inc()
            elif item.future.done():  # cancelled: the caller disconnected
                self._metrics.dropped_disconnected.inc()
            else:
                keep.append(item)
                continue
            self._count(-1)
        return keep

    async def _execute(self, batch: list[Item], alone: bool = False) -> None:
        started = time.monotonic()
        for item in batch:
            self._metrics.queue_wait.observe(started - item.enqueued_at)
            if item.record is not None:
                item.record.batched(item.enqueued_at, started, len(batch))
        input_ids, attention_mask = right_pad([item.ids for item in batch], self._pad_id)
        real = int(attention_mask.sum())
        self._metrics.batch_size.observe(len(batch))
        self._metrics.padded_tokens.observe(input_ids.size)
        self._metrics.padding_ratio.observe(1.0 - real / input_ids.size)
        failed = False
        try:
            positions = batch_positions([item.positions for item in batch])
            outputs = await self._run(input_ids, attention_mask, positions, alone)
            expected = len(batch) if positions is None else len(positions)
            for name, rows in outputs.items():
                if len(rows) != expected:
                    raise RuntimeError(f"model returned {len(rows)} rows of {name} where {expected} were asked for")
        except Exception as exc:
            log.exception("inference failed for a batch of %d", len(batch))
            failed = True
            self._metrics.failed_batches.inc()
            self.consecutive_failures += 1
            for item in batch:
                if not item.future.done():
                    failure = InferenceFailed("inference failed for this request's batch")
                    failure.__cause__ = exc
                    item.future.set_exception(failure)
            return
        finally:
            ended = time.monotonic()
            self._metrics.inference.observe(ended - started)
            if self._tracing.enabled:
                self._tracing.batch([item.record for item in batch if item.record is not None], started, ended, len(batch),
                                    input_ids.size, self._model, failed)
        self.consecutive_failures = 0
        first = 0
        for row, item in enumerate(batch):
            count = 1 if item.positions is None else len(item.positions)
            if not item.future.done():
                # A view, not a copy: a fill-mask batch's rows are tens of MB, and copying them here would
                # hold the event loop. The batch's array lives until its last request is answered.
                share = row if item.positions is None else slice(first, first + count)
                item.future.set_result({name: rows[share] for name, rows in outputs.items()})
            first += count


def batch_positions(per_sequence: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """(batch row, token index) pairs for every sequence's positions, in row order; None when no sequence has any."""
    if all(positions is None for positions in per_sequence):
        return None
    if any(positions is None for positions in per_sequence):
        raise ValueError("a batch mixes sequences with and without positions")
    pairs = [np.stack([np.full(len(p), row), p], axis=1) for row, p in enumerate(per_sequence)]
    return np.concatenate(pairs).astype(np.int64)
