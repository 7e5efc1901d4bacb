"""The delivery ledger: which (event, integration, object type) already has a record, and where.

Consulted before every delivery and written after every success, so a redelivered event
(restart, rebalance, retry) finds its record instead of creating a second one. SQLite is the
single-replica default; Redis serves several replicas; memory is for tests and the demo.

The same store keeps the ordering barriers: per (Kafka key, integration), the events waiting for
a retry, in order. A later event for that key and integration waits behind them; other keys flow.
Entries older than ``stale_after`` are ignored so that a crash can never wedge a key for good.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

import orjson
import structlog

from octopus_crm.daemon import metrics

T = TypeVar("T")
log = structlog.get_logger("octopus.ledger")

__all__ = [
    "PROCESS",
    "Claim",
    "Found",
    "Lease",
    "Ledger",
    "LedgerEntry",
    "MemoryLedger",
    "RedisLedger",
    "SqliteLedger",
    "Waiting",
    "find_first",
    "find_then_claim",
    "open_ledger",
]


@dataclass(frozen=True)
class LedgerEntry:
    external_id: str
    external_url: str | None
    integration_id: str
    object_type: str
    at: float
    # False from the delivery until its result is on the broker: a redelivery (after a crash in
    # between) reports the delivery's own outcome again instead of ``duplicate``.
    published: bool = True

    def as_published(self) -> LedgerEntry:
        """This entry once its result is on the broker (``dataclasses.replace`` costs ~5 µs)."""
        return LedgerEntry(self.external_id, self.external_url, self.integration_id, self.object_type, self.at)


@dataclass(frozen=True)
class Waiting:
    """An event holding an ordering barrier until ``due`` (epoch seconds)."""

    event_id: str
    due: float
    since: float


# This process's part of every lease owner: a single-replica store (memory, SQLite) knows that a
# lease of another process was left by a process that is gone.
PROCESS = uuid.uuid4().hex[:12]


_OWNERS = itertools.count(1)


def lease_owner() -> str:
    """A fresh owner id: one per copy of a delivery, so two copies in one process are told apart
    (a counter suffices within the process; ``PROCESS`` tells processes apart)."""
    return f"{PROCESS}/{next(_OWNERS):x}"


@dataclass(frozen=True)
class Lease:
    """A copy of a delivery holds ``key`` from before the vendor call until its result is on the
    broker (or it gave up); ``until`` is epoch seconds."""

    owner: str
    until: float


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Ledger.claim`: granted or not, and the lease found there before.

    Granted over a previous lease means another copy came first: one that finished (its lease
    ended, see :attr:`abandoned`) — look at the ledger again — or one that is gone (expired, or
    its process died): its vendor call may or may not have happened, so it is resolved like an
    ambiguous create."""

    granted: bool
    previous: Lease | None = None

    @property
    def abandoned(self) -> bool:
        """Granted over a lease its holder never ended."""
        return self.granted and self.previous is not None and self.previous.until > 0


@dataclass(frozen=True)
class Found:
    """The answer of :meth:`Ledger.find_or_claim` when a key has an entry: which one (its index
    among the keys asked for) and the entry."""

    index: int
    entry: LedgerEntry


async def find_first(ledger: Ledger, keys: Sequence[str]) -> Found | None:
    """The first of ``keys`` that has an entry, looked up one by one."""
    for index, key in enumerate(keys):
        entry = await ledger.get(key)
        if entry is not None:
            return Found(index, entry)
    return None


async def find_then_claim(ledger: Ledger, keys: Sequence[str], lease: str, owner: str, ttl: float) -> Found | Claim:
    """:meth:`Ledger.find_or_claim` as a lookup, then a claim (stores without a combined call)."""
    return await find_first(ledger, keys) or await ledger.claim(lease, owner, ttl)


def _decide(previous: Lease | None, owner: str, now: float, single_replica: bool) -> bool:
    if previous is None or previous.owner == owner or previous.until < now:
        return True
    return single_replica and not previous.owner.startswith(PROCESS + "/")


class Ledger(Protocol):
    """Entries, leases and barriers of deliveries. The entry and lease calls are typed as
    awaitables rather than coroutines: a store that queues them (SQLite) hands out its future
    as it is, one frame fewer in the chain each wait resumes."""

    def get(self, key: str) -> Awaitable[LedgerEntry | None]: ...

    def put(self, key: str, entry: LedgerEntry) -> Awaitable[None]: ...

    def claim(self, key: str, owner: str, ttl: float) -> Awaitable[Claim]:
        """Take the delivery of ``key`` for ``owner`` for ``ttl`` seconds, atomically, unless
        another owner holds a live lease on it."""

    def settle(self, entries: Sequence[tuple[str, LedgerEntry]], leases: Sequence[tuple[str, str]]) -> Awaitable[None]:
        """``put`` each entry, then ``release`` each lease: one round trip where the store allows."""

    def find_or_claim(self, keys: Sequence[str], lease: str, owner: str, ttl: float) -> Awaitable[Found | Claim]:
        """The first of ``keys`` that has an entry; when none has, the lease on ``lease`` claimed
        for ``owner`` (as :meth:`claim`): the lookup and the claim of a fresh delivery in one
        round trip where the store allows."""

    def release(self, key: str, owner: str) -> Awaitable[None]:
        """End ``owner``'s lease on ``key`` (no-op when it holds none). The lease stays, ended
        (``until`` 0), so that the next claim learns a copy came before it and looks again."""

    def barriers_held(self, target: str) -> bool:
        """Whether any event may be waiting at a barrier of ``target`` (a scope is
        ``<key>|<target>``): False only when the store knows none is (a store in this process's
        memory), so that one tenant's waiting events cost another's none of the barrier calls; a
        shared store says True."""

    async def barrier_head(self, scope: str) -> Waiting | None:
        """The first event still waiting in ``scope`` (None: nothing waits)."""

    async def barrier_hold(self, scope: str, event_id: str, due: float) -> None:
        """Queue ``event_id`` in ``scope`` (or move its due time if it is queued already)."""

    async def barrier_release(self, scope: str, event_id: str) -> None: ...

    async def close(self) -> None: ...


STALE_AFTER = 6 * 3600.0


def _fresh(waiting: list[Waiting], stale_after: float) -> list[Waiting]:
    now = time.time()
    return [w for w in waiting if now - max(w.since, w.due) < stale_after]


class _MemoryBarriers:
    """Barriers in process memory (one replica, or the SQLite ledger's mirror)."""

    def __init__(self, stale_after: float = STALE_AFTER) -> None:
        self._scopes: dict[str, list[Waiting]] = {}
        self._targets: collections.Counter[str] = collections.Counter()  # scopes held, per target
        self._stale_after = stale_after

    def barriers_held(self, target: str) -> bool:
        return target in self._targets

    async def barrier_head(self, scope: str) -> Waiting | None:
        waiting = self._scopes.get(scope)
        if not waiting:
            return None
        fresh = _fresh(waiting, self._stale_after)
        if len(fresh) != len(waiting):
            self._set(scope, fresh)
        return fresh[0] if fresh else None

    async def barrier_hold(self, scope: str, event_id: str, due: float) -> None:
        waiting = self._scopes.get(scope)
        if waiting is None:
            waiting = self._scopes[scope] = []
            self._targets[_scope_target(scope)] += 1
        for index, item in enumerate(waiting):
            if item.event_id == event_id:
                waiting[index] = Waiting(event_id, due, item.since)
                return
        waiting.append(Waiting(event_id, due, time.time()))

    async def barrier_release(self, scope: str, event_id: str) -> None:
        waiting = self._scopes.get(scope)
        if waiting:
            self._set(scope, [w for w in waiting if w.event_id != event_id])

    def _set(self, scope: str, waiting: list[Waiting]) -> None:
        if waiting:
            self._scopes[scope] = waiting
        elif self._scopes.pop(scope, None) is not None:
            target = _scope_target(scope)
            self._targets[target] -= 1
            if self._targets[target] <= 0:
                del self._targets[target]


def _scope_target(scope: str) -> str:
    """The target of a barrier scope ``<base64 key>|<target>`` (base64 has no ``|``)."""
    return scope.partition("|")[2]


def _dump(entry: LedgerEntry) -> bytes:
    return orjson.dumps(entry.__dict__)


def _load(raw: bytes | str) -> LedgerEntry:
    return LedgerEntry(**orjson.loads(raw))


class MemoryLedger(_MemoryBarriers):
    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, LedgerEntry] = {}
        self.leases: dict[str, Lease] = {}

    async def get(self, key: str) -> LedgerEntry | None:
        return self.entries.get(key)

    async def put(self, key: str, entry: LedgerEntry) -> None:
        self.entries[key] = entry

    async def claim(self, key: str, owner: str, ttl: float) -> Claim:
        now = time.time()
        previous = self.leases.get(key)
        if not _decide(previous, owner, now, single_replica=True):
            return Claim(False, previous)
        self.leases[key] = Lease(owner, now + ttl)
        return Claim(True, None if previous is None or previous.owner == owner else previous)

    async def find_or_claim(self, keys: Sequence[str], lease: str, owner: str, ttl: float) -> Found | Claim:
        return await find_then_claim(self, keys, lease, owner, ttl)

    async def settle(self, entries: Sequence[tuple[str, LedgerEntry]], leases: Sequence[tuple[str, str]]) -> None:
        for key, entry in entries:
            self.entries[key] = entry
        for key, owner in leases:
            await self.release(key, owner)

    async def release(self, key: str, owner: str) -> None:
        lease = self.leases.get(key)
        if lease is not None and lease.owner == owner:
            self.leases[key] = Lease(owner, 0.0)

    async def close(self) -> None:
        return None


class SqliteLedger(_MemoryBarriers):
    """One file, WAL mode; statements run on the event loop, in batches, checkpoints off it.

    Calls queue up and run in order, in batches: every call made during one turn of the loop runs
    at the start of the next one, in one transaction. A WAL commit with ``synchronous=NORMAL`` is
    a write into the page cache (no fsync), microseconds for a batch; handing each batch to a
    worker thread cost more than the SQL itself (about 70 µs of CPU per event in
    ``bench/throughput.py``). What can wait on the disk, the checkpoint (fsync of the WAL, copy
    into the database), is taken off the automatic path and runs in a worker thread on its own
    connection at most once every ``CHECKPOINT_EVERY_S``. A ``put`` returns once its batch is
    committed.

    SQLite means one replica, so its barriers live in that replica's memory: after a restart the
    retry topic replays the waiting events and they line up again.
    """

    CHECKPOINT_EVERY_S = 1.0

    def __init__(self, path: str) -> None:
        super().__init__()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if path != ":memory:":
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint
        _migrate(self._db)
        # every statement through one cursor: a cursor per statement costs about 0.4 µs
        self._cursor = self._db.cursor()
        self._queue: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._writes = False  # whether the queued batch writes (a checkpoint may be due after it)
        self._scheduled = False
        self._retry_in = 0.1
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_db: sqlite3.Connection | None = None
        self._last_checkpoint = time.monotonic()

    # Each call queues its operation and hands out the operation's future (see Ledger).

    def get(self, key: str) -> asyncio.Future[LedgerEntry | None]:
        return self._call(partial(_get, key=key))

    def put(self, key: str, entry: LedgerEntry) -> asyncio.Future[None]:
        return self._call(_Write(((key, entry),)), writes=True)

    def settle(
        self, entries: Sequence[tuple[str, LedgerEntry]], leases: Sequence[tuple[str, str]]
    ) -> asyncio.Future[None]:
        """Every note and release of one pass in one batch (one transaction)."""
        return self._call(_Write(entries, leases), writes=True)

    def claim(self, key: str, owner: str, ttl: float) -> asyncio.Future[Claim]:
        """The read and the conditional write run next to each other in one batch (one
        transaction), so no other claim comes between them."""
        return self._call(partial(_claim, key=key, owner=owner, ttl=ttl), writes=True)

    def find_or_claim(self, keys: Sequence[str], lease: str, owner: str, ttl: float) -> asyncio.Future[Found | Claim]:
        """The lookup and the claim in one transaction: a claim granted here saw no entry."""
        return self._call(partial(_find_or_claim, keys=keys, lease=lease, owner=owner, ttl=ttl), writes=True)

    def release(self, key: str, owner: str) -> asyncio.Future[None]:
        return self._call(_Write((), ((key, owner),)), writes=True)

    def _call(self, op: _Op, *, writes: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((op, future))
        self._writes = self._writes or writes
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Run what queued up during the last turn of the loop, in one transaction."""
        self._scheduled = False
        batch, self._queue = self._queue, []
        writes, self._writes = self._writes, False
        if not batch:
            return
        what = "put" if writes else "get"
        try:
            answers = self._run(batch)
        except _RETRYABLE as exc:  # through an outage: stalling a key beats a doubled record
            metrics.LEDGER_ERRORS.labels(what).inc()
            log.warning("ledger unavailable, retrying", op=what, error=type(exc).__name__, retry_in=self._retry_in)
            self._queue[:0] = batch
            self._writes = self._writes or writes
            self._scheduled = True
            asyncio.get_running_loop().call_later(self._retry_in, self._flush)
            self._retry_in = min(self._retry_in * 2, 5.0)
            return
        except Exception as exc:  # noqa: BLE001 - not an outage: handed to the callers
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self._retry_in = 0.1
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
        if writes:
            self._maybe_checkpoint()

    def _run(self, batch: list[tuple[_Op, asyncio.Future[Any]]]) -> list[Any]:
        """The batch's operations in one transaction, their answers.

        The entries of every write in the batch go first, in multi-row statements (one statement
        per row cost ~2.7 µs more per event in-process). The batch's operations were all issued
        during one turn of the loop, none waiting for another, so any order of them is one the
        callers could have seen; a caller's own operations on one key are awaited one after the
        other, so they never share a batch out of order, and the writes keep their own order."""
        cursor = self._cursor
        cursor.execute("BEGIN")
        try:
            rows = [(key, entry) for op, _ in batch if type(op) is _Write for key, entry in op.entries]
            if rows:
                _write_entries(cursor, rows)
            answers = [op(cursor) for op, _ in batch]
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")  # on the same cursor: its last statement is reset first
        return answers

    def _maybe_checkpoint(self) -> None:
        if self._path == ":memory:" or (self._checkpointer is not None and not self._checkpointer.done()):
            return
        now = time.monotonic()
        if now - self._last_checkpoint < self.CHECKPOINT_EVERY_S:
            return
        self._last_checkpoint = now
        self._checkpointer = asyncio.create_task(asyncio.to_thread(self._checkpoint))

    def _checkpoint(self) -> None:
        """In a worker thread: move the WAL into the database (PASSIVE: writers are not held)."""
        try:
            if self._checkpoint_db is None:
                self._checkpoint_db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one tries again; the WAL only grows meanwhile
            log.warning("ledger checkpoint failed", error=type(exc).__name__)

    async def close(self) -> None:
        if self._queue:  # let the last batch commit
            self._flush()
        if self._checkpointer is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._checkpointer), 5.0)
        if self._checkpoint_db is not None:
            self._checkpoint_db.close()
        self._db.close()


# One table: a delivery's entry and its lease on one row, keyed by the idempotency key (the route
# lease "route:" + K lives on row K, where the primary delivery's entry goes). Random keys put
# every new row's index entry on a page of its own; one row per delivery dirties one such page
# where an entry table and a lease table dirtied two, and the later writes of the row (the entry,
# its published flag) find it through the index without changing it (~40 µs of CPU per event
# in-process, from ~60 with two tables; WAL written 6 KB per event, from 12). A rowid table: the
# row's page is one of the last ones, shared by the batch; WITHOUT ROWID dirties the random page
# at every write (measured ~108 µs and 19 KB per event).
_SCHEMA = "CREATE TABLE IF NOT EXISTS deliveries (key TEXT PRIMARY KEY, entry BLOB, owner TEXT, until REAL)"


def _lease_row(lease: str) -> str:
    """The row of a lease: the guarded key's for a route lease; any other lease key gets a row of
    its own under a prefix (NUL) that no idempotency key starts with."""
    return lease[6:] if lease.startswith("route:") else "\0" + lease


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table, or move the two tables of earlier versions (``ledger``: key, entry, at;
    ``leases``: key, owner, until) into it, in one transaction. Once, at start: in key order the
    new index fills page after page (300 000 entries and leases in ~2.4 s)."""
    db.execute("BEGIN IMMEDIATE")  # the tables as read here stay so until the commit
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        db.execute(_SCHEMA)
        if "ledger" in tables:
            db.execute(
                "INSERT INTO deliveries (key, entry) SELECT key, entry FROM ledger WHERE true ORDER BY key"
                " ON CONFLICT(key) DO UPDATE SET entry = excluded.entry"
            )
            db.execute("DROP TABLE ledger")
        if "leases" in tables:
            db.execute(
                "INSERT INTO deliveries (key, owner, until) SELECT"
                " CASE WHEN substr(key, 1, 6) = 'route:' THEN substr(key, 7) ELSE char(0) || key END,"
                " owner, until FROM leases WHERE true ORDER BY key"
                " ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, until = excluded.until"
            )
            db.execute("DROP TABLE leases")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    if tables & {"ledger", "leases"}:
        log.info("ledger moved to one table", tables=sorted(tables & {"ledger", "leases"}))


# What SqliteLedger runs inside a batch's transaction, on its cursor. Measured per statement
# (in-process, WAL): a lookup ~1.5 µs, a write ~3 µs; RETURNING adds ~3 µs (SQLite runs it as a
# trigger), more than the SELECT it would save, so a claim reads the lease, then writes it.
_Op = Callable[[sqlite3.Cursor], Any]
_GET_SQL = "SELECT entry FROM deliveries WHERE key = ?"
_LEASE_SQL = "SELECT owner, until FROM deliveries WHERE key = ?"
_TAKE_SQL = (
    "INSERT INTO deliveries (key, owner, until) VALUES (?, ?, ?)"
    " ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, until = excluded.until"
)
_RELEASE_SQL = "UPDATE deliveries SET until = 0 WHERE key = ? AND owner = ?"
_CLAIM_NEW_SQL = "INSERT INTO deliveries (key, owner, until) VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING"


@functools.cache  # one per number of rows: a handful
def _lookup_sql(rows: int) -> str:
    """The entries and leases of ``rows`` rows in one statement."""
    return "SELECT key, entry, owner, until FROM deliveries WHERE key IN (" + ", ".join("?" * rows) + ")"


# a batch's entries in statements of at most this many rows (one cached statement per size)
_WRITE_ROWS = 32


@functools.cache
def _write_sql(rows: int) -> str:
    """An upsert of ``rows`` entries: it updates a row in place, where INSERT OR REPLACE deletes
    and inserts it."""
    return (
        "INSERT INTO deliveries (key, entry) VALUES "
        + ", ".join(["(?, ?)"] * rows)
        + " ON CONFLICT(key) DO UPDATE SET entry = excluded.entry"
    )


def _write_entries(cursor: sqlite3.Cursor, entries: Sequence[tuple[str, LedgerEntry]]) -> None:
    """Upsert ``entries`` in order (a key written twice keeps its last entry)."""
    for start in range(0, len(entries), _WRITE_ROWS):
        chunk = entries[start : start + _WRITE_ROWS]
        params: list[Any] = []
        for key, entry in chunk:
            params += (key, _dump(entry))
        cursor.execute(_write_sql(len(chunk)), params)


@dataclass(frozen=True, slots=True)
class _Write:
    """A put or a settle: entries to note (written for the whole batch at once, see
    ``SqliteLedger._run``), then leases to end."""

    entries: Sequence[tuple[str, LedgerEntry]]
    leases: Sequence[tuple[str, str]] = ()

    def __call__(self, cursor: sqlite3.Cursor) -> None:
        for key, owner in self.leases:
            cursor.execute(_RELEASE_SQL, (_lease_row(key), owner))


def _get(cursor: sqlite3.Cursor, key: str) -> LedgerEntry | None:
    row = cursor.execute(_GET_SQL, (key,)).fetchone()
    return _load(row[0]) if row and row[0] is not None else None


def _claim(cursor: sqlite3.Cursor, key: str, owner: str, ttl: float) -> Claim:
    row_key = _lease_row(key)
    row = cursor.execute(_LEASE_SQL, (row_key,)).fetchone()
    return _take(cursor, row_key, owner, ttl, Lease(row[0], row[1]) if row and row[0] is not None else None)


def _take(cursor: sqlite3.Cursor, row_key: str, owner: str, ttl: float, previous: Lease | None) -> Claim:
    """The claim, decided on ``previous`` as read in this transaction: nothing else writes between
    the read and the write (another connection's write would fail ours with SQLITE_BUSY)."""
    now = time.time()
    if not _decide(previous, owner, now, single_replica=True):
        return Claim(False, previous)
    cursor.execute(_TAKE_SQL, (row_key, owner, now + ttl))
    return Claim(True, None if previous is None or previous.owner == owner else previous)


def _find_or_claim(cursor: sqlite3.Cursor, keys: Sequence[str], lease: str, owner: str, ttl: float) -> Found | Claim:
    row_key = _lease_row(lease)
    if len(keys) == 1 and keys[0] == row_key:
        # a one-target route (most are): a fresh delivery has no row at all, so inserting its
        # lease is the lookup and the claim in one statement; a row that exists is read below
        cursor.execute(_CLAIM_NEW_SQL, (row_key, owner, time.time() + ttl))
        if cursor.rowcount == 1:
            return Claim(True, None)
    # the route lease is on the primary's row, keys[0], as the dispatcher asks
    rows = keys if row_key in keys else (*keys, row_key)
    found: tuple[int, bytes] | None = None
    previous = None
    for key, entry, holder, until in cursor.execute(_lookup_sql(len(rows)), rows).fetchall():
        if key == row_key and holder is not None:
            previous = Lease(holder, until)
        if entry is not None:
            index = keys.index(key) if key in keys else -1
            if index >= 0 and (found is None or index < found[0]):  # the first of the keys that has one
                found = (index, entry)
    if found is not None:
        return Found(found[0], _load(found[1]))
    return _take(cursor, row_key, owner, ttl, previous)


async def _until_ok(op: Callable[[], Awaitable[T]], what: str) -> T:
    """Retry a ledger call through a backend outage: stalling a key beats a doubled record.

    A delivery whose ledger write fails must not be re-delivered later, and one whose ledger read
    fails must not go ahead blind; so the call waits (the partition backs up and pauses, /readyz
    stays as it is, and the outage shows in ``octopus_crm_ledger_errors_total``).
    """
    delay = 0.1
    while True:
        try:
            return await op()
        except _RETRYABLE as exc:
            metrics.LEDGER_ERRORS.labels(what).inc()
            log.warning("ledger unavailable, retrying", op=what, error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover
        return ()
    return (RedisConnectionError, RedisTimeoutError)


_RETRYABLE: tuple[type[BaseException], ...] = (OSError, sqlite3.OperationalError, *_redis_errors())


class RedisLedger:
    """Shared by every replica; entries expire after ``ttl`` seconds (default 30 days)."""

    def __init__(
        self, url: str, *, prefix: str = "octopus-crm:", ttl: int = 30 * 86400, stale_after: float = STALE_AFTER
    ) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix + "ledger:"
        self._barriers = prefix + "barrier:"
        self._leases = prefix + "lease:"
        self._claim = self._redis.register_script(_CLAIM_LUA)
        self._release_lease = self._redis.register_script(_RELEASE_LUA)
        self._ttl = ttl
        self._stale_after = stale_after

    def barriers_held(self, target: str) -> bool:
        return True  # other replicas hold barriers too: only Redis knows

    async def barrier_head(self, scope: str) -> Waiting | None:
        return await _until_ok(lambda: self._head(scope), "barrier_head")

    async def barrier_hold(self, scope: str, event_id: str, due: float) -> None:
        await _until_ok(lambda: self._hold(scope, event_id, due), "barrier_hold")

    async def barrier_release(self, scope: str, event_id: str) -> None:
        await _until_ok(lambda: self._release(scope, event_id), "barrier_release")

    async def _head(self, scope: str) -> Waiting | None:
        key = self._barriers + scope
        while True:
            raw = await self._redis.lindex(key, 0)
            if raw is None:
                return None
            head = Waiting(**orjson.loads(raw))
            if _fresh([head], self._stale_after):
                return head
            await self._redis.lrem(key, 1, raw)  # type: ignore[arg-type]

    async def _hold(self, scope: str, event_id: str, due: float) -> None:
        key = self._barriers + scope
        items = await self._redis.lrange(key, 0, -1)
        for raw in items:
            item = Waiting(**orjson.loads(raw))
            if item.event_id == event_id:
                await self._redis.lset(
                    key,
                    items.index(raw),
                    orjson.dumps(Waiting(event_id, due, item.since).__dict__),  # type: ignore[arg-type]
                )
                return
        await self._redis.rpush(key, orjson.dumps(Waiting(event_id, due, time.time()).__dict__))
        await self._redis.expire(key, int(self._stale_after * 2))

    async def _release(self, scope: str, event_id: str) -> None:
        key = self._barriers + scope
        for raw in await self._redis.lrange(key, 0, -1):
            if orjson.loads(raw)["event_id"] == event_id:
                await self._redis.lrem(key, 0, raw)  # type: ignore[arg-type]

    async def get(self, key: str) -> LedgerEntry | None:
        raw = await _until_ok(lambda: self._redis.get(self._prefix + key), "get")
        return _load(raw) if raw else None

    async def put(self, key: str, entry: LedgerEntry) -> None:
        await _until_ok(lambda: self._redis.set(self._prefix + key, _dump(entry), ex=self._ttl), "put")

    async def claim(self, key: str, owner: str, ttl: float) -> Claim:
        now = time.time()
        granted, raw = await _until_ok(
            lambda: self._claim(
                keys=[self._leases + key], args=[owner, repr(now + ttl), repr(now), int(LEASE_KEEP_S * 1000)]
            ),
            "claim",
        )
        previous = None
        if raw:
            until, _, holder = (raw.decode() if isinstance(raw, bytes) else raw).partition("|")
            previous = Lease(holder, float(until))
        if not granted:
            return Claim(False, previous)
        return Claim(True, None if previous is None or previous.owner == owner else previous)

    async def settle(self, entries: Sequence[tuple[str, LedgerEntry]], leases: Sequence[tuple[str, str]]) -> None:
        for key, entry in entries:
            await self.put(key, entry)
        for key, owner in leases:
            await self.release(key, owner)

    async def find_or_claim(self, keys: Sequence[str], lease: str, owner: str, ttl: float) -> Found | Claim:
        return await find_then_claim(self, keys, lease, owner, ttl)

    async def release(self, key: str, owner: str) -> None:
        await _until_ok(lambda: self._release_lease(keys=[self._leases + key], args=[owner]), "release")

    async def close(self) -> None:
        await self._redis.aclose()


# A lease key outlives its lease: a copy that finds an expired one knows a vendor call may have
# happened (and looks before creating), where a vanished key would look like a fresh delivery.
LEASE_KEEP_S = 86400.0

# KEYS[1] lease; ARGV owner, until, now, keep_ms. Value "until|owner". → {granted, previous or ""}
_CLAIM_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, '|', 1, true)
  local untilv = tonumber(string.sub(current, 1, sep - 1))
  local holder = string.sub(current, sep + 1)
  if holder ~= ARGV[1] and untilv >= tonumber(ARGV[3]) then
    return {0, current}
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. ARGV[1], 'PX', ARGV[4])
return {1, current or ''}
"""
_RELEASE_LUA = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, string.find(current, '|', 1, true) + 1) == ARGV[1] then
  redis.call('SET', KEYS[1], '0|' .. ARGV[1], 'KEEPTTL')
end
return 0
"""


def open_ledger(url: str) -> Ledger:
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryLedger()
    if parsed.scheme == "sqlite":
        path = url.split("sqlite:///", 1)[-1] if url.startswith("sqlite:///") else parsed.path
        return SqliteLedger(path or ":memory:")
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisLedger(url)
    raise ValueError(f"unsupported ledger URL scheme {parsed.scheme!r} (sqlite, redis, memory)")
