"""Delivery of one event's plan: the one place that decides retry, fallback and outcome.

Each route of a plan runs concurrently; a route tries its targets in order (primary, then
fallbacks). Its state while it does (:class:`~daemon.route.RouteState`) lives in memory and
becomes a retry record only when the route is handed to the retry topic. For each target, these
steps run in this order (``Dispatcher.step_*``, each deciding the pass or handing on):

1. **barrier** (``step_barrier``) — if the integration keeps per-key order and an earlier event
   of the same key waits for a retry there, this one queues behind it (on the retry topic);
2. **circuit / park / backlog** (``step_admission``) — an open circuit goes straight to the
   fallback (or waits for the probe); an integration paused for a long quota or ``Retry-After``
   is parked; a fresh event whose integration cannot take it within the hand-off budget (its
   pace, a pause, busy slots) is handed to the retry topic so that its siblings and the source
   partition keep flowing (before the ledger step: such a hand-off costs no ledger round trip);
3. **ledger** (``step_recorded``) — if this (event, integration, object type), or another target
   of the route, already has a record, the outcome is ``duplicate`` (or, when the process stopped
   before that delivery's result reached the broker, the delivery's own outcome, reported now);
4. **claim** (``step_claim``) — a lease on (event, target) in the ledger, held from before the
   vendor call until the result is on the broker: a second copy of the delivery waits for the
   first one's outcome instead of calling the vendor; a lease left by a dead copy is resolved by
   a lookup first;
5. **attempt** (``step_attempt``, then ``step_succeed`` or ``step_failed``) — an ambiguous
   failure (sent, no answer) is resolved by a lookup where the vendor allows it; a retryable
   failure is scheduled on the retry topic with backoff; a final failure moves on to the
   fallback, and when no target is left the event gets a ``failed`` result and a dead letter
   with its full attempt history.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Histogram

from octopus_crm.adapters.base import Adapter, Delivered, DeliveryContext
from octopus_crm.adapters.fleet import FleetStore
from octopus_crm.adapters.ratelimit import waits_measured
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    DeliveryError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm.daemon import metrics
from octopus_crm.daemon.config import CrmConfig
from octopus_crm.daemon.ledger import Claim, Found, Lease, Ledger, LedgerEntry, find_first, lease_owner
from octopus_crm.daemon.outcomes import Outcomes, failed, finished, sync_result
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retrying import AttemptRecord, RetryKind, RetryRecord, TargetSpec
from octopus_crm.daemon.route import RouteState
from octopus_crm.strategies.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from octopus_crm.strategies.retry import RetryPolicy
from octopus_crm.strategies.routing import Plan, Target

__all__ = ["AtTarget", "CircuitOpenError", "Dispatcher", "idempotency_key"]

log = structlog.get_logger("octopus.dispatch")

PARK_THRESHOLD_S = 5.0
# A claim outlives any one vendor call and the publishing of its result; a copy that finds a live
# lease of another copy looks again after at most LEASE_POLL_S.
LEASE_TTL_S = 120.0
LEASE_POLL_S = 2.0


def idempotency_key(event_id: str, target: Target | TargetSpec) -> str:
    return f"{event_id}:{target.key}"


def _chain_keys(state: RouteState, event: ClassifiedMessage) -> list[str]:
    """The idempotency keys of the route's chain, primary first."""
    return [f"{event.eventId}:{spec.key}" for spec in state.chain]


def _check_settled(settling: collections.deque[asyncio.Future[None]]) -> None:
    """Settles nobody waits for, oldest first: a failure is logged (its entries stay unpublished,
    so a redelivery reports them again). Looked at on the next confirm rather than through a done
    callback, which would cost a turn of the loop per settle."""
    while settling and settling[0].done():
        done = settling.popleft()
        if not done.cancelled() and (error := done.exception()) is not None:
            log.warning("ledger settle failed: deliveries may be reported again", error=type(error).__name__)


class CircuitOpenError(RetryableError):
    """Fail fast: the integration's breaker is open."""


@dataclass
class AtTarget:
    """A route at its current target, for one pass: what its steps share.

    ``owner``, ``abandoned``, ``ctx`` and ``claim`` are set as the steps go (the lookup, the
    claim, the attempt)."""

    state: RouteState
    event: ClassifiedMessage
    adapter: Adapter
    key: str  # the idempotency key of this delivery (event, current target)
    route_key: str
    ordered: bool
    owner: str = ""
    abandoned: bool = False
    ctx: DeliveryContext | None = None
    # the lease taken with the ledger lookup (one round trip), for the claim step to use
    claim: Claim | None = None

    @property
    def context(self) -> DeliveryContext:
        assert self.ctx is not None, "no attempt made at this target yet"
        return self.ctx

    @functools.cached_property
    def scope(self) -> str:
        """The barrier of an ordered target: one key, one target (integration + object)."""
        return f"{RetryRecord.key_b64(self.state.source.key)}|{self.state.target.key}"


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


_Metrics = tuple[Histogram, Histogram, Counter]
_DELIVERY_METRICS: dict[tuple[str, str], _Metrics] = {}


def _delivery_metrics(labels: tuple[str, str]) -> _Metrics:
    """An integration's children of the per-attempt metrics (wait, latency, delivered ``ok``)."""
    found = _DELIVERY_METRICS.get(labels)
    if found is None:
        found = _DELIVERY_METRICS[labels] = (
            metrics.child(metrics.RATE_LIMIT_WAIT, *labels),
            metrics.child(metrics.DELIVERY_LATENCY, *labels),
            metrics.child(metrics.DELIVERIES, *labels, "ok"),
        )
    return found


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
        # per event, by id: CrmConfig.integration is a scan of the list
        self._integrations = {integration.id: integration for integration in config.crmIntegrations}
        self._settling: collections.deque[asyncio.Future[None]] = collections.deque()  # see _check_settled
        self.breakers = {
            integration_id: _breaker(integration_id, self._integrations[integration_id].circuitBreaker, fleet)
            for integration_id in adapters
        }

    def policy(self, integration_id: str) -> RetryPolicy:
        return self._integrations[integration_id].retry or self.config.retry

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
            RouteState.fresh_route(event.eventId, record, received_at, plan.strategy, route) for route in plan.routes
        ]

        if len(states) == 1:  # the common plan: its route runs in this task (a task costs more than it)
            done = await self._advance(states[0], event)
            if on_route is not None:
                await on_route(done)
            if not plan.skips:
                return done
            routes = [done]
        else:

            async def route(state: RouteState) -> Outcomes:
                done = await self._advance(state, event)
                if on_route is not None:
                    await on_route(done)
                return done

            routes = await asyncio.gather(*(route(s) for s in states))
        outcomes = Outcomes()
        for done in routes:
            outcomes.extend(done)
        skipped = Outcomes()
        for skip in plan.skips:
            skipped.results.append(
                sync_result(event, plan.strategy, "skipped", skip, record, received_at, reason=skip.reason)
            )
        if on_route is not None and skipped.results:
            await on_route(skipped)
        outcomes.extend(skipped)
        return outcomes

    async def resume(self, retry: RetryRecord, event: ClassifiedMessage) -> Outcomes:
        """A record from the retry topic, now due."""
        return await self._advance(RouteState.from_retry(retry), event)

    # -- the route, step by step ---------------------------------------------------------------

    async def _advance(self, state: RouteState, event: ClassifiedMessage) -> Outcomes:
        """Walk the chain until a step decides this pass: delivered, handed to the retry topic,
        or (no target left) failed. Each step returns its :class:`Outcomes` when it decides."""
        while state.index < len(state.chain):
            at = self.at_target(state, event)
            # the barrier step only where the target keeps order (most do not: no call at all)
            if at.ordered and (decided := await self.step_barrier(at)) is not None:
                return decided
            # admission before the ledger: a pass handed on as backlog or parked costs no ledger
            # round trip (a recorded delivery is found by the pass that comes back)
            if (decided := await self.step_admission(at)) is not None:
                return decided
            if (decided := await self.step_recorded(at)) is not None:
                return decided
            claim = await self.step_claim(at)
            if claim is None:
                continue  # another copy finished meanwhile: the ledger step reports it
            if isinstance(claim, Outcomes):
                return claim
            delivered, error = await self.step_attempt(at)
            if error is None:
                assert delivered is not None
                return await self.step_succeed(at, delivered)
            decided = await self.step_failed(at, error)
            if decided is not None:
                return decided
            if state.is_sync_back:
                break
            state.next_target()
        return failed(state, event)

    def at_target(self, state: RouteState, event: ClassifiedMessage) -> AtTarget:
        """What every step at the route's current target needs to know."""
        spec = state.target
        ordered = (
            self._integrations[spec.integration_id].ordered
            and state.source.key is not None
            and state.purpose != "sync_back"
        )
        key = f"{event.eventId}:{spec.key}"
        return AtTarget(
            state=state,
            event=event,
            adapter=self.adapters[spec.integration_id],
            key=key,
            # one claim per route, not per target: a copy at the backup must not deliver while
            # another copy's call to the primary is in flight
            route_key="route:" + (key if state.index == 0 else f"{event.eventId}:{state.chain[0].key}"),
            ordered=ordered,
        )

    async def step_barrier(self, at: AtTarget) -> Outcomes | None:
        """An earlier event of the same key waits for a retry at this target: queue behind it."""
        if not at.ordered or not self.ledger.barriers_held(at.state.target.key):
            return None
        head = await self.ledger.barrier_head(at.scope)
        if head is not None and head.event_id != at.event.eventId:
            return await self._defer(at, "barrier", max(time.time(), head.due) + 0.2)
        return None

    async def step_recorded(self, at: AtTarget) -> Outcomes | None:
        """A target of the route already has the record: ``duplicate``, or (its result never
        reached the broker) the delivery's own outcome, reported now."""
        state, event = at.state, at.event
        # the lookup takes the route's lease too when nothing is recorded (what a fresh delivery
        # goes on to need): the claim step, next, uses it
        owner = lease_owner()
        found = await self.ledger.find_or_claim(_chain_keys(state, event), at.route_key, owner, LEASE_TTL_S)
        if isinstance(found, Claim):
            at.claim, at.owner = found, owner
            return None
        index, existing = found.index, found.entry
        found_key = idempotency_key(event.eventId, state.chain[index])
        if not existing.published:  # reported by a live copy right now, or by nobody yet
            claim = await self.ledger.claim(at.route_key, owner, LEASE_TTL_S)
            if not claim.granted:
                return await self._wait_for_copy(at, claim.previous)
            if await self._reported_by_gone_copy(event, state.chain[index], existing):
                existing = existing.as_published()
                await self.ledger.put(found_key, existing)
                await self.ledger.release(at.route_key, owner)
        await self._release(at)
        state.index = index
        known = Delivered(existing.external_id, existing.external_url)
        if existing.published:
            if not state.fresh:  # a retry record replayed after a restart: already reported
                return Outcomes()
            return finished(state, event, known, duplicate=True)
        # delivered, but the copy that delivered it was gone before its result reached
        # the broker: this is the delivery's only report, so it carries its own outcome
        outcomes = finished(state, event, known)
        outcomes.unpublished.append((found_key, existing))
        if state.index > 0 and state.sync_back:
            outcomes.retries.append(self._sync_back(state))
            outcomes.leases.append((at.route_key, owner))  # the sync-back pass claims this route again
        return outcomes

    async def step_admission(self, at: AtTarget) -> Outcomes | None:
        """A long vendor pause parks the route; a fresh delivery its integration cannot start
        within the hand-off budget goes to the retry topic as backlog."""
        spec = at.state.target
        limiter = at.adapter.current_limiter()
        if limiter is None or self.breakers[spec.integration_id].state is not BreakerState.CLOSED:
            return None
        if limiter.paused_for > PARK_THRESHOLD_S:
            return await self._defer(at, "park", time.time() + limiter.paused_for)
        budget = self.policy(spec.integration_id).handoff_budget
        if at.state.fresh and not limiter.admits(budget):
            return await self._defer(at, "backlog", time.time())
        return None

    async def step_claim(self, at: AtTarget) -> Claim | Outcomes | None:
        """The lease on the route, held from before the vendor call until the result is on the
        broker. Another live copy holding it: wait for its outcome (``Outcomes``); a copy that
        finished meanwhile: ``None``, look again."""
        if at.claim is not None:  # taken with the lookup
            claim, owner, at.claim = at.claim, at.owner, None
        else:
            owner = lease_owner()
            claim = await self.ledger.claim(at.route_key, owner, LEASE_TTL_S)
        if not claim.granted:
            return await self._wait_for_copy(at, claim.previous)
        if claim.previous is not None and await self._recorded(at.state, at.event) is not None:
            await self.ledger.release(at.route_key, owner)
            return None
        at.owner = owner
        at.abandoned = claim.abandoned
        return claim

    async def step_attempt(self, at: AtTarget) -> tuple[Delivered | None, DeliveryError | None]:
        """One attempt at the current target (a lookup first when a gone copy may have created
        the record; fail fast when the circuit is open), noted in the route's history."""
        state = at.state
        spec = state.target
        target = spec.target()
        adapter = at.adapter
        breaker = self.breakers[spec.integration_id]
        state.attempt += 1
        at.ctx = DeliveryContext(at.key, state.attempt, spec.integration_id, target.overrides)
        delivered: Delivered | None = None
        error: DeliveryError | None = None
        if at.abandoned:
            # the copy that held this delivery is gone: its vendor call may have created the
            # record, so look before creating (where the vendor can tell)
            delivered = await self._look_up(adapter, target, at.event, at.ctx)
        if delivered is not None:
            pass
        elif breaker.allow():
            delivered, error = await self._attempt(adapter, breaker, target, at.event, at.ctx)
        else:  # fail fast: straight to the fallback, or an attempt of the budget spent waiting
            error = CircuitOpenError(f"circuit open for {spec.integration_id}", code="circuit_open")
            if state.has_next:
                state.attempt = self.policy(spec.integration_id).max_attempts
        # validated: pydantic's model_construct measured slower (4.5 µs) than validation (1.8 µs)
        state.history.append(
            AttemptRecord(integration=spec.integration_id, at=time.time(), error=error.as_dict() if error else None)
        )
        return delivered, error

    async def step_succeed(self, at: AtTarget, delivered: Delivered) -> Outcomes:
        """The record exists: tell the ledger at once (the crash window), and report meanwhile.

        The ledger write is started here and awaited by :meth:`confirm`, before it settles: the
        result may reach the broker before the entry is written, which changes nothing for a
        crash in between (the redelivery finds the claim of a gone copy and looks the record up
        at the vendor either way); what it saves is a wait on the ledger per delivery."""
        state, spec, ctx = at.state, at.state.target, at.context
        entry = LedgerEntry(
            delivered.external_id,
            delivered.external_url,
            spec.integration_id,
            spec.object_type,
            time.time(),
            published=False,
        )
        writing = asyncio.ensure_future(self.ledger.put(ctx.idempotency_key, entry))
        await self._release(at)
        outcomes = finished(state, at.event, delivered)
        outcomes.unpublished.append((ctx.idempotency_key, entry))
        outcomes.writing.append(writing)
        if state.index > 0 and state.sync_back:
            outcomes.retries.append(self._sync_back(state))
            outcomes.leases.append((at.route_key, at.owner))  # the sync-back pass claims this route again
        return outcomes

    async def step_failed(self, at: AtTarget, error: DeliveryError) -> Outcomes | None:
        """After a failed attempt: park on a spent quota or a long block, retry with backoff while
        the budget lasts, and before giving up on the target look for a record a lost response
        may have created. ``None``: this target is done with, move on."""
        state = at.state
        spec = state.target
        policy = self.policy(spec.integration_id)
        if isinstance(error, QuotaExhaustedError) or (
            isinstance(error, RateLimitedError) and (error.retry_after or 0.0) > PARK_THRESHOLD_S
        ):
            state.attempt -= 1  # a spent quota, or a vendor's long block, is not the record's fault
            await self.ledger.release(at.route_key, at.owner)
            return await self._defer(at, "park", time.time() + (error.retry_after or policy.park_after))
        if error.retriable and not policy.exhausted(state.attempt):
            await self.ledger.release(at.route_key, at.owner)
            return await self._defer(at, "retry", time.time() + policy.delay(state.attempt, error.retry_after))
        if error.retriable and not isinstance(error, CircuitOpenError):
            found_late = await self._look_up(at.adapter, spec.target(), at.event, at.context)
            if found_late is not None:
                state.history.append(AttemptRecord(integration=spec.integration_id, at=time.time()))
                return await self.step_succeed(at, found_late)
        await self.ledger.release(at.route_key, at.owner)
        await self._release(at)
        state.note(error.info)
        return None

    @staticmethod
    async def _look_up(
        adapter: Adapter, target: Target, event: ClassifiedMessage, ctx: DeliveryContext
    ) -> Delivered | None:
        try:
            return await adapter.find_existing(event, target.object_type, ctx)
        except DeliveryError:
            return None  # the vendor cannot answer now either: fall back as planned

    async def _recorded(self, state: RouteState, event: ClassifiedMessage) -> Found | None:
        """The target of the route that already has the record, if any (primary first).

        A route delivers to one target of its chain. After a crash, an event is redelivered from
        the input topic and its retry records are replayed, so several copies of its route may be
        at different targets: a copy must not deliver to the backup when another one delivered
        to the primary, nor to the primary when another one fell back to the backup.
        """
        return await find_first(self.ledger, _chain_keys(state, event))

    async def confirm(self, outcomes: Outcomes) -> None:
        """Once the results are acknowledged: mark their deliveries' ledger entries published
        (after the writes of those entries). A copy that looks now finds the published entry
        (``duplicate``) before it looks at the claim, so the claim needs no release of its own,
        unless a sync-back pass follows (its chain holds the primary only: it claims the route
        again, and would otherwise wait for this claim to expire).

        A store that queues its writes in order (SQLite, memory) is not waited for: the offset
        may be committed before the mark is written, and a crash in between reports those
        deliveries again on redelivery (at least once, as a crash before this does)."""
        for writing in outcomes.writing:
            await writing
        if self._settling:
            _check_settled(self._settling)
        if not outcomes.unpublished:
            return
        settling = self.ledger.settle(
            [(key, entry.as_published()) for key, entry in outcomes.unpublished], outcomes.leases
        )
        if isinstance(settling, asyncio.Future):
            self._settling.append(settling)
        else:
            await settling

    async def _reported_by_gone_copy(self, event: ClassifiedMessage, spec: TargetSpec, entry: LedgerEntry) -> bool:
        """The copy that delivered this is gone: did its result reach the broker before it went
        (it died between the broker's ack and the ledger's note of it)?"""
        if self.published is None:
            return False
        return await self.published(event.eventId, spec.integration_id, spec.object_type, entry.at - 1.0)

    async def _wait_for_copy(self, at: AtTarget, holder: Lease | None) -> Outcomes:
        """Another live copy holds this delivery: look again once it is done (its lease ends, or
        after a short poll), without spending an attempt and without calling the vendor."""
        due = time.time() + LEASE_POLL_S
        if holder is not None:
            due = min(due, holder.until + 0.1)
        return await self._defer(at, "backlog", due)

    async def _attempt(
        self,
        adapter: Adapter,
        breaker: CircuitBreaker,
        target: Target,
        event: ClassifiedMessage,
        ctx: DeliveryContext,
    ) -> tuple[Delivered | None, DeliveryError | None]:
        """One vendor call (a lookup after an ambiguous create), measured; one coroutine, since
        each frame of the chain is resumed again at every wait of the call."""
        labels = (target.integration_id, target.integration_type)
        rate_limit_wait, delivery_latency, delivered_ok = _delivery_metrics(labels)
        started = time.perf_counter()
        with waits_measured() as waited:
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
            finally:
                wait = sum(waited) if waited else 0.0
                rate_limit_wait.observe(wait)
                delivery_latency.observe(max(0.0, time.perf_counter() - started - wait))
        breaker.success()
        delivered_ok.inc()
        return delivered, None

    # -- transitions -------------------------------------------------------------------------

    async def _defer(self, at: AtTarget, kind: RetryKind, due: float) -> Outcomes:
        """Hand the route to the retry topic, due at ``due``; an ordered target holds its key."""
        if at.ordered:
            await self.ledger.barrier_hold(at.scope, at.state.event_id, due)
        metrics.child(metrics.RETRIES_SCHEDULED, at.state.target.integration_id, _REASONS[kind]).inc()
        return Outcomes(retries=[at.state.to_retry(kind, due)])

    async def _release(self, at: AtTarget) -> None:
        if at.ordered and self.ledger.barriers_held(at.state.target.key):
            await self.ledger.barrier_release(at.scope, at.event.eventId)

    def _sync_back(self, state: RouteState) -> RetryRecord:
        """After a fallback: deliver to the primary too, once it recovers."""
        primary = state.chain[0]
        policy = self.policy(primary.integration_id)
        breaker = self.breakers[primary.integration_id]
        back = dataclasses.replace(
            state,
            purpose="sync_back",
            chain=(primary,),
            index=0,
            attempt=0,
            history=list(state.history),
            first_error=None,
            sync_back=False,
            sync_back_from=state.target.integration_id,
        )
        return back.to_retry("sync_back", time.time() + max(breaker.retry_in, policy.delay(1)))
