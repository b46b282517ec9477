"""Batch closing rules, fan-out, deadlines, cancellation, overload and failure, against a recording model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from app.engine.batcher import Batcher, BatchLimits, Item, batch_positions, plan_batch, right_pad
from app.errors import DeadlineExceeded, InferenceFailed, NotReady, QueueFull
from app.serving.metrics import Metrics


class RecordingModel:
    """Answers each row with (sum of its real ids, its length), so every result names its input."""

    def __init__(self, delay: float = 0.0, failures: int = 0) -> None:
        self.delay = delay
        self.failures = failures
        self.batches: list[np.ndarray] = []
        self.alone: list[bool] = []

    async def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions=None, alone=False) -> dict:
        self.batches.append(input_ids.copy())
        self.alone.append(alone)
        await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("boom")
        if positions is not None:  # one row per asked position: (the id there, its index)
            return {"logits": np.stack([input_ids[positions[:, 0], positions[:, 1]], positions[:, 1]], axis=1).astype(np.float32)}
        real = attention_mask.astype(bool)
        return {"logits": np.stack([(input_ids * real).sum(axis=1), real.sum(axis=1)], axis=1).astype(np.float32),
                "length": real.sum(axis=1)}

    def seen(self) -> set[int]:
        return {int(x) for batch in self.batches for x in batch.ravel()}


def make(model, concurrency: int = 1, **limits) -> tuple[Batcher, Metrics]:
    metrics = Metrics()
    batcher = Batcher(model, pad_id=0, limits=BatchLimits(**limits), metrics=metrics.for_model("m"), concurrency=concurrency)
    return batcher, metrics


def seq(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int64)


def far() -> float:
    return time.monotonic() + 60


def test_batches_close_at_the_size_limit_and_results_reach_their_callers():
    async def scenario():
        model = RecordingModel()
        batcher, _ = make(model, max_batch_size=4, max_wait_s=0.05)
        batcher.start()
        inputs = [seq(i + 10, i + 100) for i in range(10)]
        futures = batcher.submit(inputs, far())
        results = await asyncio.gather(*futures)
        await batcher.stop()
        return model, inputs, results

    model, inputs, results = asyncio.run(scenario())
    assert [len(b) for b in model.batches][:2] == [4, 4] and sum(len(b) for b in model.batches) == 10
    for ids, result in zip(inputs, results):
        assert result["logits"].tolist() == [ids.sum(), len(ids)]
        assert result["length"] == len(ids)  # every output of the model, each sliced to its row


def test_batches_close_at_the_padded_token_budget():
    async def scenario():
        model = RecordingModel()
        batcher, _ = make(model, max_batch_size=32, max_batch_tokens=20, max_wait_s=0.05)
        batcher.start()
        await asyncio.gather(*batcher.submit([seq(*range(1, 11))] * 6, far()))
        await batcher.stop()
        return model

    model = asyncio.run(scenario())
    assert [b.shape for b in model.batches] == [(2, 10)] * 3


def test_a_lone_request_waits_at_most_max_wait():
    async def scenario():
        model = RecordingModel()
        batcher, _ = make(model, max_batch_size=8, max_wait_s=0.05)
        batcher.start()
        started = time.monotonic()
        (future,) = batcher.submit([seq(5)], far())
        await future
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed, model

    elapsed, model = asyncio.run(scenario())
    assert 0.04 <= elapsed < 1.0
    assert len(model.batches) == 1 and model.batches[0].shape == (1, 1)


def test_requests_arriving_within_the_wait_share_a_batch():
    async def scenario():
        model = RecordingModel()
        batcher, _ = make(model, max_batch_size=8, max_wait_s=0.2)
        batcher.start()
        first = batcher.submit([seq(1)], far())
        await asyncio.sleep(0.05)
        second = batcher.submit([seq(2, 3)], far())
        await asyncio.gather(*first, *second)
        await batcher.stop()
        return model

    model = asyncio.run(scenario())
    assert len(model.batches) == 1 and model.batches[0].tolist() == [[1, 0], [2, 3]]  # right-padded


def test_positions_come_back_as_one_row_each_to_the_sequence_that_asked():
    async def scenario():
        model = RecordingModel()
        batcher, _ = make(model, max_batch_size=8, max_wait_s=0.05)
        batcher.start()
        inputs = [seq(10, 11, 12, 13), seq(20, 21), seq(30, 31, 32)]
        asked = [np.array([1, 3]), np.array([0]), np.array([0, 1, 2])]
        results = await asyncio.gather(*batcher.submit(inputs, far(), asked))
        await batcher.stop()
        return model, results

    model, results = asyncio.run(scenario())
    assert len(model.batches) == 1  # one run served all three, rows fanned back out by position
    assert [r["logits"].tolist() for r in results] == [[[11, 1], [13, 3]], [[20, 0]], [[30, 0], [31, 1], [32, 2]]]


def test_batch_positions_are_row_index_pairs_in_row_order():
    assert batch_positions([None, None]) is None
    pairs = batch_positions([np.array([2, 5]), np.array([0])])
    assert pairs.tolist() == [[0, 2], [0, 5], [1, 0]] and pairs.dtype == np.int64
    with pytest.raises(ValueError, match="mixes"):
        batch_positions([np.array([1]), None])


def test_plan_groups_similar_lengths_and_runs_the_oldest_first():
    now = time.monotonic()
    lengths = [1, 50, 2, 49, 3, 48]
    pending = [Item(ids=np.ones(n, dtype=np.int64), deadline=0, future=None, enqueued_at=now + i) for i, n in enumerate(lengths)]
    batch, rest = plan_batch(pending, BatchLimits(max_batch_size=3, max_batch_tokens=10_000))
    assert sorted(item.length for item in batch) == [1, 2, 3]
    assert sorted(item.length for item in rest) == [48, 49, 50]
    # When the oldest is long, its group of long ones goes first.
    pending[1].enqueued_at = now - 1
    batch, _ = plan_batch(pending, BatchLimits(max_batch_size=3, max_batch_tokens=10_000))
    assert sorted(item.length for item in batch) == [48, 49, 50]
    # A sequence over the token budget runs alone rather than never.
    batch, _ = plan_batch(pending, BatchLimits(max_batch_size=3, max_batch_tokens=10))
    assert [item.length for item in batch] == [50]


def test_right_pad_builds_mask_and_padding():
    ids, mask = right_pad([seq(5, 6, 7), seq(8)], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_expired_work_is_dropped_before_the_model_sees_it():
    async def scenario():
        model = RecordingModel(delay=0.2)
        batcher, metrics = make(model, max_batch_size=1, max_wait_s=0.0)
        batcher.start()
        slow = batcher.submit([seq(1)], far())
        await asyncio.sleep(0.02)  # the model is now busy for 0.2 s
        (doomed,) = batcher.submit([seq(777)], time.monotonic() + 0.05)
        with pytest.raises(DeadlineExceeded):
            await doomed
        await asyncio.gather(*slow)
        await batcher.stop()
        return model, metrics

    model, metrics = asyncio.run(scenario())
    assert 777 not in model.seen()
    assert metrics.dropped.labels("m", "deadline")._value.get() == 1


def test_work_whose_caller_left_is_skipped():
    async def scenario():
        model = RecordingModel(delay=0.1)
        batcher, metrics = make(model, max_batch_size=1, max_wait_s=0.0)
        batcher.start()
        busy = batcher.submit([seq(1)], far())
        await asyncio.sleep(0.02)
        (gone,) = batcher.submit([seq(888)], far())
        gone.cancel()
        await asyncio.gather(*busy)
        await batcher.stop()
        return model, metrics, batcher

    model, metrics, batcher = asyncio.run(scenario())
    assert 888 not in model.seen()
    assert metrics.dropped.labels("m", "disconnected")._value.get() == 1
    assert batcher.depth == 0


def test_a_full_queue_refuses_at_once_and_whole():
    async def scenario():
        model = RecordingModel()
        batcher, metrics = make(model, max_queue=3)
        batcher.submit([seq(1), seq(2)], far())
        with pytest.raises(QueueFull) as refused:
            batcher.submit([seq(3), seq(4)], far())
        return batcher, metrics, refused.value

    batcher, metrics, refused = asyncio.run(scenario())
    assert batcher.depth == 2
    assert refused.headers["Retry-After"] == "1"
    assert metrics.rejected.labels("m")._value.get() == 1


def test_a_failed_batch_fails_its_members_and_the_next_batch_works():
    async def scenario():
        model = RecordingModel(failures=1)
        batcher, metrics = make(model, max_batch_size=2, max_wait_s=0.0)
        batcher.start()
        failed = batcher.submit([seq(1), seq(2)], far())
        outcomes = await asyncio.gather(*failed, return_exceptions=True)
        failures_after_first = batcher.consecutive_failures
        (ok,) = batcher.submit([seq(3)], far())
        result = await ok
        await batcher.stop()
        return outcomes, failures_after_first, result, batcher, metrics

    outcomes, failures_after_first, result, batcher, metrics = asyncio.run(scenario())
    assert all(isinstance(o, InferenceFailed) for o in outcomes)
    assert failures_after_first == 1 and batcher.consecutive_failures == 0
    assert result["logits"].tolist() == [3, 1]
    assert metrics.failed_batches.labels("m")._value.get() == 1


def test_stop_finishes_accepted_work_and_refuses_new():
    async def scenario():
        model = RecordingModel(delay=0.01)
        batcher, _ = make(model, max_batch_size=2, max_wait_s=1.0)
        batcher.start()
        futures = batcher.submit([seq(i) for i in range(1, 8)], far())
        await batcher.stop()
        done = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
        with pytest.raises(NotReady):
            batcher.submit([seq(9)], far())
        return done

    assert all(asyncio.run(scenario()))


class OverlapModel(RecordingModel):
    """A recording model that counts how many batches are inside it at once."""

    def __init__(self, delay: float, delays: list[float] | None = None) -> None:
        super().__init__(delay=delay)
        self.inside = self.most_inside = 0
        self.base_delay, self.delays = delay, list(delays or [])  # the first calls' delays, then `delay`

    async def __call__(self, input_ids, attention_mask, positions=None, alone=False):
        self.delay = self.delays.pop(0) if self.delays else self.base_delay
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            return await super().__call__(input_ids, attention_mask, positions, alone)
        finally:
            self.inside -= 1


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_as_many_batches_run_at_once_as_the_model_has_runs_and_no_more(concurrency):
    async def scenario():
        model = OverlapModel(delay=0.02)
        batcher, _ = make(model, concurrency=concurrency, max_batch_size=2)
        batcher.start()
        inputs = [seq(i, i + 50) for i in range(1, 17)]
        futures = batcher.submit(inputs, far())
        results = await asyncio.gather(*futures)
        await batcher.stop()
        return model, inputs, results

    model, inputs, results = asyncio.run(scenario())
    assert model.most_inside == concurrency
    assert len(model.batches) == 8 and all(len(batch) == 2 for batch in model.batches)
    for ids, result in zip(inputs, results):
        assert result["logits"].tolist() == [ids.sum(), len(ids)]
        assert result["length"] == len(ids)  # every output of the model, each sliced to its row


def test_while_every_run_is_busy_the_queue_fills_for_the_next_cut():
    async def scenario():
        model = OverlapModel(delay=0.05)
        batcher, _ = make(model, concurrency=2, max_batch_size=32)
        batcher.start()
        first = batcher.submit([seq(1)], far())
        await asyncio.sleep(0.01)  # it runs alone: it holds both runs
        later = [f for i in range(10) for f in batcher.submit([seq(10 + i)], far())]
        await asyncio.gather(*first, *later)
        await batcher.stop()
        return model

    model = asyncio.run(scenario())
    # the ten that came while the lone one ran were cut together, then shared out between the two runs
    assert [len(batch) for batch in model.batches] == [1, 5, 5] and model.alone == [True, False, False]
    assert sorted(int(x) for batch in model.batches[1:] for x in batch.ravel()) == list(range(10, 20))
    assert model.most_inside == 2


def test_share_out_keeps_neighbouring_lengths_together_in_near_equal_parts():
    from app.engine.batcher import share_out

    items = pending_items([1, 2, 3, 4, 5])
    assert [[item.length for item in part] for part in share_out(items, 2)] == [[1, 2, 3], [4, 5]]
    assert [[item.length for item in part] for part in share_out(items, 3)] == [[1, 2], [3, 4], [5]]
    assert [len(part) for part in share_out(items[:2], 4)] == [1, 1]  # never an empty run


def test_a_batch_runs_alone_only_when_nothing_else_runs_or_waits():
    async def scenario(concurrency):
        model = OverlapModel(delay=0.02, delays=[0.02, 0.08])
        batcher, _ = make(model, concurrency=concurrency, max_batch_size=2)
        batcher.start()
        await asyncio.gather(*batcher.submit([seq(i) for i in range(1, 7)], far()))
        await asyncio.gather(*batcher.submit([seq(9)], far()))
        await batcher.stop()
        return model

    model = asyncio.run(scenario(2))
    # three batches of two while work waits or another batch runs (the second outlasts the first), then a lone one
    assert model.alone == [False, False, False, True] and model.most_inside == 2
    assert asyncio.run(scenario(1)).alone == [False] * 4  # one run: nothing to give a lone batch


def test_stop_waits_for_every_batch_still_running():
    async def scenario():
        model = OverlapModel(delay=0.05)
        batcher, _ = make(model, concurrency=2, max_batch_size=1)
        batcher.start()
        futures = batcher.submit([seq(i) for i in range(1, 6)], far())
        await asyncio.sleep(0.01)
        await batcher.stop()
        return model, futures

    model, futures = asyncio.run(scenario())
    assert model.inside == 0 and len(model.batches) == 5
    assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures)


def pending_items(lengths: list[int]) -> list[Item]:
    now = time.monotonic()
    return [Item(ids=np.ones(n, dtype=np.int64), deadline=0, future=None, enqueued_at=now + i) for i, n in enumerate(lengths)]


def run_cost(batch: list[Item], overhead: float) -> float:
    return overhead + len(batch) * max(item.length for item in batch)


def test_plan_cuts_by_length_where_padding_costs_more_than_a_run():
    pending = pending_items([10, 40, 11, 12, 38, 9, 39, 20])  # the oldest is 10 tokens long
    batch, rest = plan_batch(pending, BatchLimits(max_batch_size=32, max_batch_tokens=10_000, run_overhead_tokens=14))
    # 20 would pad four rows by 8-11 tokens (38) to save one run (14); the long three are a run of their own.
    assert sorted(item.length for item in batch) == [9, 10, 11, 12]
    assert sorted(item.length for item in rest) == [20, 38, 39, 40]


def test_plan_takes_everything_that_fits_when_runs_are_dear_and_singletons_when_free():
    pending = pending_items([10, 40, 11, 12, 38, 9, 39, 20])
    dear, _ = plan_batch(pending, BatchLimits(max_batch_size=32, max_batch_tokens=10_000, run_overhead_tokens=1e6))
    assert len(dear) == len(pending)
    free, rest = plan_batch(pending, BatchLimits(max_batch_size=32, max_batch_tokens=10_000, run_overhead_tokens=0))
    assert [item.length for item in free] == [10] and len(rest) == 7  # any company would add padding


def test_plan_is_the_cheapest_cut_by_brute_force():
    """Every way to cut 9 sorted sequences into runs: the plan's run is a run of a cheapest plan."""
    import itertools
    import random

    generator = random.Random(7)
    for _ in range(30):
        lengths = [generator.randint(3, 60) for _ in range(9)]
        pending = pending_items(lengths)
        limits = BatchLimits(max_batch_size=4, max_batch_tokens=10_000, run_overhead_tokens=generator.choice([0, 5, 14, 60]))
        batch, rest = plan_batch(pending, limits)
        ordered = sorted(pending, key=lambda item: item.length)
        best = min(
            sum(run_cost(ordered[a:b], limits.run_overhead_tokens) for a, b in zip((0, *cuts), (*cuts, 9)))
            for k in range(9)
            for cuts in itertools.combinations(range(1, 9), k)
            if all(b - a <= 4 for a, b in zip((0, *cuts), (*cuts, 9)))
        )
        oldest = pending[0]
        assert oldest in batch and len(batch) <= 4 and set(batch).isdisjoint(rest) and len(batch) + len(rest) == 9
        # Plan the rest the cheapest way: the whole must match the brute-force optimum.
        total = run_cost(batch, limits.run_overhead_tokens)
        while rest:
            following, rest = plan_batch(rest, limits)
            total += run_cost(following, limits.run_overhead_tokens)
        assert total == pytest.approx(best), lengths


def test_a_packed_plan_mixes_lengths_that_a_padded_plan_cuts_apart():
    pending = pending_items([10, 40, 11, 12, 38, 9, 39, 20])
    padded = BatchLimits(max_batch_size=32, max_batch_tokens=10_000, run_overhead_tokens=14)
    packed = BatchLimits(max_batch_size=32, max_batch_tokens=10_000, run_overhead_tokens=14, attention_tokens=1000)
    assert len(plan_batch(pending, padded)[0]) == 4  # as above: padding the short ones to 40 costs more than a run
    assert len(plan_batch(pending, packed)[0]) == 8  # real tokens only, and attention over 8 x 40 costs 13 tokens
    # When attention is as dear as the work of a token at rows of 10, padding is paid again: cut as padded.
    dear = BatchLimits(max_batch_size=32, max_batch_tokens=10_000, run_overhead_tokens=14, attention_tokens=10)
    assert sorted(item.length for item in plan_batch(pending, dear)[0]) == [9, 10, 11, 12]
