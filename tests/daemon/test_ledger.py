"""The ledger and its ordering barriers on every backend: memory, SQLite, a real Redis."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm.daemon.ledger import (
    Claim,
    Found,
    Lease,
    Ledger,
    LedgerEntry,
    MemoryLedger,
    RedisLedger,
    SqliteLedger,
    lease_owner,
    open_ledger,
)
from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
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


async def test_a_store_says_whether_any_barrier_may_be_held(ledger: Ledger) -> None:
    """The dispatcher skips the barrier calls of an ordered target when the store knows that no
    event waits at any barrier of that target (another tenant's waiting events cost it nothing);
    only a store in this process's memory can know that."""
    in_memory = not isinstance(ledger, RedisLedger)
    assert ledger.barriers_held("crm") is not in_memory
    await ledger.barrier_hold("t:conv-1|crm", "e1", time.time() + 5)
    await ledger.barrier_hold("t:conv-1|crm", "e2", time.time() + 5)
    await ledger.barrier_hold("t:conv-2|crm", "e3", time.time() + 5)
    assert ledger.barriers_held("crm")
    assert ledger.barriers_held("other:lead") is not in_memory
    await ledger.barrier_release("t:conv-1|crm", "e1")
    await ledger.barrier_release("t:conv-1|crm", "e2")
    assert ledger.barriers_held("crm")  # conv-2 still waits
    await ledger.barrier_release("t:conv-2|crm", "e3")
    assert ledger.barriers_held("crm") is not in_memory


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


async def test_claims_admit_one_copy_until_released_or_expired(ledger: Ledger) -> None:
    first, second = lease_owner(), lease_owner()
    granted = await ledger.claim("e1:crm:lead", first, 30)
    assert granted == Claim(True, None)
    refused = await ledger.claim("e1:crm:lead", second, 30)
    assert not refused.granted and refused.previous is not None and refused.previous.owner == first
    assert (await ledger.claim("e1:crm:lead", first, 30)).granted  # the holder may renew
    await ledger.release("e1:crm:lead", second)  # not the holder: no effect
    assert not (await ledger.claim("e1:crm:lead", second, 30)).granted
    await ledger.release("e1:crm:lead", first)
    after = await ledger.claim("e1:crm:lead", second, 30)  # granted, and told a copy came first
    assert after.granted and after.previous == Lease(first, 0.0) and not after.abandoned

    # a lease that ran out was left by a copy that is gone: taken over, and said so
    await ledger.claim("e2:crm:lead", first, 0.05)
    await asyncio.sleep(0.1)
    taken = await ledger.claim("e2:crm:lead", second, 30)
    assert taken.abandoned and taken.previous is not None and taken.previous.owner == first


async def test_find_or_claim_finds_the_first_recorded_key_or_claims_the_lease(ledger: Ledger) -> None:
    first, second = lease_owner(), lease_owner()
    keys = ["e5:primary:lead", "e5:backup:lead"]
    claimed = await ledger.find_or_claim(keys, "route:e5:primary:lead", first, 30)
    assert claimed == Claim(True, None)
    refused = await ledger.find_or_claim(keys, "route:e5:primary:lead", second, 30)
    assert isinstance(refused, Claim) and not refused.granted and refused.previous is not None
    entry = LedgerEntry("B-1", None, "backup", "lead", time.time(), published=False)
    await ledger.put("e5:backup:lead", entry)
    assert await ledger.find_or_claim(keys, "route:e5:primary:lead", second, 30) == Found(1, entry)
    primary = LedgerEntry("P-1", None, "primary", "lead", time.time())
    await ledger.put("e5:primary:lead", primary)
    assert await ledger.find_or_claim(keys, "route:e5:primary:lead", second, 30) == Found(0, primary)


async def test_concurrent_claims_grant_exactly_one(ledger: Ledger) -> None:
    owners = [lease_owner() for _ in range(20)]
    claims = await asyncio.gather(*(ledger.claim("e3:crm:lead", owner, 30) for owner in owners))
    assert sum(c.granted for c in claims) == 1


async def test_single_replica_store_knows_a_lease_of_another_process_is_dead(tmp_path: Path) -> None:
    """SQLite serves one replica: after a SIGKILL, the restarted process need not wait out the
    leases its predecessor left (they are resolved by a lookup instead)."""
    path = str(tmp_path / "ledger.sqlite3")
    store = SqliteLedger(path)
    await store.claim("e4:crm:lead", "deadbeef0000/1", 3600)  # another process's owner id
    claim = await store.claim("e4:crm:lead", lease_owner(), 30)
    await store.close()
    assert claim.granted and claim.previous is not None and claim.previous.owner == "deadbeef0000/1"


async def test_settle_notes_published_entries_and_ends_the_leases(ledger: Ledger) -> None:
    owner, other = lease_owner(), lease_owner()
    assert (await ledger.claim("route:e1:crm:lead", owner, 30)).granted
    entry = LedgerEntry("00Q1", None, "crm", "lead", time.time(), published=False)
    await ledger.put("e1:crm:lead", entry)
    published = LedgerEntry("00Q1", None, "crm", "lead", entry.at, published=True)
    await ledger.settle([("e1:crm:lead", published)], [("route:e1:crm:lead", owner)])
    assert await ledger.get("e1:crm:lead") == published
    after = await ledger.claim("route:e1:crm:lead", other, 30)  # released: the next copy gets it
    assert after.granted and after.previous is not None and not after.abandoned


async def test_writes_issued_in_one_turn_keep_their_order_per_key(ledger: Ledger) -> None:
    """SQLite writes a turn's entries in multi-row statements: a key written twice in one turn
    keeps its last entry, and 70 keys (three statements) all land."""
    owner = lease_owner()
    assert await ledger.find_or_claim(["e9:crm:lead"], "route:e9:crm:lead", owner, 30) == Claim(True, None)
    first = LedgerEntry("A-1", None, "crm", "lead", time.time(), published=False)
    last = LedgerEntry("A-1", None, "crm", "lead", first.at, published=True)
    many = {f"m{i}:crm:lead": LedgerEntry(f"M-{i}", None, "crm", "lead", time.time()) for i in range(70)}
    await asyncio.gather(
        ledger.put("e9:crm:lead", first),
        *(ledger.put(key, entry) for key, entry in many.items()),
        ledger.settle([("e9:crm:lead", last)], [("route:e9:crm:lead", owner)]),
    )
    assert await ledger.get("e9:crm:lead") == last
    assert [await ledger.get(key) for key in many] == list(many.values())
    # both writes of one key in one statement (two rows)
    await asyncio.gather(ledger.put("e7:crm:lead", first), ledger.settle([("e7:crm:lead", last)], []))
    assert await ledger.get("e7:crm:lead") == last
    # a one-target route whose row exists: the entry is found, not a claim
    assert await ledger.find_or_claim(["e9:crm:lead"], "route:e9:crm:lead", lease_owner(), 30) == Found(0, last)


async def test_a_one_target_claim_sees_a_live_lease_of_another_copy(ledger: Ledger) -> None:
    first, second = lease_owner(), lease_owner()
    assert await ledger.find_or_claim(["e8:crm:lead"], "route:e8:crm:lead", first, 30) == Claim(True, None)
    refused = await ledger.find_or_claim(["e8:crm:lead"], "route:e8:crm:lead", second, 30)
    assert isinstance(refused, Claim) and not refused.granted
    assert refused.previous is not None and refused.previous.owner == first


async def test_sqlite_batches_survive_a_reopen_and_checkpoint(tmp_path: Path) -> None:
    """Statements run on the loop, the WAL is checkpointed by a worker thread: all of it is in
    the file after close."""
    path = str(tmp_path / "ledger.sqlite3")
    store = SqliteLedger(path)
    store.CHECKPOINT_EVERY_S = 0.0
    entries = {f"e{i}:crm:lead": LedgerEntry(f"id{i}", None, "crm", "lead", time.time()) for i in range(200)}
    await asyncio.gather(*(store.put(key, entry) for key, entry in entries.items()))
    await asyncio.sleep(0)
    await store.put("last:crm:lead", LedgerEntry("last", None, "crm", "lead", time.time()))
    await store.close()
    reopened = SqliteLedger(path)
    try:
        assert all([await reopened.get(key) == entry for key, entry in entries.items()])
        assert await reopened.get("last:crm:lead") is not None
    finally:
        await reopened.close()


async def test_find_or_claim_tells_the_claim_what_came_before(ledger: Ledger) -> None:
    """The lookup of a chain and the claim: the lease found on the way decides the claim as
    :meth:`claim` would, and a recorded key leaves the lease alone."""
    first, second = lease_owner(), lease_owner()
    keys = ["e6:a:lead", "e6:b:lead", "e6:c:lead"]
    assert await ledger.find_or_claim(keys, "route:e6:a:lead", first, 30) == Claim(True, None)
    assert await ledger.find_or_claim(keys, "route:e6:a:lead", first, 30) == Claim(True, None)  # renewed
    await ledger.release("route:e6:a:lead", first)
    after = await ledger.find_or_claim(keys, "route:e6:a:lead", second, 30)
    assert after == Claim(True, Lease(first, 0.0)) and not after.abandoned
    later = LedgerEntry("C-1", None, "c", "lead", time.time())
    earlier = LedgerEntry("B-1", None, "b", "lead", time.time())
    await ledger.put("e6:c:lead", later)
    await ledger.put("e6:b:lead", earlier)
    assert await ledger.find_or_claim(keys, "route:e6:a:lead", first, 30) == Found(1, earlier)
    refused = await ledger.claim("route:e6:a:lead", first, 30)  # still second's
    assert not refused.granted and refused.previous is not None and refused.previous.owner == second


async def test_sqlite_find_or_claim_takes_over_a_dead_process_lease(tmp_path: Path) -> None:
    store = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    try:
        await store.claim("route:e7:crm:lead", "deadbeef0000/1", 3600)
        claim = await store.find_or_claim(["e7:crm:lead"], "route:e7:crm:lead", lease_owner(), 30)
        assert isinstance(claim, Claim) and claim.abandoned
        assert claim.previous is not None and claim.previous.owner == "deadbeef0000/1"
    finally:
        await store.close()


async def test_sqlite_opens_a_file_written_by_an_earlier_version(tmp_path: Path) -> None:
    """The tables as every version so far made them, rows as earlier versions wrote them."""
    path = tmp_path / "ledger.sqlite3"
    entry = LedgerEntry("00Q1", None, "crm", "lead", time.time(), published=False)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE ledger (key TEXT PRIMARY KEY, entry BLOB NOT NULL, at REAL NOT NULL)")
        db.execute("CREATE TABLE leases (key TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)")
        db.execute("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?)", ("e8:crm:lead", orjson.dumps(entry.__dict__), 1.0))
        db.execute("INSERT INTO leases VALUES (?, ?, ?)", ("route:e8:crm:lead", "deadbeef0000/1", time.time() + 60))
    db.close()
    store = SqliteLedger(str(path))
    try:
        assert await store.find_or_claim(["e8:crm:lead"], "route:e8:crm:lead", lease_owner(), 30) == Found(0, entry)
        owner = lease_owner()
        claim = await store.claim("route:e8:crm:lead", owner, 30)
        assert claim.abandoned and claim.previous is not None and claim.previous.owner == "deadbeef0000/1"
        published = LedgerEntry("00Q1", None, "crm", "lead", entry.at, published=True)
        await store.settle([("e8:crm:lead", published)], [("route:e8:crm:lead", owner)])
        assert await store.get("e8:crm:lead") == published
    finally:
        await store.close()


async def test_sqlite_moves_the_tables_of_an_earlier_version_into_one(tmp_path: Path) -> None:
    """Entries and leases of the two-table layout (``ledger``, ``leases``) are found after the
    move: an entry, a route lease on a key with no entry, a route lease next to its entry, and a
    lease under a key of its own."""
    path = tmp_path / "ledger.sqlite3"
    entry = LedgerEntry("00Q2", "https://x/00Q2", "crm", "lead", time.time(), published=True)
    until = time.time() + 60
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE ledger (key TEXT PRIMARY KEY, entry BLOB NOT NULL, at REAL NOT NULL)")
        db.execute("CREATE TABLE leases (key TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)")
        db.execute("INSERT INTO ledger VALUES (?, ?, ?)", ("e9:crm:lead", orjson.dumps(entry.__dict__), entry.at))
        db.executemany(
            "INSERT INTO leases VALUES (?, ?, ?)",
            [
                ("route:e9:crm:lead", "deadbeef0000/2", 0.0),
                ("route:e10:crm:lead", "deadbeef0000/3", until),
                ("e11:crm:lead", "deadbeef0000/4", until),
            ],
        )
    db.close()
    store = SqliteLedger(str(path))
    try:
        assert await store.get("e9:crm:lead") == entry
        assert await store.get("e10:crm:lead") is None
        assert await store.find_or_claim(["e9:crm:lead"], "route:e9:crm:lead", lease_owner(), 30) == Found(0, entry)
        owner = lease_owner()
        claim = await store.find_or_claim(["e10:crm:lead"], "route:e10:crm:lead", owner, 30)
        assert claim == Claim(True, Lease("deadbeef0000/3", until))
        other = await store.claim("e11:crm:lead", lease_owner(), 30)
        assert other.granted and other.previous == Lease("deadbeef0000/4", until)
    finally:
        await store.close()
    reopened = SqliteLedger(str(path))  # the layout is moved already: nothing to do
    try:
        assert await reopened.get("e9:crm:lead") == entry
        refused = await reopened.claim("route:e10:crm:lead", lease_owner(), 30)
        assert not refused.granted and refused.previous is not None and refused.previous.owner == owner
    finally:
        await reopened.close()
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert tables == {"deliveries"}


async def test_sqlite_keeps_a_delivery_and_its_route_lease_on_one_row(tmp_path: Path) -> None:
    """A fresh delivery inserts one row (one random index page per event, not two)."""
    path = tmp_path / "ledger.sqlite3"
    store = SqliteLedger(str(path))
    owner = lease_owner()
    try:
        assert await store.find_or_claim(["e12:crm:lead"], "route:e12:crm:lead", owner, 30) == Claim(True, None)
        entry = LedgerEntry("00Q3", None, "crm", "lead", time.time(), published=False)
        await store.put("e12:crm:lead", entry)
        await store.settle([("e12:crm:lead", entry.as_published())], [("route:e12:crm:lead", owner)])
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, owner, until FROM deliveries").fetchall()
    db.close()
    assert rows == [("e12:crm:lead", owner, 0.0)]
