"""The real daemon process: crash (SIGKILL) and restart, two replicas rebalancing, SIGTERM."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.events import keyed, make_event, webhook_config
from tests.process import DaemonProcess

pytestmark = pytest.mark.slow


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def result_events(results: list[Any]) -> collections.Counter[str]:
    return collections.Counter(orjson.loads(r.value)["eventId"] for r in results)


async def test_sigkill_mid_stream_then_restart_loses_nothing(broker: Any, topics: Any, tmp_path: Path) -> None:
    await broker.create(topics)
    hook = WebhookFake(latency=0.01)
    async with SandboxServer(hook):
        config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        events = [make_event(i, key=f"k{i % 20}") for i in range(1000)]
        await broker.produce(topics.input, keyed(events))
        first = DaemonProcess(broker, topics, config, tmp_path, "first", max_in_flight=50).start()
        try:
            await wait_for(lambda: len(hook.deliveries) >= 300, 60, "300 deliveries")
            first.kill()
        finally:
            first.stop()
        killed_at = len(hook.deliveries)
        assert killed_at < 1000, "killed too late to prove anything"
        second = DaemonProcess(broker, topics, config, tmp_path, "second", max_in_flight=50).start()
        try:
            await wait_for(lambda: len(hook.by_key) >= 1000, 90, "every event delivered")
            results = await broker.read(topics.results, expect=1000, timeout=60)
            code, _ = second.terminate()
        finally:
            second.stop()
    seen = result_events(results)
    assert set(seen) == {e["eventId"] for e in events}, "an event has no result"
    assert len(hook.by_key) == 1000, "a record is missing or doubled at the receiver"
    assert code == 0


async def test_two_replicas_share_partitions_through_a_rebalance(broker: Any, topics: Any, tmp_path: Path) -> None:
    await broker.create(topics)
    # slow enough (20 in flight x 0.3 s: ~12 s for 800) that the first replica cannot finish the
    # backlog before the second one has joined the group
    hook = WebhookFake(latency=0.3)
    async with SandboxServer(hook):
        config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        events = [make_event(i, key=f"k{i % 40}") for i in range(800)]
        await broker.produce(topics.input, keyed(events))
        a = DaemonProcess(broker, topics, config, tmp_path, "a", max_in_flight=20).start()
        b = DaemonProcess(
            broker,
            topics,
            config,
            tmp_path / "b" if (tmp_path / "b").mkdir() or True else tmp_path,
            "b",
            max_in_flight=20,
        )
        try:
            await wait_for(lambda: len(hook.deliveries) >= 100, 60, "first deliveries")
            b.start()
            await wait_for(lambda: len(hook.by_key) >= 800, 120, "every event delivered")
            results = await broker.read(topics.results, expect=800, timeout=60)
            consumed_a = a.metric("octopus_crm_events_consumed_total")
            consumed_b = b.metric("octopus_crm_events_consumed_total")
            code_a, _ = a.terminate()
            code_b, _ = b.terminate()
        finally:
            a.stop()
            b.stop()
    assert set(result_events(results)) == {e["eventId"] for e in events}
    assert len(hook.by_key) == 800
    assert consumed_a > 0 and consumed_b > 0, (consumed_a, consumed_b, b.log()[-2000:])
    assert (code_a, code_b) == (0, 0)


async def test_sigterm_finishes_in_flight_work_commits_and_exits_zero(broker: Any, topics: Any, tmp_path: Path) -> None:
    await broker.create(topics)
    hook = WebhookFake(latency=0.05)
    async with SandboxServer(hook):
        config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        events = [make_event(i, key=f"k{i % 50}") for i in range(2000)]
        await broker.produce(topics.input, keyed(events))
        daemon = DaemonProcess(broker, topics, config, tmp_path, "d", max_in_flight=100, grace_period_s=10).start()
        try:
            await wait_for(lambda: len(hook.deliveries) >= 200, 60, "deliveries")
            code, took = daemon.terminate()
        finally:
            daemon.stop()
        delivered = len(hook.by_key)
    assert code == 0
    assert took < 10 + 5
    results = await broker.read(topics.results, expect=delivered, timeout=30)
    committed = await broker.committed(topics.input, topics.group)
    by_partition: dict[int, set[int]] = collections.defaultdict(set)
    for r in results:
        source = orjson.loads(r.value)["source"]
        by_partition[source["partition"]].add(source["offset"])
    assert sum(v or 0 for v in committed.values()) > 0
    for partition, offset in committed.items():
        # every offset below the committed one has its result on the broker
        assert set(range(offset or 0)) <= by_partition[partition], partition
    assert delivered < 2000
