"""Health rules and the aiokafka log summary, without a broker (the outage itself is tested on a
real one in test_broker_outage.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest
from aiokafka.errors import KafkaError

from octopus_crm.daemon.consumer import unless_stopped
from octopus_crm.daemon.health import Health
from octopus_crm.daemon.log_summary import ClientLogSummary


def stalled(health: Health, for_s: float) -> Health:
    """No progress for ``for_s``; the broker answered all along and answers now, lag 10 just measured."""
    now = time.monotonic()
    health.running, health.joined = True, True
    health.broker_answered(now)
    health.reachable_since = now - 3600
    health.lag_sampled(10, now)
    health.last_progress = now - for_s
    return health


def test_a_stall_counts_only_while_the_broker_answers() -> None:
    health = stalled(Health(stall_timeout=5, broker_timeout=15), 6)
    assert not health.alive()[0]
    health.broker_answered_at = time.monotonic() - 16  # silent longer than BROKER_TIMEOUT_S
    ok, reason = health.alive()
    assert ok and "broker unreachable" in reason
    ok, reason = health.ready()
    assert not ok and "broker unreachable: no answer for 16s" in reason


def test_a_stale_lag_is_not_evidence_of_a_stall() -> None:
    health = stalled(Health(stall_timeout=5, broker_timeout=15), 600)
    assert not health.alive()[0]
    health.lag_sampled_at = time.monotonic() - 60
    assert health.alive()[0]


def test_a_broker_that_went_silent_soon_after_the_last_progress_is_no_evidence() -> None:
    health = stalled(Health(stall_timeout=5, broker_timeout=15), 6)
    health.broker_answered_at = time.monotonic() - 4  # frozen 2 s after the last progress
    ok, reason = health.alive()
    assert ok, reason


def test_the_stall_clock_restarts_when_the_broker_comes_back() -> None:
    health = stalled(Health(stall_timeout=5, broker_timeout=15), 600)
    health.broker_answered_at = time.monotonic() - 100  # an outage ...
    health.broker_answered()  # ... that just ended
    health.lag_sampled(10)
    assert health.alive()[0], "no chance to make progress yet"
    health.reachable_since = time.monotonic() - 6
    health.broker_answered()
    health.lag_sampled(10)
    assert not health.alive()[0]


def test_ready_needs_a_recent_answer_and_membership() -> None:
    health = Health(broker_timeout=15)
    assert not health.ready()[0]
    health.broker_answered()
    assert health.ready()[1] == "not yet a member of the consumer group"
    health.joined, health.assigned = True, 4
    assert health.ready() == (True, "4 partitions assigned")


def test_client_errors_are_summarised_per_logger_and_interval() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    summary = ClientLogSummary(interval=0.3)
    handler.addFilter(summary)
    fetcher, coordinator, ours = (logging.getLogger(n) for n in ("aiokafka.fetcher", "aiokafka.coord", "octopus.x"))
    for logger in (fetcher, coordinator, ours):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        for i in range(500):
            fetcher.error("Failed fetch messages from %s: %s", 1, i)
            coordinator.error("Heartbeat failed")
        ours.error("our own line")
        time.sleep(0.35)
        fetcher.error("Failed fetch messages from %s: %s", 1, "last")
    finally:
        for logger in (fetcher, coordinator, ours):
            logger.removeHandler(handler)
            logger.propagate = True
    lines = out.getvalue().splitlines()
    assert lines == [
        "WARNING aiokafka.fetcher Failed fetch messages from 1: 0",
        "WARNING aiokafka.coord Heartbeat failed",
        "ERROR octopus.x our own line",
        "WARNING aiokafka.fetcher Failed fetch messages from 1: last (and 499 more from this logger suppressed in 0s)",
    ]


async def test_unless_stopped_gives_up_waiting_for_the_broker_on_stop() -> None:
    stopping = asyncio.Event()
    assert await unless_stopped(stopping, asyncio.sleep(0)) is True
    hung = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    assert await unless_stopped(stopping, hung) is False
    assert hung.cancelled()

    async def fails() -> None:
        raise KafkaError("no")

    with pytest.raises(KafkaError):
        await unless_stopped(asyncio.Event(), fails())
