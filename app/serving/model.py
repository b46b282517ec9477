"""One served model: its folder, tokenizer, engine and batcher. It knows no task and no engine.

Tasks (app.tasks) turn a request into sequences, hand them to `infer`, and shape the
rows that come back. Work that grows with the input (tokenizing, postprocessing) goes
through `off_loop`, onto the executor's threads, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.engine.batcher import Batcher, BatchLimits
from app.errors import DeadlineExceeded, InputTooLong, ServiceError
from app.serving.metrics import ModelMetrics
from app.serving.model_folder import ModelFolder
from app.engine.engine import Engine, warm_up_shapes
from app.engine.tokenize import Encoded, TextEncoder, TextInput, Tokens
from app.engine.threads import ThreadPool
from app.serving.tracing import RequestRecord, Tracing

log = logging.getLogger("app.serving.model")

SHORTEN = 'Shorten it or pass "truncation": true'
PIECE_CHARS = 8192  # characters of text per job on the tokenizer threads: a few milliseconds of work


class ServedModel:
    def __init__(
        self,
        name: str,
        folder: ModelFolder,
        encoder: TextEncoder,
        engine: Engine,
        limits: BatchLimits,
        metrics: ModelMetrics,
        executor: ThreadPool,
        *,
        memory_bytes: int | None = None,  # what loading it added to the process's resident memory
        tracing: Tracing | None = None,
    ) -> None:
        self.name = name
        self.folder = folder
        self.encoder = encoder
        self.engine = engine
        self.metrics = metrics
        self.batcher = Batcher(
            engine.run, pad_id=encoder.pad_id, limits=limits, metrics=metrics, concurrency=engine.concurrent_runs,
            tracing=tracing, model=name,
        )
        self._executor = executor
        self.memory_bytes = memory_bytes
        self.warm = False

    @property
    def task(self) -> str:
        return self.folder.task

    @property
    def takes_positions(self) -> bool:
        return self.engine.takes_positions

    async def encode(self, inputs: list[TextInput], truncation: bool, deadline: float, shorten: str = SHORTEN) -> list[Encoded]:
        """Token ids of every input with its special tokens, refused (413) when one is longer than the model takes
        and `truncation` is off. A text is tokenized only as far as it needs to be (see `tokens`)."""
        limit, room = self.encoder.max_seq_len, self.encoder.room
        if not truncation:
            for index, item in enumerate(inputs):
                if self.encoder.surely_too_long(item):
                    raise InputTooLong(f"inputs[{index}] is longer than {limit} tokens, the most the model takes. {shorten}")
        singles = [index for index, item in enumerate(inputs) if isinstance(item, str)]
        encoded: list[Encoded | None] = [None] * len(inputs)
        too_long = None
        if not truncation:
            def too_long(at: int) -> InputTooLong:
                return InputTooLong(f"inputs[{singles[at]}] is longer than {limit} tokens, the most the model takes. {shorten}")

        texts = await self.tokens(inputs if len(singles) == len(inputs) else [inputs[i] for i in singles], deadline,
                                  most=room, too_long=too_long)
        for index, text in zip(singles, texts):
            encoded[index] = Encoded(self.encoder.single(text.ids[:room]))
        if len(singles) < len(inputs):
            await self._encode_pairs(inputs, encoded, truncation, deadline, shorten)
        return encoded

    async def _encode_pairs(self, inputs: list[TextInput], encoded: list[Encoded | None], truncation: bool,
                            deadline: float, shorten: str) -> None:
        """A pair is tokenized whole, by the tokenizer's own pair truncation (the longer text is cut first, which
        depends on the whole length of both): in jobs of a bounded size, like the pieces of a text."""
        pairs = [index for index, item in enumerate(inputs) if not isinstance(item, str)]
        limit = self.encoder.max_seq_len
        started = time.perf_counter()
        for job in _jobs([inputs[index] for index in pairs], PIECE_CHARS):
            items = [inputs[pairs[at]] for at in job]
            run = self._executor.run_long if sum(len(a) + len(b) for a, b in items) > PIECE_CHARS else self._executor.run
            done = await run(self.encoder.encode, items, truncate=truncation)
            for at, item in zip(job, done):
                if len(item) > limit:
                    raise InputTooLong(f"inputs[{pairs[at]}] is {len(item)} tokens; the model takes at most {limit}. {shorten}")
                encoded[pairs[at]] = item
            _check(deadline)
        self.metrics.tokenize.observe(time.perf_counter() - started)

    async def tokens(
        self,
        texts: Sequence[str],
        deadline: float,
        *,
        most: int,
        offsets: bool = False,
        too_long: Callable[[int], ServiceError] | None = None,
    ) -> list[Tokens]:
        """Each text's tokens, at most `most` of them: a text with more comes back cut (complete False), or with
        `too_long`, the request is refused with `too_long(index)` as soon as one is found.

        The work goes to the tokenizer threads in jobs of about PIECE_CHARS characters (short texts
        together, a long one piece by piece; see TextEncoder.next_cut), and a text's pieces stop once
        it has more than `most` tokens: a megabyte of text that will be truncated costs the tokens
        kept, not the megabyte. Between jobs the request's deadline is checked, and a request whose
        client has gone (its task cancelled) hands over no more; the other requests' jobs, other
        models' included, take their turn on the threads in between. A piece that cannot be cut to
        that size (a long unbroken word; a tokenizer that cannot be cut) goes to the lane for long
        work, so that no one else's job waits behind it.
        """
        if not texts:
            return []
        started = time.perf_counter()
        if sum(map(len, texts)) <= PIECE_CHARS:  # most requests: one job, every text whole (no cut needed)
            done = await self._executor.run(self.encoder.content, texts, offsets=offsets, most=most + 1)
            self.metrics.tokenize.observe(time.perf_counter() - started)
            for index, text in enumerate(done):
                if len(text) > most and too_long is not None:
                    raise too_long(index)
            return [_joined([text], most, offsets) for text in done]
        found: list[list[Tokens]] = [[] for _ in texts]
        counts, starts = [0] * len(texts), [0] * len(texts)
        pending = list(range(len(texts)))
        while pending:
            job, size = [], 0
            for index in pending:
                end = self.encoder.next_cut(texts[index], starts[index], PIECE_CHARS)
                if job and size + end - starts[index] > PIECE_CHARS:
                    break
                job.append((index, starts[index], end))
                size += end - starts[index]
            run = self._executor.run_long if size > PIECE_CHARS else self._executor.run
            done = await run(self.encoder.content, [texts[index][a:b] for index, a, b in job], offsets=offsets, most=most + 1)
            for (index, start, end), piece in zip(job, done):
                if offsets and start:  # a later piece: its offsets into the whole text, its words after the earlier ones'
                    words_before = max((int(p.words.max()) + 1 for p in found[index] if len(p.words)), default=0)
                    piece = Tokens(piece.ids, piece.offsets + start, words=piece.words + words_before)
                found[index].append(piece)
                counts[index] += len(piece)
                starts[index] = end
                if counts[index] > most and too_long is not None:
                    raise too_long(index)
            pending = [index for index in pending if starts[index] < len(texts[index]) and counts[index] <= most]
            if pending:
                _check(deadline)
        self.metrics.tokenize.observe(time.perf_counter() - started)
        return [_joined(pieces, most, offsets) for pieces in found]

    async def off_loop(self, function, *args, **kwargs):
        return await self._executor.run(function, *args, **kwargs)

    async def infer(self, sequences: list[np.ndarray], deadline: float, positions=None,
                    record: RequestRecord | None = None) -> list[dict[str, np.ndarray]]:
        """Each sequence's share of every output, by name: one row, or with `positions` (token indices per
        sequence) one per position. `record`: the request's, told its wait in the queue and its batch."""
        futures = self.batcher.submit(sequences, deadline, positions, record)
        # One sequence (most requests) needs no gather: one future fewer on the event loop per request.
        waiting = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        try:
            # asyncio.timeout, not wait_for: a timer that cancels this task, where wait_for adds a future of its
            # own and a callback between the answer and this task, on the event loop, per request.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                rows = await waiting
            return [rows] if len(futures) == 1 else rows
        except TimeoutError:
            raise DeadlineExceeded("the request did not finish before its deadline") from None
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # mark retrieved: a failed batch fails every member at once

    def start(self) -> None:
        self.batcher.start()

    async def warm_up(self) -> None:
        """Run the shapes first requests would pay for; then take what a run costs on the engine."""
        limits = self.batcher.limits
        shapes = warm_up_shapes(
            limits.max_batch_size, limits.max_batch_tokens, self.folder.max_seq_len, on_cuda=self.engine.device == "cuda"
        )
        before = resident_bytes()
        seconds = await self.engine.warm_up(shapes, self.encoder.pad_id)
        log.info("%s warm in %.2f s over shapes %s", self.name, seconds, shapes)
        costs = await self.engine.run_costs(self.encoder.pad_id, limits.max_batch_tokens)
        if costs.attention_tokens is not None:
            limits = replace(limits, attention_tokens=costs.attention_tokens)
            log.info("%s: padding-free; a padded slot's attention costs a token at rows of %.0f", self.name, costs.attention_tokens)
        limits = replace(limits, run_overhead_tokens=costs.overhead_tokens)
        log.info("%s: a run costs %.0f tokens of work beyond its tokens", self.name, limits.run_overhead_tokens)
        self.batcher.limits = limits  # its own batcher, before it serves
        after = resident_bytes()
        if self.memory_bytes is not None and before is not None and after is not None:
            self.memory_bytes += after - before  # the session's buffers for the shapes it will run
        if self.memory_bytes is not None:
            self.metrics.memory.set(self.memory_bytes)
        self.warm = True

    async def stop(self) -> None:
        await self.batcher.stop()
        self.engine.close()

    def info(self) -> dict:
        limits = self.batcher.limits
        return {
            "name": self.name,
            "task": self.task,
            "labels": list(self.folder.labels) or None,
            **self.engine.info(),
            "max_seq_len": self.folder.max_seq_len,
            "memory_bytes": self.memory_bytes,
            "batching": {
                "max_batch_size": limits.max_batch_size,
                "max_batch_tokens": limits.max_batch_tokens,
                "max_wait_ms": limits.max_wait_s * 1000,
                "max_queue": limits.max_queue,
                "run_overhead_tokens": round(limits.run_overhead_tokens, 1),
                "attention_tokens": None if limits.attention_tokens is None else round(limits.attention_tokens, 1),
            },
            "export": {
                "source": source_name(self.folder.manifest.get("source") or {}),
                "created_at": self.folder.manifest.get("created_at"),
                "format_version": self.folder.manifest.get("format_version"),
            },
        }


def _check(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise DeadlineExceeded("the request did not finish before its deadline")


def _jobs(inputs: Sequence[TextInput], size: int) -> list[list[int]]:
    """Indexes of `inputs` in consecutive groups of about `size` characters (one input alone may be more)."""
    jobs: list[list[int]] = []
    total = size
    for index, item in enumerate(inputs):
        length = sum(map(len, item)) if isinstance(item, tuple) else len(item)
        if total + length > size:
            jobs.append([])
            total = 0
        jobs[-1].append(index)
        total += length
    return jobs


def _joined(pieces: list[Tokens], most: int, offsets: bool) -> Tokens:
    """One text's pieces as one Tokens, cut to `most` tokens (complete False where it had more)."""
    ids = pieces[0].ids if len(pieces) == 1 else np.concatenate([piece.ids for piece in pieces])
    where = words = None
    if offsets:
        where = pieces[0].offsets if len(pieces) == 1 else np.concatenate([piece.offsets for piece in pieces])
        words = pieces[0].words if len(pieces) == 1 else np.concatenate([piece.words for piece in pieces])
    if len(ids) <= most:
        return Tokens(ids, where, words=words)
    return Tokens(ids[:most], where[:most] if offsets else None, complete=False, words=words[:most] if offsets else None)


def source_name(source: dict) -> str | None:
    """What the model was exported from, without the exporting machine's paths: a hub id, or a folder's name."""
    model = source.get("model")
    if not model or source.get("revision"):  # a hub id (it has a revision) is public already
        return model
    return Path(str(model)).name or None


def resident_bytes() -> int | None:
    """This process's resident memory (Linux); None where /proc is not there.

    Models load and warm up one after another, so what each step adds is that model's share.
    """
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
