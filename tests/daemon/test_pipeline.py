"""The daemon end to end on a real broker, in-process, against webhook receivers over HTTP."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from octopus_crm.daemon.app import Daemon
from octopus_crm.daemon.config import parse_config
from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.events import keyed, make_event, webhook_config


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[None]]:
    """The daemon runs in the background while the body reads topics; then it stops cleanly."""
    task = asyncio.create_task(daemon.run())
    try:
        yield task
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


async def run_until(daemon: Daemon, predicate: Any, timeout: float = 60.0) -> None:
    task = asyncio.create_task(daemon.run())
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if task.done():
                task.result()
                raise AssertionError("daemon stopped early")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting for the daemon")
            await asyncio.sleep(0.1)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


async def test_each_event_once_per_target_in_key_order(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    a, b = WebhookFake(), WebhookFake()
    a.name, b.name = "a", "b"
    async with SandboxServer(a, b):
        config = parse_config(webhook_config({"hook-a": f"{a.base_url}/hooks/a", "hook-b": f"{b.base_url}/hooks/b"}))
        events = [make_event(i, key=f"k{i % 10}") for i in range(300)]
        await broker.produce(topics.input, keyed(events))
        daemon = Daemon(broker.settings(topics, max_in_flight=64), config)
        await run_until(daemon, lambda: len(a.deliveries) >= 300 and len(b.deliveries) >= 300)
        results = await broker.read(topics.results, expect=600)
    assert len(results) == 600
    pairs = collections.Counter((r.key, orjson.loads(r.value)["integrationId"]) for r in results)
    assert set(pairs.values()) == {1}
    assert {orjson.loads(r.value)["status"] for r in results} == {"succeeded"}
    for fake in (a, b):
        assert len(fake.deliveries) == 300
        seqs: dict[str, list[int]] = collections.defaultdict(list)
        for d in fake.deliveries:
            seqs[d["body"]["key"]].append(d["body"]["seq"])
        for key, seq in seqs.items():
            assert seq == sorted(seq), f"out of order for {key}"


@pytest.mark.parametrize(
    "value,error_class",
    [
        (b"\xff\xfe not utf8", "undecodable"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "schema_violation"),
        (orjson.dumps({"schemaVersion": 1, "eventId": "x"}), "schema_violation"),
        (orjson.dumps({**make_event(0), "schemaVersion": 2}), "unsupported_schema_version"),
        (orjson.dumps({**make_event(0), "content": "x" * (1024 * 1024 + 10)}), "too_large"),
    ],
)
async def test_bad_input_reaches_the_dlq_with_original_bytes(
    broker: Any, topics: Any, value: bytes, error_class: str
) -> None:
    await broker.create(topics, partitions=1)
    hook = WebhookFake()
    async with SandboxServer(hook):
        config = parse_config(webhook_config({"hook": f"{hook.base_url}/hooks/a"}))
        good = make_event(1)
        await broker.produce(topics.input, [(b"bad-key", value), *keyed([good])], headers=[("traceparent", b"00-abc")])
        daemon = Daemon(broker.settings(topics), config)
        await run_until(daemon, lambda: len(hook.deliveries) >= 1)
        dlq = await broker.read(topics.dlq, expect=1)
    assert len(dlq) == 1
    record = dlq[0]
    assert record.key == b"bad-key"
    assert record.value == value
    headers = dict(record.headers)
    assert headers["octopus-error-class"] == error_class.encode()
    assert headers["octopus-source-topic"] == topics.input.encode()
    assert headers["octopus-source-offset"] == b"0"
    assert headers["traceparent"] == b"00-abc"
    assert headers["octopus-error-reason"]
