"""The delivery ledger: which (event, integration, object type) already has a record, and where.

Consulted before every delivery and written after every success, so a redelivered event
(restart, rebalance, retry) finds its record instead of creating a second one. SQLite is the
single-replica default; Redis serves several replicas; memory is for tests and the demo.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import orjson

__all__ = ["Ledger", "LedgerEntry", "MemoryLedger", "RedisLedger", "SqliteLedger", "open_ledger"]


@dataclass(frozen=True)
class LedgerEntry:
    external_id: str
    external_url: str | None
    integration_id: str
    object_type: str
    at: float


class Ledger(Protocol):
    async def get(self, key: str) -> LedgerEntry | None: ...

    async def put(self, key: str, entry: LedgerEntry) -> None: ...

    async def close(self) -> None: ...


def _dump(entry: LedgerEntry) -> bytes:
    return orjson.dumps(entry.__dict__)


def _load(raw: bytes | str) -> LedgerEntry:
    return LedgerEntry(**orjson.loads(raw))


class MemoryLedger:
    def __init__(self) -> None:
        self.entries: dict[str, LedgerEntry] = {}

    async def get(self, key: str) -> LedgerEntry | None:
        return self.entries.get(key)

    async def put(self, key: str, entry: LedgerEntry) -> None:
        self.entries[key] = entry

    async def close(self) -> None:
        return None


class SqliteLedger:
    """One file, WAL mode; calls run in a worker thread so the loop never blocks on disk."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, entry BLOB NOT NULL, at REAL NOT NULL)"
        )
        self._lock = asyncio.Lock()

    async def get(self, key: str) -> LedgerEntry | None:
        async with self._lock:
            row = await asyncio.to_thread(
                lambda: self._db.execute("SELECT entry FROM ledger WHERE key = ?", (key,)).fetchone()
            )
        return _load(row[0]) if row else None

    async def put(self, key: str, entry: LedgerEntry) -> None:
        async with self._lock:
            await asyncio.to_thread(
                self._db.execute,
                "INSERT OR REPLACE INTO ledger (key, entry, at) VALUES (?, ?, ?)",
                (key, _dump(entry), entry.at),
            )

    async def close(self) -> None:
        self._db.close()


class RedisLedger:
    """Shared by every replica; entries expire after ``ttl`` seconds (default 30 days)."""

    def __init__(self, url: str, *, prefix: str = "octopus-crm:ledger:", ttl: int = 30 * 86400) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._ttl = ttl

    async def get(self, key: str) -> LedgerEntry | None:
        raw = await self._redis.get(self._prefix + key)
        return _load(raw) if raw else None

    async def put(self, key: str, entry: LedgerEntry) -> None:
        await self._redis.set(self._prefix + key, _dump(entry), ex=self._ttl)

    async def close(self) -> None:
        await self._redis.aclose()


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


def now() -> float:
    return time.time()
