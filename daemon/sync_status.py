"""Per-integration sync status for ``GET /api/crm/sync-status/{id}``: this replica's view.

The reporter tells :data:`BOOK` about each result it publishes and each delivery it hands to the
retry topic; counts of delivered and failed come from the outcome counters (the same numbers
``/metrics`` shows), the rest from the dispatcher's breaker and the adapter's limiter.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from octopus_crm.adapters.base import Adapter
from octopus_crm.core.contracts import SyncResultJson
from octopus_crm.core.redaction import redact_value
from octopus_crm.daemon import metrics
from octopus_crm.strategies.breaker import CircuitBreaker

__all__ = ["BOOK", "StatusBook", "sync_status"]

_MAX_PENDING = 100_000


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _at_iso(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {**entry, "at": _iso(entry["at"])}


class StatusBook:
    """Last success, last error and deliveries waiting on the retry topic, per integration.

    ``at`` is kept as epoch seconds and formatted when the API asks: results are many, reads few."""

    def __init__(self) -> None:
        self.last_success: dict[str, dict[str, Any]] = {}
        self.last_error: dict[str, dict[str, Any]] = {}
        self._pending: OrderedDict[tuple[str, str], None] = OrderedDict()

    def scheduled(self, event_id: str, integration_id: str) -> None:
        self._pending[(integration_id, event_id)] = None
        while len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)

    def published(self, results: Iterable[SyncResultJson]) -> None:
        now = time.time()
        pending = self._pending
        for result in results:
            integration_id = result.get("integrationId")
            if integration_id is None:
                continue
            if pending:  # most of the time nothing waits on the retry topic
                pending.pop((integration_id, result["eventId"]), None)
            status = result["status"]
            if status == "succeeded" or status == "duplicate":
                self.last_success[integration_id] = {
                    "at": now,
                    "eventId": result["eventId"],
                    "externalId": result.get("externalId"),
                    "externalUrl": result.get("externalUrl"),
                }
            elif status == "failed" and "error" in result:
                self.last_error[integration_id] = {
                    "at": now,
                    "eventId": result["eventId"],
                    "error": redact_value(result["error"]),
                }

    def pending(self, integration_id: str) -> int:
        return sum(1 for i, _ in self._pending if i == integration_id)


BOOK = StatusBook()


def _outcomes(integration_id: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample in next(iter(metrics.OUTCOMES.collect())).samples:
        if sample.name.endswith("_total") and sample.labels.get("integration") == integration_id:
            out[sample.labels["status"]] = sample.value
    return out


def _consumer_lag() -> float:
    return sum(s.value for s in next(iter(metrics.CONSUMER_LAG.collect())).samples)


def sync_status(
    integration_id: str, adapter: Adapter | None, breaker: CircuitBreaker | None, *, enabled: bool = True
) -> dict[str, Any]:
    outcomes = _outcomes(integration_id)
    limiter = adapter.current_limiter() if adapter is not None else None
    rate: dict[str, Any] | None = None
    if limiter is not None:
        paused_for = limiter.paused_for
        turn_in = limiter.turn_in()
        rate = {
            "requests": limiter.limit.requests,
            "perSeconds": limiter.limit.per_seconds,
            "tokens": limiter.tokens,
            "nextTurnInSeconds": round(turn_in, 3) if math.isfinite(turn_in) else None,
            "parkedUntil": _iso(time.time() + paused_for) if paused_for > 0 else None,
        }
    return {
        "integrationId": integration_id,
        "enabled": enabled,
        "delivered": int(outcomes.get("succeeded", 0) + outcomes.get("duplicate", 0) + outcomes.get("fallback", 0)),
        "failed": int(outcomes.get("failed", 0)),
        "skipped": int(outcomes.get("skipped", 0)),
        "pending": BOOK.pending(integration_id),
        "outcomes": outcomes,
        "lastSuccess": _at_iso(BOOK.last_success.get(integration_id)),
        "lastError": _at_iso(BOOK.last_error.get(integration_id)),
        "circuit": breaker.state.name.lower() if breaker is not None else "unknown",
        "rateLimit": rate,
        "consumerLag": int(_consumer_lag()),
    }
