"""What one pass of the dispatcher produced: results, retry records, dead letters, and the
ledger entries and claims to settle once they are on the broker; and how a route's result reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from octopus_crm.adapters.base import Delivered
from octopus_crm.core.contracts import ClassifiedMessage, ResultError, ResultSource, SyncResult, SyncStatus
from octopus_crm.core.errors import ErrorInfo
from octopus_crm.core.wire import Header
from octopus_crm.daemon.ledger import LedgerEntry
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retrying import RetryRecord, TargetSpec
from octopus_crm.daemon.route import RouteState

__all__ = ["DeadLetter", "Outcomes", "failed", "finished", "result"]


@dataclass(frozen=True)
class DeadLetter:
    record: InboundRecord
    reason: str
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class Outcomes:
    """What one pass over a plan (or one retry) produced; all of it is published before commit."""

    results: list[SyncResult] = field(default_factory=list)
    retries: list[RetryRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # ledger entries of these results' deliveries, marked published once the results are acked
    unpublished: list[tuple[str, LedgerEntry]] = field(default_factory=list)
    # (idempotency key, owner) of the claims held until then
    leases: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: Outcomes) -> None:
        self.results += other.results
        self.retries += other.retries
        self.dead_letters += other.dead_letters
        self.unpublished += other.unpublished
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


def result(
    state: RouteState,
    event: ClassifiedMessage,
    status: SyncStatus,
    target: TargetSpec,
    delivered: Delivered | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> SyncResult:
    """The result of ``state``'s route at ``target``, with its attempts, latency and source."""
    return SyncResult(
        eventId=event.eventId,
        messageId=event.messageId,
        tenantId=event.tenantId,
        integrationId=target.integration_id,
        integrationType=target.integration_type,
        objectType=target.object_type,
        strategy=state.strategy,
        status=status,
        externalId=delivered.external_id if delivered else None,
        externalUrl=delivered.external_url if delivered else None,
        attempts=len(state.history),
        latencyMs=round((time.time() - state.received_at) * 1000, 3),
        error=ResultError.model_validate(error.as_dict()) if error else None,
        reason=reason,
        fallbackFrom=state.chain[0].integration_id if status == "fallback" else None,
        detail=_bounded(detail) if detail else None,
        source=ResultSource(topic=state.source.topic, partition=state.source.partition, offset=state.source.offset),
        completedAt=datetime.now(UTC),
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
