"""Delivery of one event's plan: the one place that decides retry, fallback and outcome.

Each route of a plan runs concurrently; a route tries its targets in order (primary, then
fallbacks). For each target, in this order:

1. **barrier** — if the integration keeps per-key order and an earlier event of the same key
   waits for a retry there, this one queues behind it (on the retry topic);
2. **ledger** — if this (event, integration, object type), or another target of the route,
   already has a record, the outcome is ``duplicate`` (or, when the process stopped before that
   delivery's result reached the broker, the delivery's own outcome, reported now);
3. **circuit / park / backlog** — an open circuit goes straight to the fallback (or waits for
   the probe); an integration paused for a long quota or ``Retry-After`` is parked; a fresh
   event whose integration cannot take it within the hand-off budget (its pace, a pause, busy
   slots) is handed to the retry topic so that its siblings and the source partition keep flowing;
4. **claim** — a lease on (event, target) in the ledger, held from before the vendor call until
   the result is on the broker: a second copy of the delivery waits for the first one's outcome
   instead of calling the vendor; a lease left by a dead copy is resolved by a lookup first;
5. **attempt** — an ambiguous failure (sent, no answer) is resolved by a lookup where the
   vendor allows it; a retryable failure is scheduled on the retry topic with backoff; a final
   failure moves on to the fallback, and when no target is left the event gets a ``failed``
   result and a dead letter with its full attempt history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from adapters.base import Adapter, Delivered, DeliveryContext
from adapters.errors import (
    AmbiguousDeliveryError,
    DeliveryError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from adapters.fleet import FleetStore
from adapters.ratelimit import waits_measured
from daemon import metrics
from daemon.config import CrmConfig
from daemon.ledger import Lease, Ledger, LedgerEntry, lease_owner
from daemon.records import InboundRecord
from daemon.retrying import AttemptRecord, RetryKind, RetryRecord, TargetSpec
from octopus_crm.core.contracts import ClassifiedMessage, ResultError, ResultSource, SyncResult, SyncStatus
from octopus_crm.core.wire import Header
from strategies.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from strategies.retry import RetryPolicy
from strategies.routing import Plan, Target

__all__ = ["CircuitOpenError", "DeadLetter", "Dispatcher", "Outcomes", "idempotency_key"]

log = structlog.get_logger("octopus.dispatch")

PARK_THRESHOLD_S = 5.0
# A claim outlives any one vendor call and the publishing of its result; a copy that finds a live
# lease of another copy looks again after at most LEASE_POLL_S.
LEASE_TTL_S = 120.0
LEASE_POLL_S = 2.0


def idempotency_key(event_id: str, target: Target | TargetSpec) -> str:
    t = target.target() if isinstance(target, TargetSpec) else target
    return f"{event_id}:{t.key}"


class CircuitOpenError(RetryableError):
    """Fail fast: the integration's breaker is open."""


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


OnRoute = Callable[[Outcomes], Awaitable[None]]
# (event id, integration id, object type, since epoch seconds) → is its result on the broker?
PublishedCheck = Callable[[str, str, str, float], Awaitable[bool]]
_REASONS: dict[RetryKind, str] = {
    "retry": "retry",
    "backlog": "backlog",
    "park": "parked",
    "barrier": "barrier",
    "sync_back": "sync_back",
}


def _breaker(integration_id: str, policy: BreakerPolicy | None, fleet: FleetStore | None = None) -> CircuitBreaker:
    """A breaker whose state is exported as ``octopus_crm_circuit_state{integration}`` and, with a
    fleet store, written for every replica (an opening) or cleared (a successful probe)."""
    gauge = metrics.BREAKER_STATE.labels(integration_id)
    gauge.set(0)

    def export(state: BreakerState) -> None:
        gauge.set(int(state))
        if fleet is None:
            return
        if state is BreakerState.OPEN and not breaker.opened_elsewhere:
            fleet.in_background(fleet.open_circuit(integration_id, breaker.retry_in))
        elif state is BreakerState.CLOSED:
            fleet.in_background(fleet.close_circuit(integration_id))

    breaker = CircuitBreaker(policy, on_change=export)
    return breaker


def _err(error: DeliveryError) -> dict[str, str]:
    return error.as_dict()


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


class Dispatcher:
    def __init__(
        self,
        config: CrmConfig,
        adapters: Mapping[str, Adapter],
        ledger: Ledger,
        published: PublishedCheck | None = None,
        fleet: FleetStore | None = None,
    ) -> None:
        self.config = config
        self.adapters = adapters
        self.ledger = ledger
        self.published = published
        self.breakers = {
            integration_id: _breaker(integration_id, config.integration(integration_id).circuitBreaker, fleet)
            for integration_id in adapters
        }

    def policy(self, integration_id: str) -> RetryPolicy:
        return self.config.integration(integration_id).retry or self.config.retry

    # -- entry points ------------------------------------------------------------------------

    async def run(
        self, plan: Plan, event: ClassifiedMessage, record: InboundRecord, on_route: OnRoute | None = None
    ) -> Outcomes:
        """A fresh event from the input topic.

        With ``on_route``, each route's outcomes are handed over as soon as that route is final
        (so one slow target does not hold back the results of its siblings), the skips last; the
        merged outcomes are returned either way."""
        received_at = time.time() - (time.monotonic() - record.received_at if record.received_at else 0.0)
        states = [
            RetryRecord(
                kind="retry",
                event_id=event.eventId,
                key=RetryRecord.key_b64(record.key),
                value=record.value.decode() if record.value else "",
                headers=RetryRecord.headers_b64(record.headers),
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
                received_at=received_at,
                strategy=plan.strategy,
                chain=[TargetSpec.of(t) for t in route.chain],
                sync_back=route.sync_back,
            )
            for route in plan.routes
        ]

        async def route(state: RetryRecord) -> Outcomes:
            done = await self._advance(state, event, fresh=True)
            if on_route is not None:
                await on_route(done)
            return done

        outcomes = Outcomes()
        # one route (the common plan) runs in this task: a task per route costs more than it
        routes = [await route(states[0])] if len(states) == 1 else await asyncio.gather(*(route(s) for s in states))
        for done in routes:
            outcomes.extend(done)
        skipped = Outcomes()
        for skip in plan.skips:
            skipped.results.append(
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
                    source=ResultSource(topic=record.topic, partition=record.partition, offset=record.offset),
                    latencyMs=round((time.time() - received_at) * 1000, 3),
                )
            )
        if on_route is not None and skipped.results:
            await on_route(skipped)
        outcomes.extend(skipped)
        return outcomes

    async def resume(self, retry: RetryRecord, event: ClassifiedMessage) -> Outcomes:
        """A record from the retry topic, now due."""
        return await self._advance(retry.model_copy(deep=True), event, fresh=False)

    # -- the route state machine -------------------------------------------------------------

    async def _advance(self, state: RetryRecord, event: ClassifiedMessage, *, fresh: bool) -> Outcomes:
        key = state.key or ""
        # one claim per route, not per target: a copy at the backup must not deliver while
        # another copy's call to the primary is in flight
        route_key = "route:" + idempotency_key(event.eventId, state.chain[0])
        while state.index < len(state.chain):
            spec = state.target
            target = spec.target()
            integration = self.config.integration(spec.integration_id)
            adapter = self.adapters[spec.integration_id]
            scope = f"{key}|{target.key}"  # the barrier: one key, one target (integration + object)
            ordered = integration.ordered and state.key is not None and state.kind != "sync_back"

            if ordered:
                head = await self.ledger.barrier_head(scope)
                if head is not None and head.event_id != event.eventId:
                    return await self._defer(state, "barrier", max(time.time(), head.due) + 0.2, scope, ordered)

            found = await self._recorded(state, event)
            if found is not None:
                index, existing = found
                found_key = idempotency_key(event.eventId, state.chain[index])
                owner = lease_owner()
                if not existing.published:  # reported by a live copy right now, or by nobody yet
                    claim = await self.ledger.claim(route_key, owner, LEASE_TTL_S)
                    if not claim.granted:
                        return await self._wait_for_copy(state, claim.previous, scope, ordered)
                    if await self._reported_by_gone_copy(event, state.chain[index], existing):
                        existing = dataclasses.replace(existing, published=True)
                        await self.ledger.put(found_key, existing)
                        await self.ledger.release(route_key, owner)
                await self._release(scope, event, ordered)
                state.index = index
                known = Delivered(existing.external_id, existing.external_url)
                if existing.published:
                    if not fresh:  # a retry record replayed after a restart: already reported
                        return Outcomes()
                    return self._finish(state, event, known, duplicate=True)
                # delivered, but the copy that delivered it was gone before its result reached
                # the broker: this is the delivery's only report, so it carries its own outcome
                outcomes = self._finish(state, event, known)
                outcomes.unpublished.append((found_key, existing))
                outcomes.leases.append((route_key, owner))
                if state.index > 0 and state.sync_back:
                    outcomes.retries.append(self._sync_back(state))
                return outcomes

            breaker = self.breakers[spec.integration_id]
            limiter = adapter.current_limiter()
            policy = self.policy(spec.integration_id)
            if limiter is not None and breaker.state is BreakerState.CLOSED:
                if limiter.paused_for > PARK_THRESHOLD_S:
                    return await self._defer(state, "park", time.time() + limiter.paused_for, scope, ordered)
                budget = policy.handoff_budget
                if fresh and (limiter.expected_latency > budget or not limiter.serves_within(budget)):
                    return await self._defer(state, "backlog", time.time(), scope, ordered)

            key_of_target = idempotency_key(event.eventId, spec)
            owner = lease_owner()
            claim = await self.ledger.claim(route_key, owner, LEASE_TTL_S)
            if not claim.granted:
                return await self._wait_for_copy(state, claim.previous, scope, ordered)
            if claim.previous is not None and await self._recorded(state, event) is not None:
                await self.ledger.release(route_key, owner)  # another copy finished meanwhile
                continue

            state.attempt += 1
            ctx = DeliveryContext(key_of_target, state.attempt, spec.integration_id, target.overrides)
            delivered: Delivered | None = None
            error: DeliveryError | None = None
            if claim.abandoned:
                # the copy that held this delivery is gone: its vendor call may have created the
                # record, so look before creating (where the vendor can tell)
                delivered = await self._look_up(adapter, target, event, ctx)
            if delivered is not None:
                pass
            elif breaker.allow():
                delivered, error = await self._attempt(adapter, breaker, target, event, ctx)
            else:  # fail fast: straight to the fallback, or an attempt of the budget spent waiting
                error = CircuitOpenError(f"circuit open for {spec.integration_id}", code="circuit_open")
                if state.index + 1 < len(state.chain):
                    state.attempt = self.policy(spec.integration_id).max_attempts
            state.history.append(
                AttemptRecord(integration=spec.integration_id, at=time.time(), error=_err(error) if error else None)
            )
            if error is None:
                assert delivered is not None
                outcomes = await self._succeed(state, event, spec, ctx, delivered, scope, ordered)
                outcomes.leases.append((route_key, owner))
                return outcomes

            if isinstance(error, QuotaExhaustedError) or (
                isinstance(error, RateLimitedError) and (error.retry_after or 0.0) > PARK_THRESHOLD_S
            ):
                state.attempt -= 1  # a spent quota, or a vendor's long block, is not the record's fault
                await self.ledger.release(route_key, owner)
                wait = error.retry_after or policy.park_after
                return await self._defer(state, "park", time.time() + wait, scope, ordered)
            if error.retriable and not policy.exhausted(state.attempt):
                await self.ledger.release(route_key, owner)
                delay = policy.delay(state.attempt, error.retry_after)
                return await self._defer(state, "retry", time.time() + delay, scope, ordered)
            if error.retriable and not isinstance(error, CircuitOpenError):
                # a lost response may have created the record: look before giving up on the target
                found_late = await self._look_up(adapter, target, event, ctx)
                if found_late is not None:
                    delivered, error = found_late, None
                    state.history.append(AttemptRecord(integration=spec.integration_id, at=time.time()))
                    outcomes = await self._succeed(state, event, spec, ctx, delivered, scope, ordered)
                    outcomes.leases.append((route_key, owner))
                    return outcomes
            await self.ledger.release(route_key, owner)
            await self._release(scope, event, ordered)
            self._note(state, error)
            if state.kind == "sync_back":
                break
            self._next_target(state)
        return self._fail(state, event)

    async def _succeed(
        self,
        state: RetryRecord,
        event: ClassifiedMessage,
        spec: TargetSpec,
        ctx: DeliveryContext,
        delivered: Delivered,
        scope: str,
        ordered: bool,
    ) -> Outcomes:
        """The record exists: tell the ledger first (the crash window), then report."""
        entry = LedgerEntry(
            delivered.external_id,
            delivered.external_url,
            spec.integration_id,
            spec.object_type,
            time.time(),
            published=False,
        )
        await self.ledger.put(ctx.idempotency_key, entry)
        await self._release(scope, event, ordered)
        outcomes = self._finish(state, event, delivered)
        outcomes.unpublished.append((ctx.idempotency_key, entry))
        if state.index > 0 and state.sync_back:
            outcomes.retries.append(self._sync_back(state))
        return outcomes

    @staticmethod
    async def _look_up(
        adapter: Adapter, target: Target, event: ClassifiedMessage, ctx: DeliveryContext
    ) -> Delivered | None:
        try:
            return await adapter.find_existing(event, target.object_type, ctx)
        except DeliveryError:
            return None  # the vendor cannot answer now either: fall back as planned

    async def _recorded(self, state: RetryRecord, event: ClassifiedMessage) -> tuple[int, LedgerEntry] | None:
        """The target of the route that already has the record, if any (primary first).

        A route delivers to one target of its chain. After a crash, an event is redelivered from
        the input topic and its retry records are replayed, so several copies of its route may be
        at different targets: a copy must not deliver to the backup when another one delivered
        to the primary, nor to the primary when another one fell back to the backup.
        """
        for index in range(len(state.chain)):
            entry = await self.ledger.get(idempotency_key(event.eventId, state.chain[index]))
            if entry is not None:
                return index, entry
        return None

    async def confirm(self, outcomes: Outcomes) -> None:
        """Once the results are acknowledged: mark their deliveries' ledger entries published,
        then drop the claims (a waiting copy now finds a published entry: ``duplicate``).

        A crash before this reports those deliveries again on redelivery (at least once)."""
        if outcomes.unpublished or outcomes.leases:
            await self.ledger.settle(
                [(key, dataclasses.replace(entry, published=True)) for key, entry in outcomes.unpublished],
                outcomes.leases,
            )

    async def _reported_by_gone_copy(self, event: ClassifiedMessage, spec: TargetSpec, entry: LedgerEntry) -> bool:
        """The copy that delivered this is gone: did its result reach the broker before it went
        (it died between the broker's ack and the ledger's note of it)?"""
        if self.published is None:
            return False
        return await self.published(event.eventId, spec.integration_id, spec.object_type, entry.at - 1.0)

    async def _wait_for_copy(self, state: RetryRecord, holder: Lease | None, scope: str, ordered: bool) -> Outcomes:
        """Another live copy holds this delivery: look again once it is done (its lease ends, or
        after a short poll), without spending an attempt and without calling the vendor."""
        due = time.time() + LEASE_POLL_S
        if holder is not None:
            due = min(due, holder.until + 0.1)
        return await self._defer(state, "backlog", due, scope, ordered)

    async def _attempt(
        self,
        adapter: Adapter,
        breaker: CircuitBreaker,
        target: Target,
        event: ClassifiedMessage,
        ctx: DeliveryContext,
    ) -> tuple[Delivered | None, DeliveryError | None]:
        started = time.perf_counter()
        labels = (target.integration_id, target.integration_type)
        with waits_measured() as waited:
            try:
                return await self._call(adapter, breaker, target, event, ctx, labels)
            finally:
                wait = sum(waited)
                metrics.child(metrics.RATE_LIMIT_WAIT, *labels).observe(wait)
                metrics.child(metrics.DELIVERY_LATENCY, *labels).observe(max(0.0, time.perf_counter() - started - wait))

    @staticmethod
    async def _call(
        adapter: Adapter,
        breaker: CircuitBreaker,
        target: Target,
        event: ClassifiedMessage,
        ctx: DeliveryContext,
        labels: tuple[str, str],
    ) -> tuple[Delivered | None, DeliveryError | None]:
        try:
            try:
                delivered = await adapter.create(event, target.object_type, ctx)
            except AmbiguousDeliveryError:
                found = await adapter.find_existing(event, target.object_type, ctx)
                if found is None:
                    raise
                delivered = found
        except DeliveryError as exc:
            metrics.child(metrics.DELIVERIES, *labels, exc.error_class).inc()
            if exc.retriable:
                breaker.failure()
            return None, exc
        breaker.success()
        metrics.child(metrics.DELIVERIES, *labels, "ok").inc()
        return delivered, None

    # -- transitions -------------------------------------------------------------------------

    @staticmethod
    def _note(state: RetryRecord, error: DeliveryError) -> None:
        if state.first_error is None:
            state.first_error = _err(error)

    @staticmethod
    def _next_target(state: RetryRecord) -> None:
        state.index += 1
        state.attempt = 0
        state.kind = "retry"

    async def _defer(self, state: RetryRecord, kind: RetryKind, due: float, scope: str, ordered: bool) -> Outcomes:
        if state.kind != "sync_back":
            state.kind = kind
        state.due = due
        if ordered:
            await self.ledger.barrier_hold(scope, state.event_id, due)
        metrics.child(metrics.RETRIES_SCHEDULED, state.target.integration_id, _REASONS[kind]).inc()
        return Outcomes(retries=[state])

    async def _release(self, scope: str, event: ClassifiedMessage, ordered: bool) -> None:
        if ordered:
            await self.ledger.barrier_release(scope, event.eventId)

    def _sync_back(self, state: RetryRecord) -> RetryRecord:
        """After a fallback: deliver to the primary too, once it recovers."""
        primary = state.chain[0]
        policy = self.policy(primary.integration_id)
        breaker = self.breakers[primary.integration_id]
        return state.model_copy(
            update={
                "kind": "sync_back",
                "chain": [primary],
                "index": 0,
                "attempt": 0,
                "due": time.time() + max(breaker.retry_in, policy.delay(1)),
                "sync_back": False,
                "sync_back_from": state.target.integration_id,
                "first_error": None,
            },
            deep=True,
        )

    def _result(
        self,
        state: RetryRecord,
        event: ClassifiedMessage,
        status: SyncStatus,
        target: TargetSpec,
        delivered: Delivered | None = None,
        error: dict[str, str] | None = None,
        reason: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> SyncResult:
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
            error=ResultError.model_validate(error) if error else None,
            reason=reason,
            fallbackFrom=state.chain[0].integration_id if status == "fallback" else None,
            detail=_bounded(detail) if detail else None,
            source=ResultSource(topic=state.source_topic, partition=state.source_partition, offset=state.source_offset),
            completedAt=datetime.now(UTC),
        )

    def _finish(
        self, state: RetryRecord, event: ClassifiedMessage, delivered: Delivered, duplicate: bool = False
    ) -> Outcomes:
        if duplicate:
            status: SyncStatus = "duplicate"
        elif state.index > 0:
            status = "fallback"
        else:
            status = "succeeded"
        reason = None
        if state.kind == "sync_back":
            reason = f"sync_back: delivered to the primary after fallback to {state.sync_back_from}"
        result = self._result(
            state,
            event,
            status,
            state.target,
            delivered,
            error=state.first_error if status == "fallback" else None,
            reason=reason,
            detail=delivered.detail,
        )
        return Outcomes(results=[result])

    def _fail(self, state: RetryRecord, event: ClassifiedMessage) -> Outcomes:
        """No target left: a final ``failed`` result and a dead letter with the whole history."""
        primary = state.chain[0]
        error = state.first_error or {"class": "config", "code": "no_target", "message": "no target could be tried"}
        reason = f"sync_back to {primary.integration_id} gave up" if state.kind == "sync_back" else None
        result = self._result(state, event, "failed", primary, error=error, reason=reason)
        history = orjson.dumps([h.model_dump() for h in state.history])
        dead = DeadLetter(
            record=state.original(),
            reason=f"{error['class']} {error['code']}: {error['message']}"[:1000],
            headers=(
                (Header.INTEGRATION, primary.integration_id.encode()),
                (Header.OBJECT_TYPE, primary.object_type.encode()),
                (Header.ERROR_CODE, error["code"].encode()),
                (Header.ATTEMPTS, str(len(state.history)).encode()),
                (Header.ATTEMPT_HISTORY, history[:16384]),
            ),
        )
        return Outcomes(results=[result], dead_letters=[dead])
