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
