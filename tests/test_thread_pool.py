"""app.engine.threads.ThreadPool: calls run on the named threads, answers and failures come back on the loop, shutdown finishes what it was given."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.engine.threads import ThreadPool


def test_run_answers_on_the_loop_from_a_named_worker_thread():
    workers = ThreadPool(2, "tokenize")
    try:
        async def main():
            names = await asyncio.gather(*(workers.run(lambda: threading.current_thread().name) for _ in range(20)))
            return names, await workers.run(pow, 2, 10), await workers.run(sorted, [3, 1, 2], reverse=True)

        names, power, ordered = asyncio.run(main())
        assert set(names) <= {"tokenize_0", "tokenize_1"} and threading.current_thread().name not in names
        assert power == 1024 and ordered == [3, 2, 1]
    finally:
        workers.shutdown()


def test_a_failure_is_raised_to_the_caller_and_the_thread_goes_on():
    workers = ThreadPool(1, "w")
    try:
        async def main():
            with pytest.raises(ZeroDivisionError):
                await workers.run(lambda: 1 / 0)
            return await workers.run(lambda: "still here")

        assert asyncio.run(main()) == "still here"
    finally:
        workers.shutdown()


def test_a_cancelled_call_is_dropped_without_an_error():
    workers = ThreadPool(1, "w")
    started = threading.Event()
    try:
        async def main():
            slow = workers.run(lambda: (started.set(), time.sleep(0.2), "late")[2])
            await asyncio.get_running_loop().run_in_executor(None, started.wait)
            slow.cancel()
            return await workers.run(lambda: "next")  # the late answer lands on a cancelled future, quietly

        assert asyncio.run(main()) == "next"
    finally:
        workers.shutdown()


def test_submit_runs_on_a_thread_named_natively_after_its_pool():
    from pathlib import Path

    workers = ThreadPool(1, "w")
    try:
        assert workers.submit(lambda a, b=0: a + b, 2, b=3).result(timeout=5) == 5
        native = workers.submit(lambda: Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())
        assert native.result(timeout=5) == "w_0"
    finally:
        workers.shutdown()


def test_shutdown_finishes_what_was_handed_over_then_refuses_more():
    workers = ThreadPool(1, "w")
    done = []
    futures = [workers.submit(lambda i=i: (time.sleep(0.02), done.append(i))) for i in range(5)]
    workers.shutdown(wait=True)
    assert done == [0, 1, 2, 3, 4] and all(future.done() for future in futures)
    with pytest.raises(RuntimeError):
        workers.submit(print)


def test_a_call_whose_caller_has_gone_before_it_starts_is_skipped():
    workers = ThreadPool(1, "w")
    release, ran = threading.Event(), []
    try:
        async def main():
            busy = workers.run(release.wait, 30)
            gone = workers.run(ran.append, "gone")
            gone.cancel()  # its request was cancelled while the thread was busy with another's
            release.set()
            await busy
            return await workers.run(ran.append, "next")

        asyncio.run(main())
        assert ran == ["next"]
    finally:
        release.set()
        workers.shutdown()


def test_a_long_call_has_a_lane_of_its_own_and_others_do_not_wait_behind_it():
    workers = ThreadPool(1, "w", long_threads=1)
    release = threading.Event()
    try:
        async def main():
            long = workers.run_long(release.wait, 30)
            short = await asyncio.wait_for(workers.run(lambda: threading.current_thread().name), timeout=10)
            release.set()
            return short, await long

        short, released = asyncio.run(main())
        assert short == "w_0" and released
    finally:
        release.set()
        workers.shutdown()
