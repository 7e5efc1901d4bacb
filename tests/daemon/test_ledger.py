"""The ledger and its ordering barriers on every backend: memory, SQLite, a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.sandbox.kit import SandboxServer
from adapters.sandbox.webhook import WebhookFake
from daemon.ledger import Ledger, LedgerEntry, MemoryLedger, RedisLedger, SqliteLedger, open_ledger
from tests.events import keyed, make_event, webhook_config
from tests.process import DaemonProcess


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def ledger(request: Any, tmp_path: Path) -> AsyncIterator[Ledger]:
    store: Ledger
    if request.param == "memory":
        store = MemoryLedger()
    elif request.param == "sqlite":
        store = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisLedger(url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield store
    await store.close()


async def test_remembers_deliveries(ledger: Ledger) -> None:
    assert await ledger.get("e1:crm:lead") is None
    entry = LedgerEntry("00Q1", "https://x/00Q1", "crm", "lead", time.time())
    await ledger.put("e1:crm:lead", entry)
    assert await ledger.get("e1:crm:lead") == entry
    assert await ledger.get("e1:crm:case") is None


async def test_barriers_queue_in_order_and_release(ledger: Ledger) -> None:
    scope = "t:conv-1|crm"
    assert await ledger.barrier_head(scope) is None
    await ledger.barrier_hold(scope, "e1", time.time() + 5)
    await ledger.barrier_hold(scope, "e2", time.time() + 6)
    await ledger.barrier_hold(scope, "e1", time.time() + 10)  # re-scheduled: keeps its place
    head = await ledger.barrier_head(scope)
    assert head is not None and head.event_id == "e1" and head.due > time.time() + 8
    assert await ledger.barrier_head("t:conv-2|crm") is None
    await ledger.barrier_release(scope, "e1")
    head = await ledger.barrier_head(scope)
    assert head is not None and head.event_id == "e2"
    await ledger.barrier_release(scope, "e2")
    assert await ledger.barrier_head(scope) is None


async def test_stale_barriers_never_wedge_a_key() -> None:
    store = MemoryLedger()
    store._stale_after = 0.05
    await store.barrier_hold("k|crm", "lost-in-a-crash", time.time())
    await asyncio.sleep(0.1)
    assert await store.barrier_head("k|crm") is None


def test_open_ledger_by_url(tmp_path: Path) -> None:
    assert isinstance(open_ledger("memory://"), MemoryLedger)
    assert isinstance(open_ledger(f"sqlite:///{tmp_path}/l.sqlite3"), SqliteLedger)
    with pytest.raises(ValueError, match="unsupported"):
        open_ledger("postgres://x")


@pytest.mark.slow
async def test_two_replicas_sharing_redis_never_create_twice(
    broker: Any, topics: Any, tmp_path: Path, redis_url: str
) -> None:
    """Replica A delivers everything; replica B, in a group that has committed nothing, gets every
    event again — and, sharing A's Redis ledger, reports duplicates instead of creating records."""
    await broker.create(topics)
    hook = WebhookFake(dedupe=False)  # the receiver itself would happily store a second copy
    ledger_url = redis_url
    prefix_db = f"{ledger_url}"
    async with SandboxServer(hook):
        config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        events = [make_event(i, key=f"k{i % 7}") for i in range(100)]
        await broker.produce(topics.input, keyed(events))
        a = DaemonProcess(broker, topics, config, tmp_path, "a", ledger_url=prefix_db).start()
        try:
            results_a = await broker.read(topics.results, expect=100, timeout=60)
            a.terminate()
        finally:
            a.stop()
        b = DaemonProcess(
            broker, topics, config, tmp_path, "b", ledger_url=prefix_db, group_id=f"{topics.group}-b"
        ).start()
        try:
            results = await broker.read(topics.results, expect=200, timeout=60)
            b.terminate()
        finally:
            b.stop()
    assert {orjson.loads(r.value)["status"] for r in results_a} == {"succeeded"}
    second = [orjson.loads(r.value) for r in results[100:]]
    assert len(second) == 100 and {r["status"] for r in second} == {"duplicate"}
    assert len(hook.deliveries) == 100
