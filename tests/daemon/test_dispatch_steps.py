"""The dispatcher's steps, one at a time, over the memory ledger: no broker, no vendor.

Each step gets a route at its current target (:class:`AtTarget`) and either decides the pass
(returns its outcomes) or hands on (``None``). Adapters are small fakes answering from a script.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from octopus_crm.adapters.base import Adapter, Delivered, DeliveryContext
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    DeliveryError,
    ErrorInfo,
    PermanentError,
    QuotaExhaustedError,
    RetryableError,
)
from octopus_crm.core.wire import Header
from octopus_crm.daemon.config import CrmConfig, parse_config
from octopus_crm.daemon.dispatch import AtTarget, CircuitOpenError, Dispatcher, idempotency_key
from octopus_crm.daemon.ledger import Claim, Found, Lease, LedgerEntry, MemoryLedger, SqliteLedger, lease_owner
from octopus_crm.daemon.outcomes import Outcomes
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retrying import RetryRecord
from octopus_crm.daemon.route import RouteState
from octopus_crm.strategies.routing import Plan, Route, Target
from tests.events import encode, make_event, webhook_config

FAST_RETRY = {"maxAttempts": 3, "initialDelay": 0.1, "multiplier": 2, "jitter": 0}


class FakeLimiter:
    def __init__(self, paused_for: float = 0.0, serves: bool = True) -> None:
        self.paused_for = paused_for
        self.expected_latency = 0.0
        self.serves = serves

    def serves_within(self, budget: float) -> bool:
        return self.serves

    def admits(self, budget: float) -> bool:
        return self.expected_latency <= budget and self.serves_within(budget)


class FakeAdapter:
    """Answers each create from ``answers`` (a :class:`Delivered` or an error to raise)."""

    def __init__(self, *answers: Delivered | DeliveryError, found: Delivered | None = None) -> None:
        self.answers = list(answers)
        self.found = found
        self.creates: list[DeliveryContext] = []
        self.lookups = 0
        self.limiter: FakeLimiter | None = None

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        self.creates.append(ctx)
        answer = self.answers.pop(0)
        if isinstance(answer, DeliveryError):
            raise answer
        return answer

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        self.lookups += 1
        return self.found

    def current_limiter(self) -> FakeLimiter | None:
        return self.limiter


def config(*ids: str, **integration: Any) -> CrmConfig:
    raw = webhook_config({i: f"http://127.0.0.1:9/{i}" for i in ids}, retry=FAST_RETRY, **integration)
    return parse_config(raw, env={})


def dispatcher(adapters: dict[str, FakeAdapter], **integration: Any) -> Dispatcher:
    return Dispatcher(config(*adapters, **integration), cast(dict[str, Adapter], adapters), MemoryLedger())


def event_and_record(key: str | None = "k0") -> tuple[ClassifiedMessage, InboundRecord]:
    raw = make_event(0)
    record = InboundRecord("input", 0, 7, key.encode() if key is not None else None, encode(raw), (("trace", b"t-1"),))
    return ClassifiedMessage.model_validate(raw), record


def route_state(*ids: str, key: str | None = "k0", sync_back: bool = False) -> tuple[RouteState, ClassifiedMessage]:
    event, record = event_and_record(key)
    chain = tuple(Target(i, "webhook", "message") for i in ids)
    state = RouteState.fresh_route(event.eventId, record, time.time(), "primary_backup", Route(chain, sync_back))
    return state, event


def at(d: Dispatcher, state: RouteState, event: ClassifiedMessage) -> AtTarget:
    return d.at_target(state, event)


def kinds(outcomes: Outcomes | None) -> list[str]:
    assert outcomes is not None
    return [r.kind for r in outcomes.retries]


def statuses(outcomes: Outcomes) -> list[tuple[str | None, str]]:
    return [(r.get("integrationId"), r["status"]) for r in outcomes.results]


# -- the route state ------------------------------------------------------------------------


def test_a_fresh_route_is_not_a_retry_record_until_it_is_handed_off() -> None:
    state, _ = route_state("primary", "backup")
    assert state.fresh and not state.is_sync_back and state.target.integration_id == "primary"
    wire = state.to_retry("backlog", 123.0)
    assert wire.kind == "backlog" and wire.due == 123.0
    assert wire.headers == [("trace", "dC0x")] and wire.source_offset == 7
    back = RouteState.from_retry(RetryRecord.decode(wire.encode()))
    assert not back.fresh and back.source == state.source
    assert back.to_retry("backlog", 123.0) == wire


def test_a_sync_back_route_keeps_its_purpose_whenever_it_waits() -> None:
    state, _ = route_state("primary")
    state.purpose = "sync_back"
    assert state.to_retry("park", 1.0).kind == "sync_back"
    assert RouteState.from_retry(state.to_retry("retry", 1.0)).is_sync_back


def test_the_first_error_is_kept() -> None:
    state, _ = route_state("primary", "backup")
    state.note(ErrorInfo("retryable", "http_503", "down"))
    state.note(ErrorInfo("permanent", "http_400", "bad"))
    assert state.to_retry("retry", 1.0).first_error == {"class": "retryable", "code": "http_503", "message": "down"}


# -- barrier --------------------------------------------------------------------------------


async def test_barrier_queues_behind_another_event_of_the_key() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    here = at(d, state, event)
    assert await d.step_barrier(here) is None
    await d.ledger.barrier_hold(here.scope, "an-earlier-event", time.time() + 30)
    decided = await d.step_barrier(here)
    assert kinds(decided) == ["barrier"]
    assert decided is not None and decided.retries[0].due >= time.time() + 29


async def test_barrier_ignores_unordered_targets_and_keyless_events() -> None:
    d = dispatcher({"primary": FakeAdapter()}, ordered=False)
    state, event = route_state("primary")
    here = at(d, state, event)
    assert not here.ordered
    d2 = dispatcher({"primary": FakeAdapter()})
    state2, event2 = route_state("primary", key=None)
    assert not at(d2, state2, event2).ordered


# -- ledger ---------------------------------------------------------------------------------


async def test_recorded_and_published_is_a_duplicate_of_a_fresh_event() -> None:
    d = dispatcher({"primary": FakeAdapter(), "backup": FakeAdapter()})
    state, event = route_state("primary", "backup")
    key = idempotency_key(event.eventId, state.chain[1])
    await d.ledger.put(key, LedgerEntry("B-1", None, "backup", "message", time.time(), published=True))
    decided = await d.step_recorded(at(d, state, event))
    assert decided is not None and statuses(decided) == [("backup", "duplicate")]
    assert decided.results[0].get("externalId") == "B-1"


async def test_recorded_and_published_is_nothing_to_report_for_a_replayed_retry() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    state.fresh = False
    key = idempotency_key(event.eventId, state.chain[0])
    await d.ledger.put(key, LedgerEntry("P-1", None, "primary", "message", time.time(), published=True))
    decided = await d.step_recorded(at(d, state, event))
    assert decided == Outcomes()


async def test_recorded_by_a_gone_copy_reports_its_own_outcome() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    key = idempotency_key(event.eventId, state.chain[0])
    await d.ledger.put(key, LedgerEntry("P-1", None, "primary", "message", time.time(), published=False))
    decided = await d.step_recorded(at(d, state, event))
    assert decided is not None and statuses(decided) == [("primary", "succeeded")]
    assert [k for k, _ in decided.unpublished] == [key]


async def test_recorded_while_a_live_copy_reports_it_waits_for_that_copy() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    here = at(d, state, event)
    key = idempotency_key(event.eventId, state.chain[0])
    await d.ledger.put(key, LedgerEntry("P-1", None, "primary", "message", time.time(), published=False))
    assert (await d.ledger.claim(here.route_key, lease_owner(), 60)).granted
    decided = await d.step_recorded(here)
    assert kinds(decided) == ["backlog"]


async def test_nothing_recorded_hands_on_with_the_route_claimed_for_the_claim_step() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    here = at(d, state, event)
    assert await d.step_recorded(here) is None
    assert here.claim is not None and here.claim.granted  # taken in the lookup's round trip
    claim = await d.step_claim(here)
    assert isinstance(claim, Claim) and claim.granted and here.claim is None
    assert cast(MemoryLedger, d.ledger).leases[here.route_key].owner == here.owner


# -- admission ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limiter", "fresh", "expected"),
    [
        (None, True, None),
        (FakeLimiter(), True, None),
        (FakeLimiter(paused_for=60), True, "park"),
        (FakeLimiter(paused_for=60), False, "park"),
        (FakeLimiter(serves=False), True, "backlog"),
        (FakeLimiter(serves=False), False, None),
    ],
)
async def test_admission(limiter: FakeLimiter | None, fresh: bool, expected: str | None) -> None:
    adapter = FakeAdapter()
    adapter.limiter = limiter
    d = dispatcher({"primary": adapter})
    state, event = route_state("primary")
    state.fresh = fresh
    decided = await d.step_admission(at(d, state, event))
    assert (kinds(decided) if decided is not None else None) == ([expected] if expected else None)


async def test_admission_lets_an_open_circuit_fail_fast_instead_of_waiting() -> None:
    adapter = FakeAdapter()
    adapter.limiter = FakeLimiter(paused_for=60)
    d = dispatcher({"primary": adapter})
    d.breakers["primary"].trip(30)
    state, event = route_state("primary")
    assert await d.step_admission(at(d, state, event)) is None


# -- claim ----------------------------------------------------------------------------------


async def test_claim_granted_sets_the_owner() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    here = at(d, state, event)
    claim = await d.step_claim(here)
    assert isinstance(claim, Claim) and claim.granted and here.owner and not here.abandoned


async def test_claim_held_by_a_live_copy_waits_without_an_attempt() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    here = at(d, state, event)
    await d.ledger.claim(here.route_key, lease_owner(), 60)
    decided = await d.step_claim(here)
    assert isinstance(decided, Outcomes) and kinds(decided) == ["backlog"]
    assert state.attempt == 0


async def test_claim_over_a_gone_copy_is_abandoned_and_looked_up_first() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    here = at(d, state, event)
    assert isinstance(d.ledger, MemoryLedger)
    d.ledger.leases[here.route_key] = Lease("another-process/copy", time.time() + 60)
    claim = await d.step_claim(here)
    assert isinstance(claim, Claim) and claim.abandoned and here.abandoned


async def test_claim_after_a_copy_that_finished_looks_again() -> None:
    d = dispatcher({"primary": FakeAdapter()})
    state, event = route_state("primary")
    here = at(d, state, event)
    assert isinstance(d.ledger, MemoryLedger)
    d.ledger.leases[here.route_key] = Lease("finished-copy", 0.0)
    key = idempotency_key(event.eventId, state.chain[0])
    await d.ledger.put(key, LedgerEntry("P-1", None, "primary", "message", time.time()))
    assert await d.step_claim(here) is None


# -- attempt --------------------------------------------------------------------------------


async def test_attempt_delivers_and_notes_history() -> None:
    adapter = FakeAdapter(Delivered("P-1", "https://crm/P-1"))
    d = dispatcher({"primary": adapter})
    state, event = route_state("primary")
    here = at(d, state, event)
    await d.step_claim(here)
    delivered, error = await d.step_attempt(here)
    assert delivered == Delivered("P-1", "https://crm/P-1") and error is None
    assert state.attempt == 1 and [h.error for h in state.history] == [None]
    assert here.context.idempotency_key == idempotency_key(event.eventId, state.chain[0])


async def test_attempt_after_an_abandoned_claim_looks_before_creating() -> None:
    adapter = FakeAdapter(found=Delivered("P-0"))
    d = dispatcher({"primary": adapter})
    state, event = route_state("primary")
    here = at(d, state, event)
    await d.step_claim(here)
    here.abandoned = True
    delivered, error = await d.step_attempt(here)
    assert delivered == Delivered("P-0") and error is None
    assert adapter.lookups == 1 and adapter.creates == []


async def test_attempt_with_an_open_circuit_fails_fast_and_spends_the_budget_when_a_fallback_exists() -> None:
    primary = FakeAdapter()
    d = dispatcher({"primary": primary, "backup": FakeAdapter()})
    d.breakers["primary"].trip(30)
    state, event = route_state("primary", "backup")
    here = at(d, state, event)
    await d.step_claim(here)
    delivered, error = await d.step_attempt(here)
    assert delivered is None and isinstance(error, CircuitOpenError)
    assert state.attempt == d.policy("primary").max_attempts and primary.creates == []


# -- after a failure ------------------------------------------------------------------------


async def failed(d: Dispatcher, state: RouteState, event: ClassifiedMessage) -> tuple[AtTarget, Outcomes | None]:
    here = at(d, state, event)
    await d.step_claim(here)
    delivered, error = await d.step_attempt(here)
    assert delivered is None and error is not None
    return here, await d.step_failed(here, error)


async def test_a_retryable_failure_within_the_budget_is_retried_with_backoff() -> None:
    d = dispatcher({"primary": FakeAdapter(RetryableError("down", code="http_503"))})
    state, event = route_state("primary")
    here, decided = await failed(d, state, event)
    assert kinds(decided) == ["retry"]
    assert decided is not None and decided.retries[0].attempt == 1
    assert cast(MemoryLedger, d.ledger).leases[here.route_key].until == 0.0  # released


async def test_a_spent_quota_parks_without_spending_an_attempt() -> None:
    d = dispatcher({"primary": FakeAdapter(QuotaExhaustedError("daily quota", retry_after=3600))})
    state, event = route_state("primary")
    _, decided = await failed(d, state, event)
    assert kinds(decided) == ["park"]
    assert decided is not None and decided.retries[0].attempt == 0
    assert decided.retries[0].due >= time.time() + 3590


async def test_a_permanent_failure_moves_on_and_keeps_the_first_error() -> None:
    d = dispatcher({"primary": FakeAdapter(PermanentError("bad", code="http_400")), "backup": FakeAdapter()})
    state, event = route_state("primary", "backup")
    _, decided = await failed(d, state, event)
    assert decided is None
    assert state.first_error == ErrorInfo("permanent", "http_400", "bad")


async def test_a_retryable_failure_out_of_budget_looks_for_a_record_a_lost_answer_created() -> None:
    adapter = FakeAdapter(RetryableError("timeout", code="timeout"), found=Delivered("P-late"))
    d = dispatcher({"primary": adapter})
    state, event = route_state("primary")
    state.attempt = d.policy("primary").max_attempts - 1
    _, decided = await failed(d, state, event)
    assert decided is not None and statuses(decided) == [("primary", "succeeded")]
    assert decided.results[0].get("externalId") == "P-late" and len(state.history) == 2


# -- whole passes ---------------------------------------------------------------------------


async def test_a_pass_falls_back_and_reports_the_primary_error() -> None:
    d = dispatcher(
        {"primary": FakeAdapter(PermanentError("bad", code="http_400")), "backup": FakeAdapter(Delivered("B-1"))}
    )
    state, event = route_state("primary", "backup")
    outcomes = await d._advance(state, event)
    assert statuses(outcomes) == [("backup", "fallback")]
    result = outcomes.results[0]
    assert result.get("fallbackFrom") == "primary" and "error" in result and result["error"]["code"] == "http_400"


async def test_a_pass_with_sync_back_schedules_the_primary_again() -> None:
    d = dispatcher(
        {"primary": FakeAdapter(PermanentError("bad", code="http_400")), "backup": FakeAdapter(Delivered("B-1"))}
    )
    state, event = route_state("primary", "backup", sync_back=True)
    outcomes = await d._advance(state, event)
    assert kinds(outcomes) == ["sync_back"]
    back = outcomes.retries[0]
    assert [t.integration_id for t in back.chain] == ["primary"] and back.sync_back_from == "backup"
    assert back.first_error is None and len(back.history) == 2


async def test_a_pass_with_no_target_left_fails_with_a_dead_letter() -> None:
    d = dispatcher(
        {"primary": FakeAdapter(PermanentError("bad", code="http_400")), "backup": FakeAdapter(PermanentError("no"))}
    )
    state, event = route_state("primary", "backup")
    outcomes = await d._advance(state, event)
    assert statuses(outcomes) == [("primary", "failed")]
    [dead] = outcomes.dead_letters
    headers = dict(dead.headers)
    assert headers[Header.ERROR_CODE] == b"http_400" and headers[Header.ATTEMPTS] == b"2"
    assert dead.record.offset == 7 and dead.reason.startswith("permanent http_400")


async def test_a_resumed_retry_continues_where_it_stood() -> None:
    d = dispatcher({"primary": FakeAdapter(Delivered("P-1"))})
    state, event = route_state("primary")
    wire = state.to_retry("retry", time.time())
    wire.attempt = 2
    outcomes = await d.resume(wire, event)
    assert statuses(outcomes) == [("primary", "succeeded")]
    assert [ctx.attempt for ctx in cast(FakeAdapter, d.adapters["primary"]).creates] == [3]


# -- ledger writes around the results ---------------------------------------------------------


class CountingLedger(MemoryLedger):
    """The memory ledger, counting the lookups and holding each ``put`` until ``opened``."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.opened = asyncio.Event()
        self.opened.set()
        self.settled: list[list[str]] = []

    async def find_or_claim(self, keys: Sequence[str], lease: str, owner: str, ttl: float) -> Found | Claim:
        self.lookups += 1
        return await super().find_or_claim(keys, lease, owner, ttl)

    async def put(self, key: str, entry: LedgerEntry) -> None:
        await self.opened.wait()
        await super().put(key, entry)

    async def settle(self, entries: Sequence[tuple[str, LedgerEntry]], leases: Sequence[tuple[str, str]]) -> None:
        self.settled.append([key for key, entry in entries if key in self.entries])
        await super().settle(entries, leases)


async def test_a_pass_handed_on_as_backlog_makes_no_ledger_call() -> None:
    adapter = FakeAdapter(Delivered("P-1", None))
    adapter.limiter = FakeLimiter(serves=False)
    ledger = CountingLedger()
    d = Dispatcher(config("primary"), {"primary": cast(Adapter, adapter)}, ledger)
    event, record = event_and_record()
    outcomes = await d.run(plan_of(event, "primary"), event, record)
    assert kinds(outcomes) == ["backlog"] and ledger.lookups == 0 and ledger.leases == {}


async def test_the_entry_is_written_while_the_result_is_published_and_settled_after_it() -> None:
    ledger = CountingLedger()
    ledger.opened.clear()  # the write is slow: the pass does not wait for it
    d = Dispatcher(config("primary"), {"primary": cast(Adapter, FakeAdapter(Delivered("P-1", None)))}, ledger)
    event, record = event_and_record()
    outcomes = await d.run(plan_of(event, "primary"), event, record)
    assert statuses(outcomes) == [("primary", "succeeded")] and ledger.entries == {}
    confirming = asyncio.ensure_future(d.confirm(outcomes))
    await asyncio.sleep(0.01)
    assert not confirming.done() and ledger.settled == []  # the mark waits for the write
    ledger.opened.set()
    await confirming
    key = idempotency_key(event.eventId, Target("primary", "webhook", "message"))
    assert ledger.settled == [[key]] and ledger.entries[key].published


async def test_a_published_entry_makes_the_claim_moot_a_second_copy_reports_a_duplicate() -> None:
    adapter = FakeAdapter(Delivered("P-1", None))
    d = dispatcher({"primary": adapter})
    event, record = event_and_record()
    await d.confirm(await d.run(plan_of(event, "primary"), event, record))
    again = await d.run(plan_of(event, "primary"), event, record)
    assert statuses(again) == [("primary", "duplicate")] and len(adapter.creates) == 1


async def test_a_settle_nobody_waits_for_logs_its_failure(tmp_path: Path) -> None:
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    d = Dispatcher(config("primary"), {"primary": cast(Adapter, FakeAdapter(Delivered("P-1", None)))}, ledger)
    event, record = event_and_record()
    outcomes = await d.run(plan_of(event, "primary"), event, record)
    await asyncio.gather(*outcomes.writing)
    # not an outage (those are retried): the settle fails for good
    ledger._db.execute("CREATE TRIGGER refuse BEFORE UPDATE ON deliveries BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with capture_logs() as logs:
        await d.confirm(outcomes)  # does not raise, does not wait
        await asyncio.sleep(0.01)
        await d.confirm(Outcomes())  # the next confirm looks at it
    await ledger.close()
    assert [entry["event"] for entry in logs] == ["ledger settle failed: deliveries may be reported again"]


def plan_of(event: ClassifiedMessage, *ids: str) -> Plan:
    return Plan("primary_backup", (Route(tuple(Target(i, "webhook", "message") for i in ids)),), ())
