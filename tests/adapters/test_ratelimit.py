"""The limiter's answers to admission before any request was answered (a cold start)."""

from __future__ import annotations

import asyncio
import contextlib

from octopus_crm.adapters.ratelimit import Limiter, RateLimit


def limiter(concurrency: int) -> Limiter:
    return Limiter(RateLimit(requests=1_000_000, per_seconds=1, concurrency=concurrency))


async def test_a_cold_start_burst_is_admitted_while_the_first_requests_are_young() -> None:
    """Nothing answered yet and every slot busy: a backlog fetched at once is not handed to the
    retry topic wholesale (it used to be: "infinite until one request was timed")."""
    lim = limiter(4)
    with contextlib.ExitStack() as started:
        for _ in range(4):
            started.enter_context(lim.timed())
        assert all(lim.serves_within(1.0) for _ in range(40))
        assert lim.expected_latency < 1.0


async def test_a_vendor_hanging_from_the_start_is_seen_once_the_oldest_request_ages() -> None:
    lim = limiter(2)
    with lim.timed(), lim.timed():
        assert lim.serves_within(0.05)
        await asyncio.sleep(0.2)
        # one request queued behind two slots held for 0.2 s: at least 0.1 s to its turn
        assert lim.turn_in() >= 0.1
        assert not lim.serves_within(0.05)
        assert lim.expected_latency >= 0.2


async def test_the_smoothed_time_of_answered_requests_is_used_once_there_is_one() -> None:
    lim = limiter(1)
    with lim.timed():
        await asyncio.sleep(0.05)
    with lim.timed():  # a young request: the answered one's time still counts
        assert lim.turn_in() >= 0.04


async def test_acquire_and_release_hold_a_slot_and_hand_it_to_the_next_waiter() -> None:
    """The send path's acquire/release (a free slot taken without suspending) keep the
    concurrency bound of ``async with``, and a released slot goes to the request waiting for it."""
    lim = limiter(1)
    await lim.acquire()
    second = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0.01)
    assert not second.done()  # the only slot is held
    lim.release()
    await asyncio.wait_for(second, 1.0)
    third = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0.01)
    assert not third.done()
    third.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await third
    lim.release()
    async with lim:  # the slot the cancelled waiter never took is free again
        pass


async def test_a_limiter_that_paces_elsewhere_is_always_asked_for_the_turn() -> None:
    """A subclass's pace (the fleet's shared schedule) is not skipped by the local fast path."""
    paced: list[bool] = []

    class Elsewhere(Limiter):
        async def pace(self) -> None:
            paced.append(True)

    lim = Elsewhere(RateLimit(requests=1_000_000, per_seconds=1, concurrency=2))
    await lim.acquire()
    lim.release()
    async with lim:
        pass
    assert paced == [True, True]


async def test_admits_answers_as_expected_latency_and_serves_within_together() -> None:
    """The dispatcher's one-pass admission question gives the two-step answer, promise included."""
    for hold in (0.0, 0.12):
        one, other = limiter(2), limiter(2)
        with one.timed(), one.timed(), other.timed(), other.timed():
            await asyncio.sleep(hold)
            for budget in (0.05, 1.0):
                two_step = one.expected_latency <= budget and one.serves_within(budget)
                assert other.admits(budget) is two_step, (hold, budget)
                assert len(other._promised) == len(one._promised)


async def test_released_slots_go_to_the_waiters_in_order_skipping_cancelled_ones() -> None:
    """Slots are handed straight to the first live waiter; one cancelled while queued, or
    cancelled after it was handed a slot but before it ran, loses nobody a slot."""
    lim = limiter(1)
    await lim.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        await lim.acquire()
        order.append(n)

    waiters = [asyncio.create_task(wait(n)) for n in range(4)]
    await asyncio.sleep(0.01)
    waiters[1].cancel()  # cancelled while queued
    await asyncio.sleep(0)
    lim.release()  # to 0
    waiters[0].cancel()  # handed the slot, cancelled before it ran: the slot passes on to 2
    with contextlib.suppress(asyncio.CancelledError):
        await waiters[0]
    await asyncio.wait_for(waiters[2], 1.0)
    lim.release()
    await asyncio.wait_for(waiters[3], 1.0)
    assert order == [2, 3]
    lim.release()
    assert lim.take()  # the one slot is free again, nobody queued
    assert not lim.take()
    lim.release()


async def test_the_oldest_request_in_progress_is_tracked_as_requests_end_out_of_order() -> None:
    lim = limiter(4)
    first = lim.began()
    await asyncio.sleep(0.05)
    second, third = lim.began(), lim.began()
    lim.ended(second)
    assert lim.turn_in(ahead=10) > 0  # busy, and the oldest is 50 ms old
    assert lim._service_time(lim._started[0] + 0.2) > 0.19  # the first request's start is the front
    lim.ended(first)
    lim.ended(third)
    assert lim._in_progress == 0
    assert not lim._started
    fourth = lim.began()
    lim.ended(fourth)
    assert not lim._started
