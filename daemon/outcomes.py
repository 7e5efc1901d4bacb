"""What one pass of the dispatcher produced: results, retry records, dead letters, and the
ledger entries to settle once they are on the broker; and how a route's result reads.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from time import gmtime, strftime
from typing import Any, cast

import orjson

from octopus_crm.adapters.base import Delivered
from octopus_crm.core.contracts import ClassifiedMessage, SyncResultJson, SyncStatus
from octopus_crm.core.errors import ErrorInfo
from octopus_crm.core.wire import Header
from octopus_crm.daemon.ledger import LedgerEntry
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retrying import RetryRecord, TargetSpec
from octopus_crm.daemon.route import RouteState
from octopus_crm.strategies.routing import Skip

__all__ = ["DeadLetter", "Outcomes", "failed", "finished", "result", "sync_result"]


@dataclass(frozen=True)
class DeadLetter:
    record: InboundRecord
    reason: str
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class Outcomes:
    """What one pass over a plan (or one retry) produced; all of it is published before commit."""

    results: list[SyncResultJson] = field(default_factory=list)
    retries: list[RetryRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # ledger entries of these results' deliveries, marked published once the results are acked
    # (which also makes the route's claim moot: a copy that looks finds the published entry first)
    unpublished: list[tuple[str, LedgerEntry]] = field(default_factory=list)
    # ledger writes of those entries, under way while the results are published
    writing: list[Awaitable[None]] = field(default_factory=list)
    # (route key, owner) of the claims to release then: those a sync-back pass claims again
    leases: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: Outcomes) -> None:
        self.results += other.results
        self.retries += other.retries
        self.dead_letters += other.dead_letters
        self.unpublished += other.unpublished
        self.writing += other.writing
        self.leases += other.leases


def _bounded(detail: Mapping[str, Any]) -> dict[str, Any]:
    """A delivery's detail for the result: JSON scalars as they are, anything else as short text."""
    out: dict[str, Any] = {}
    for key, value in list(detail.items())[:20]:
        if value is None or isinstance(value, (bool, int, float)):
            out[str(key)[:100]] = value
        else:
            text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
            out[str(key)[:100]] = text[:1000]
    return out


def sync_result(
    event: ClassifiedMessage,
    strategy: str,
    status: SyncStatus,
    target: TargetSpec | Skip,
    source: InboundRecord,
    received_at: float,
    *,
    attempts: int = 0,
    delivered: Delivered | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
    fallback_from: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> SyncResultJson:
    """One sync-result.v1 record as published, before the reporter scrubs what a vendor wrote.

    Keys in ``SyncResult``'s field order, ``None`` left out: exactly its JSON dump, without
    building and dumping the model."""
    data: dict[str, Any] = {
        "schemaVersion": 1,
        "eventId": event.eventId,
        "messageId": event.messageId,
        "tenantId": event.tenantId,
    }
    if target.integration_id is not None:
        data["integrationId"] = target.integration_id
    if target.integration_type is not None:
        data["integrationType"] = target.integration_type
    if target.object_type is not None:
        data["objectType"] = target.object_type
    data["strategy"] = strategy
    data["status"] = status
    if delivered is not None:
        data["externalId"] = delivered.external_id
        if delivered.external_url is not None:
            data["externalUrl"] = delivered.external_url
    data["attempts"] = attempts
    now = time.time()
    data["latencyMs"] = round((now - received_at) * 1000, 3)
    if error is not None:
        data["error"] = {"class": error.error_class, "code": error.code, "message": error.message}
    if reason is not None:
        data["reason"] = reason
    if fallback_from is not None:
        data["fallbackFrom"] = fallback_from
    if detail:
        data["detail"] = _bounded(detail)
    data["source"] = {"topic": source.topic, "partition": source.partition, "offset": source.offset}
    data["completedAt"] = _completed_at(now)
    return cast(SyncResultJson, data)


_second: tuple[int, str] = (-1, "")


def _completed_at(now: float) -> str:
    """pydantic's form of ``datetime.fromtimestamp(now, UTC)``: isoformat with "Z" for "+00:00",
    microseconds rounded as ``fromtimestamp`` rounds them (half to even), the date and time of
    day formatted once a second."""
    global _second
    seconds = int(now)
    micros = round((now - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds += 1
        micros -= 1_000_000
    second = _second
    if second[0] != seconds:
        second = _second = (seconds, strftime("%Y-%m-%dT%H:%M:%S", gmtime(seconds)))
    return f"{second[1]}.{micros:06d}Z" if micros else f"{second[1]}Z"  # isoformat omits .000000


def result(
    state: RouteState,
    event: ClassifiedMessage,
    status: SyncStatus,
    target: TargetSpec,
    delivered: Delivered | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> SyncResultJson:
    """The result of ``state``'s route at ``target``, with its attempts, latency and source."""
    return sync_result(
        event,
        state.strategy,
        status,
        target,
        state.source,
        state.received_at,
        attempts=len(state.history),
        delivered=delivered,
        error=error,
        reason=reason,
        fallback_from=state.chain[0].integration_id if status == "fallback" else None,
        detail=detail,
    )


def finished(state: RouteState, event: ClassifiedMessage, delivered: Delivered, duplicate: bool = False) -> Outcomes:
    """The record exists at the route's current target: ``succeeded``, ``fallback`` (with the
    first error of the route) or ``duplicate``."""
    if duplicate:
        status: SyncStatus = "duplicate"
    elif state.index > 0:
        status = "fallback"
    else:
        status = "succeeded"
    reason = None
    if state.is_sync_back:
        reason = f"sync_back: delivered to the primary after fallback to {state.sync_back_from}"
    done = result(
        state,
        event,
        status,
        state.target,
        delivered,
        error=state.first_error if status == "fallback" else None,
        reason=reason,
        detail=delivered.detail,
    )
    return Outcomes(results=[done])


def failed(state: RouteState, event: ClassifiedMessage) -> Outcomes:
    """No target left: a final ``failed`` result and a dead letter with the whole history."""
    primary = state.chain[0]
    error = state.first_error or ErrorInfo("config", "no_target", "no target could be tried")
    reason = f"sync_back to {primary.integration_id} gave up" if state.is_sync_back else None
    done = result(state, event, "failed", primary, error=error, reason=reason)
    history = orjson.dumps([h.model_dump() for h in state.history])
    dead = DeadLetter(
        record=state.source,
        reason=f"{error.error_class} {error.code}: {error.message}"[:1000],
        headers=(
            (Header.INTEGRATION, primary.integration_id.encode()),
            (Header.OBJECT_TYPE, primary.object_type.encode()),
            (Header.ERROR_CODE, error.code.encode()),
            (Header.ATTEMPTS, str(len(state.history)).encode()),
            (Header.ATTEMPT_HISTORY, history[:16384]),
        ),
    )
    return Outcomes(results=[done], dead_letters=[dead])
