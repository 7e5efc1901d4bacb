"""Per-key ordering: one key's work runs in submission order, different keys concurrently."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from octopus_crm.daemon.ordering import KeyedExecutor

Work = tuple[str | None, int]


async def settle(executor: KeyedExecutor[Work]) -> None:
    """Let finished workers exit."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert executor.active_keys == 0


async def test_each_key_runs_in_order_under_concurrency() -> None:
    rng = random.Random(42)
    seen: dict[str | None, list[int]] = defaultdict(list)
    running: dict[str | None, int] = defaultdict(int)
    overlaps = 0
    total = 8 * 25
    finished = asyncio.Event()

    async def handle(work: Work) -> None:
        nonlocal overlaps
        key, seq = work
        running[key] += 1
        overlaps += running[key] > 1
        await asyncio.sleep(rng.random() * 0.003)
        seen[key].append(seq)
        running[key] -= 1
        if sum(len(v) for v in seen.values()) == total:
            finished.set()

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    for seq in range(25):
        for k in range(8):
            executor.submit(f"k{k}", (f"k{k}", seq))
        if seq % 5 == 0:
            await asyncio.sleep(0.001)  # submissions interleave with running work
    await asyncio.wait_for(finished.wait(), 5)
    assert overlaps == 0
    assert dict(seen) == {f"k{k}": list(range(25)) for k in range(8)}
    await settle(executor)


async def test_different_keys_run_concurrently() -> None:
    started: set[str | None] = set()
    all_started = asyncio.Event()

    async def handle(work: Work) -> None:
        started.add(work[0])
        if len(started) == 3:
            all_started.set()
        await all_started.wait()  # deadlocks unless all three keys are in flight at once

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    for key in ("a", "b", "c"):
        executor.submit(key, (key, 0))
    await asyncio.wait_for(all_started.wait(), 1)
    await settle(executor)


async def test_none_keys_run_unordered_and_concurrently() -> None:
    gate = asyncio.Event()
    started = 0
    done: list[int] = []

    async def handle(work: Work) -> None:
        nonlocal started
        started += 1
        if work[1] == 0:
            await gate.wait()  # the first one blocks; the others must not wait behind it
        done.append(work[1])

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    for seq in range(4):
        executor.submit(None, (None, seq))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(done) == [1, 2, 3]
    gate.set()
    await asyncio.sleep(0.01)
    assert sorted(done) == [0, 1, 2, 3]
    await settle(executor)


async def test_discard_drops_only_work_that_has_not_started() -> None:
    gate = asyncio.Event()
    ran: list[Work] = []

    async def handle(work: Work) -> None:
        ran.append(work)
        await gate.wait()

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    for seq in range(4):
        executor.submit("a", ("a", seq))
    executor.submit("b", ("b", 0))
    executor.submit("b", ("b", 1))
    await asyncio.sleep(0)
    assert ran == [("a", 0), ("b", 0)]

    dropped = executor.discard(lambda w: w[0] == "a" or w == ("b", 0))
    assert dropped == [("a", 1), ("a", 2), ("a", 3)]  # ("a", 0), ("b", 0) are already running

    gate.set()
    await asyncio.sleep(0.01)
    assert ran == [("a", 0), ("b", 0), ("b", 1)]
    await settle(executor)


async def test_discard_then_new_work_for_the_same_key_runs() -> None:
    ran: list[Work] = []
    gate = asyncio.Event()

    async def handle(work: Work) -> None:
        ran.append(work)
        await gate.wait()

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    executor.submit("a", ("a", 0))
    executor.submit("a", ("a", 1))
    await asyncio.sleep(0)
    assert executor.discard(lambda w: True) == [("a", 1)]
    executor.submit("a", ("a", 2))
    gate.set()
    await asyncio.sleep(0.01)
    assert ran == [("a", 0), ("a", 2)]
    await settle(executor)


async def test_cancel_stops_matching_running_work_and_never_reruns_it() -> None:
    ran: list[Work] = []
    cancelled: list[Work] = []
    gate = asyncio.Event()

    async def handle(work: Work) -> None:
        ran.append(work)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(work)
            raise

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    executor.submit("a", ("a", 0))
    executor.submit("b", ("b", 0))
    await asyncio.sleep(0)
    assert executor.cancel(lambda w: w[0] == "a") == 1
    await asyncio.sleep(0)
    assert cancelled == [("a", 0)]
    assert executor.active_keys == 1  # "b" still runs

    # The partition comes back later with new work for the same key: only the new work runs.
    gate.set()
    executor.submit("a", ("a", 1))
    await asyncio.sleep(0.01)
    assert ran == [("a", 0), ("b", 0), ("a", 1)]
    await settle(executor)


async def test_a_failing_handler_runs_once_and_the_key_keeps_going() -> None:
    calls: list[Work] = []

    async def handle(work: Work) -> None:
        calls.append(work)
        if work[1] == 1:
            raise RuntimeError("handler bug")

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    for seq in range(4):
        executor.submit("a", ("a", seq))
    await asyncio.sleep(0.02)
    assert calls == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]  # no tight retry loop on ("a", 1)
    await settle(executor)


async def test_cancel_all_stops_everything() -> None:
    cancelled: list[Work] = []

    async def handle(work: Work) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(work)
            raise

    executor: KeyedExecutor[Work] = KeyedExecutor(handle)
    for key in ("a", "b", None):
        executor.submit(key, (key, 0))
        executor.submit(key, (key, 1))
    await asyncio.sleep(0)
    await executor.cancel_all()
    assert sorted(cancelled, key=str) == sorted([("a", 0), ("b", 0), (None, 0), (None, 1)], key=str)
    assert executor.active_keys == 0


async def test_finished_is_told_how_each_piece_of_work_ended_but_not_of_a_cancelled_one() -> None:
    told: list[tuple[Work, str | None]] = []
    gate = asyncio.Event()

    async def handle(work: Work) -> None:
        if work[1] == 1:
            raise RuntimeError("handler bug")
        if work[0] == "slow":
            await gate.wait()

    def finished(work: Work, error: Exception | None) -> None:
        told.append((work, None if error is None else str(error)))

    executor: KeyedExecutor[Work] = KeyedExecutor(handle, finished)
    for seq in range(3):
        executor.submit("a", ("a", seq))
    executor.submit("slow", ("slow", 0))
    await asyncio.sleep(0.01)
    # the error is handed over, not raised: the key's worker goes on with its next work
    assert told == [(("a", 0), None), (("a", 1), "handler bug"), (("a", 2), None)]
    assert executor.cancel(lambda w: w[0] == "slow") == 1
    await settle(executor)
    assert (("slow", 0), None) not in told and len(told) == 3
