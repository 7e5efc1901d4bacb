"""Delivery of one event's plan: the one place that decides retry, fallback and outcome.

Each route of the plan runs concurrently; a route tries its targets in order (primary, then
fallbacks). Before a target is called, the ledger is asked whether this (event, integration,
object type) already has a record; after a success the ledger learns it. An ambiguous failure
(request sent, no answer) is resolved by looking the record up where the vendor allows it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from adapters.base import Adapter, Delivered, DeliveryContext
from adapters.errors import AmbiguousDeliveryError, DeliveryError, RetryableError
from daemon import metrics
from daemon.config import CrmConfig
from daemon.contracts import ClassifiedMessage, ResultError, ResultSource, SyncResult, SyncStatus
from daemon.ledger import Ledger, LedgerEntry
from daemon.records import InboundRecord
from strategies.breaker import CircuitBreaker
from strategies.retry import RetryPolicy
from strategies.routing import Plan, Route, Target

__all__ = ["Attempt", "Dispatcher", "Outcome", "idempotency_key"]

log = structlog.get_logger("octopus.dispatch")


def idempotency_key(event_id: str, target: Target) -> str:
    return f"{event_id}:{target.key}"


@dataclass
class Attempt:
    integration_id: str
    at: float
    error: DeliveryError | None = None


@dataclass
class Outcome:
    """What happened to one target."""

    target: Target
    delivered: Delivered | None = None
    duplicate: bool = False
    error: DeliveryError | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.delivered is not None


class CircuitOpenError(RetryableError):
    """Fail fast: the integration's breaker is open."""


class Dispatcher:
    def __init__(
        self,
        config: CrmConfig,
        adapters: Mapping[str, Adapter],
        ledger: Ledger,
        *,
        max_inline_delay: float = 30.0,
    ) -> None:
        self.config = config
        self.adapters = adapters
        self.ledger = ledger
        self.max_inline_delay = max_inline_delay
        self.breakers: dict[str, CircuitBreaker] = {
            integration_id: CircuitBreaker(
                on_change=lambda state, i=integration_id: metrics.BREAKER_STATE.labels(i).set(int(state))
            )
            for integration_id in adapters
        }

    def policy(self, integration_id: str) -> RetryPolicy:
        return self.config.integration(integration_id).retry or self.config.retry

    async def run(self, plan: Plan, event: ClassifiedMessage, record: InboundRecord) -> list[SyncResult]:
        started = record.received_at or time.monotonic()
        outcomes = await asyncio.gather(*(self._route(route, event) for route in plan.routes))
        results = [
            self._result(plan, event, record, route, outcome, started)
            for route, outcome in zip(plan.routes, outcomes, strict=True)
        ]
        for skip in plan.skips:
            results.append(
                SyncResult(
                    eventId=event.eventId,
                    messageId=event.messageId,
                    tenantId=event.tenantId,
                    integrationId=skip.integration_id,
                    integrationType=skip.integration_type,
                    objectType=skip.object_type,
                    strategy=plan.strategy,
                    status="skipped",
                    reason=skip.reason,
                    source=_source(record),
                    latencyMs=round((time.monotonic() - started) * 1000, 3),
                )
            )
        return results

    async def _route(self, route: Route, event: ClassifiedMessage) -> tuple[int, Outcome, DeliveryError | None]:
        first: Outcome | None = None
        for index, target in enumerate(route.chain):
            outcome = await self.deliver(target, event)
            if first is None:
                first = outcome
            if outcome.ok:
                return index, outcome, first.error if index else None
            elif index:
                first.attempts.extend(outcome.attempts)
        assert first is not None
        return 0, first, first.error

    async def deliver(self, target: Target, event: ClassifiedMessage) -> Outcome:
        """Deliver to one target with the integration's retry budget (inline)."""
        key = idempotency_key(event.eventId, target)
        outcome = Outcome(target)
        existing = await self.ledger.get(key)
        if existing is not None:
            outcome.delivered = Delivered(existing.external_id, existing.external_url)
            outcome.duplicate = True
            return outcome
        adapter = self.adapters[target.integration_id]
        breaker = self.breakers[target.integration_id]
        policy = self.policy(target.integration_id)
        attempt = 0
        while True:
            attempt += 1
            ctx = DeliveryContext(key, attempt, target.integration_id, target.overrides)
            error = await self._attempt(adapter, breaker, target, event, ctx, outcome)
            if error is None:
                assert outcome.delivered is not None
                await self.ledger.put(
                    key,
                    LedgerEntry(
                        outcome.delivered.external_id,
                        outcome.delivered.external_url,
                        target.integration_id,
                        target.object_type,
                        time.time(),
                    ),
                )
                return outcome
            outcome.error = error
            if not error.retriable or policy.exhausted(attempt):
                return outcome
            delay = policy.delay(attempt, error.retry_after)
            if isinstance(error, CircuitOpenError) or delay > self.max_inline_delay:
                return outcome
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        adapter: Adapter,
        breaker: CircuitBreaker,
        target: Target,
        event: ClassifiedMessage,
        ctx: DeliveryContext,
        outcome: Outcome,
    ) -> DeliveryError | None:
        record = Attempt(target.integration_id, time.time())
        outcome.attempts.append(record)
        if not breaker.allow():
            record.error = CircuitOpenError(
                f"circuit open for {target.integration_id}", code="circuit_open", retry_after=breaker.retry_in
            )
            return record.error
        started = time.perf_counter()
        labels = (target.integration_id, target.integration_type)
        try:
            try:
                outcome.delivered = await adapter.create(event, target.object_type, ctx)
            except AmbiguousDeliveryError:
                found = await adapter.find_existing(event, target.object_type, ctx)
                if found is None:
                    raise
                outcome.delivered = found
        except DeliveryError as exc:
            record.error = exc
            metrics.DELIVERIES.labels(*labels, exc.error_class).inc()
            if exc.retriable:
                breaker.failure()
            return exc
        finally:
            metrics.DELIVERY_LATENCY.labels(*labels).observe(time.perf_counter() - started)
        breaker.success()
        metrics.DELIVERIES.labels(*labels, "ok").inc()
        return None

    def _result(
        self,
        plan: Plan,
        event: ClassifiedMessage,
        record: InboundRecord,
        route: Route,
        routed: tuple[int, Outcome, DeliveryError | None],
        started: float,
    ) -> SyncResult:
        index, outcome, first_error = routed
        target = outcome.target
        status: SyncStatus
        error = outcome.error
        if outcome.duplicate:
            status = "duplicate"
            error = None
        elif outcome.ok:
            status = "fallback" if index > 0 else "succeeded"
            error = first_error if index > 0 else None
        else:
            status = "failed"
            error = first_error or error
        delivered = outcome.delivered
        return SyncResult(
            eventId=event.eventId,
            messageId=event.messageId,
            tenantId=event.tenantId,
            integrationId=target.integration_id,
            integrationType=target.integration_type,
            objectType=target.object_type,
            strategy=plan.strategy,
            status=status,
            externalId=delivered.external_id if delivered else None,
            externalUrl=delivered.external_url if delivered else None,
            attempts=len(outcome.attempts),
            latencyMs=round((time.monotonic() - started) * 1000, 3),
            error=ResultError.model_validate(error.as_dict()) if error else None,
            fallbackFrom=route.primary.integration_id if index > 0 and outcome.ok else None,
            source=_source(record),
            completedAt=datetime.now(UTC),
        )


def _source(record: InboundRecord) -> ResultSource:
    return ResultSource(topic=record.topic, partition=record.partition, offset=record.offset)
