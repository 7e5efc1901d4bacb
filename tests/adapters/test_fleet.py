"""Fleet-wide limits on a real Redis: one schedule, one pause and one circuit for every replica.

The shared Redis at 127.0.0.1:6379 (a fresh key prefix per test) serves the sharing tests; the
failover tests start their own ``redis-server`` on a free port and kill it (the shared one is
never touched). Assertions bound elapsed time from below only (a loaded machine makes pacing
slower, never faster), with generous polling elsewhere.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from octopus_crm.adapters.base import IntegrationConfig
from octopus_crm.adapters.fleet import FleetStore, scope_of_secret
from octopus_crm.adapters.ratelimit import Limiter, RateLimit
from octopus_crm.adapters.webhook import WebhookAdapter
from octopus_crm.daemon import metrics
from octopus_crm.daemon.dispatch import _breaker
from octopus_crm.daemon.fleet import FleetSync
from octopus_crm.daemon.settings import Settings
from octopus_crm.strategies.breaker import BreakerPolicy, BreakerState
from octopus_crm_sandbox.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def _prefix() -> str:
    return f"test-fleet:{uuid.uuid4().hex}:"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[FleetStore]:
    fleet = FleetStore(redis_url, expected_replicas=3, prefix=_prefix(), timeout=1.0)
    yield fleet
    await fleet.close()


async def _pace_all(limiters: list[Limiter], each: int) -> float:
    """Seconds for every limiter to take ``each`` turns, all at once."""

    async def take(limiter: Limiter) -> None:
        for _ in range(each):
            await limiter.pace()

    started = time.monotonic()
    await asyncio.gather(*(take(limiter) for limiter in limiters))
    return time.monotonic() - started


async def test_limiters_of_one_scope_share_one_schedule(redis_url: str) -> None:
    """Three replicas' limiters for one integration together keep to the one limit."""
    limit = RateLimit(requests=20, perSeconds=1, headroom=1.0)
    prefix = _prefix()
    stores = [FleetStore(redis_url, expected_replicas=3, prefix=prefix, timeout=1.0) for _ in range(3)]
    try:
        shared = [s.limiter(limit, "crm") for s in stores]
        elapsed = await _pace_all(list(shared), each=10)  # 30 turns at 20/s: ≥ 29 intervals
        assert elapsed >= 29 / 20 * 0.95
        assert all(s.available for s in stores)
        # the same limits, each process on its own, would let 3 × 20/s through: 10 turns in ~0.5 s
        local_elapsed = await _pace_all([Limiter(limit) for _ in range(3)], each=10)
        assert local_elapsed < elapsed
    finally:
        for s in stores:
            await s.close()


async def test_scopes_are_independent(store: FleetStore) -> None:
    limit = RateLimit(requests=1, perSeconds=1, headroom=1.0)
    a, b = store.limiter(limit, "account-a"), store.limiter(limit, "account-b")
    elapsed = await _pace_all([a, b], each=1)  # one turn each, in two scopes: no wait
    assert elapsed < 0.9


async def test_tokens_show_the_fleet_view(store: FleetStore) -> None:
    limit = RateLimit(requests=10, perSeconds=1, burst=5, headroom=1.0)
    writer, reader = store.limiter(limit, "crm"), store.limiter(limit, "crm")
    await reader.refresh()
    assert reader.tokens == pytest.approx(5, abs=0.2)
    for _ in range(3):
        await writer.pace()
    await reader.refresh()
    assert reader.tokens is not None and reader.tokens < 3
    assert Limiter(limit).tokens is None  # a local limiter has no fleet view


async def test_retry_after_learned_by_one_pauses_the_others(store: FleetStore) -> None:
    limit = RateLimit(requests=100, perSeconds=1)
    learner, other = store.limiter(limit, "crm"), store.limiter(limit, "crm")
    learner.slow_down(2.0)  # the 429's Retry-After, seen by one replica
    assert learner.paused_for > 1.5

    async def known() -> bool:
        await other.refresh()
        return other.paused_for > 0

    await _eventually(known, "the pause reaches the other limiter")
    started = time.monotonic()
    await other.pace()
    assert time.monotonic() - started >= 1.0  # it waited out (most of) the shared pause


async def test_turns_already_queued_wait_out_a_pause_learned_elsewhere(store: FleetStore) -> None:
    """Requests queued for later turns of the schedule do not go during another replica's pause."""
    limit = RateLimit(requests=4, perSeconds=1, headroom=1.0)
    learner, queued = store.limiter(limit, "crm"), store.limiter(limit, "crm")
    await queued.pace()  # the first turn: now
    done: list[float] = []

    async def take() -> None:
        await queued.pace()
        done.append(time.monotonic())

    takers = [asyncio.create_task(take()) for _ in range(3)]  # turns at +0.25, +0.5, +0.75 s
    await asyncio.sleep(0.05)
    paused_at = time.monotonic()
    learner.slow_down(2.0)
    await asyncio.gather(*takers)
    assert all(t - paused_at >= 1.5 for t in done), [round(t - paused_at, 2) for t in done]


async def test_a_longer_pause_is_not_shortened(store: FleetStore) -> None:
    await store.pause("crm", 30)
    await store.pause("crm", 1)
    answer = await store.schedule("crm", RateLimit(requests=1), reserve=False)
    assert answer is not None and answer[1] > 20


async def test_circuit_opened_by_one_replica_opens_the_others(redis_url: str) -> None:
    prefix = _prefix()
    a_store = FleetStore(redis_url, prefix=prefix, timeout=1.0)
    b_store = FleetStore(redis_url, prefix=prefix, timeout=1.0)
    try:
        policy = BreakerPolicy(failureThreshold=1, openSeconds=30)
        a, b = _breaker("crm", policy, a_store), _breaker("crm", policy, b_store)
        a.failure()
        assert a.state is BreakerState.OPEN

        async def written() -> bool:
            return bool(await a_store.circuit_open_for("crm"))

        await _eventually(written, "the open circuit is written")
        await FleetSync({}, {"crm": b}, b_store).tick()
        await FleetSync({}, {"crm": b}, b_store)._follow("crm", b)
        assert b.state is BreakerState.OPEN
        assert 20 < b.retry_in <= 30
        assert not b.allow()
        # b following a's circuit does not push its end further out
        left = await b_store.circuit_open_for("crm")
        assert left is not None and left <= 30
        a.trip(0.0)
        assert a.state is BreakerState.HALF_OPEN
        assert a.allow()
        a.success()  # the probe succeeded: the fleet's circuit is cleared

        async def cleared() -> bool:
            return await a_store.circuit_open_for("crm") == 0

        await _eventually(cleared, "the circuit is cleared")
    finally:
        await a_store.close()
        await b_store.close()


async def test_metrics_show_the_fleet_view(store: FleetStore) -> None:
    """Each pod's /metrics shows the fleet's tokens and pause, learned without sending anything."""
    config = IntegrationConfig.model_validate(
        {
            "endpoints": {"url": "http://127.0.0.1:9/hook", "allowPrivateNetwork": True},
            "rateLimit": {"requests": 10, "burst": 4},
        }
    )
    adapter = WebhookAdapter("fleet-metrics", config)
    adapter.fleet = store
    await adapter.start()
    try:
        await store.pause("fleet-metrics", 20)  # written by another replica
        await FleetSync({"fleet-metrics": adapter}, {}, store).tick()
        parked = metrics.PARKED_UNTIL.labels("fleet-metrics")._value.get()
        assert parked > time.time() + 15
        assert metrics.RATE_LIMIT_TOKENS.labels("fleet-metrics")._value.get() == pytest.approx(4, abs=0.2)
        assert metrics.FLEET_SHARED._value.get() == 1
        assert adapter.current_limiter() is not None and adapter.current_limiter().paused_for > 15  # type: ignore[union-attr]
    finally:
        await adapter.aclose()


def test_scope_never_holds_the_secret() -> None:
    scope = scope_of_secret("hubspot", "pat-na1-secret-token")
    assert "secret" not in scope and scope.startswith("hubspot:")
    assert scope == scope_of_secret("hubspot", "pat-na1-secret-token")


def test_vendor_scopes_follow_the_account_not_the_integration() -> None:
    """Two HubSpot integrations on one account share one schedule; Slack goes by workspace token."""
    from octopus_crm.adapters.hubspot import HubSpotAdapter
    from octopus_crm.adapters.slack import SlackAdapter

    mappings = {"contact": {"email": "{{senderEmail}}"}}
    same = IntegrationConfig.model_validate({"credentials": {"accessToken": "pat-na1-x"}, "mappings": mappings})
    other = IntegrationConfig.model_validate({"credentials": {"accessToken": "pat-na1-y"}, "mappings": mappings})
    portal = IntegrationConfig.model_validate(
        {"credentials": {"accessToken": "pat-na1-x"}, "endpoints": {"portalId": "123"}, "mappings": mappings}
    )
    assert HubSpotAdapter("a", same).limit_scope == HubSpotAdapter("b", same).limit_scope
    assert HubSpotAdapter("a", same).limit_scope != HubSpotAdapter("c", other).limit_scope
    assert HubSpotAdapter("d", portal).limit_scope == "hubspot:portal:123"
    slack = IntegrationConfig.model_validate(
        {"credentials": {"token": "xoxb-1"}, "mappings": {"message": {"channel": "C1", "text": "hi"}}}
    )
    scope = SlackAdapter("s", slack).limit_scope
    assert scope.startswith("slack:chat.postMessage:") and "xoxb" not in scope
    assert WebhookAdapter("w", IntegrationConfig.model_validate({"endpoints": {"url": "http://x/"}})).limit_scope == "w"


def test_fleet_url_defaults_to_a_redis_ledger() -> None:
    assert Settings(ledger_url="redis://r:6379/0").fleet_url() == "redis://r:6379/0"
    assert Settings(ledger_url="sqlite:///x.sqlite3").fleet_url() is None
    assert Settings(ledger_url="redis://r/0", fleet_redis_url="off").fleet_url() is None
    assert Settings(fleet_redis_url="redis://other/1").fleet_url() == "redis://other/1"


# -- Redis goes away ----------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the failover tests start and kill their own")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_falls_back_to_limit_over_expected_replicas_and_back(own_redis: RedisServer) -> None:
    fleet = FleetStore(own_redis.url, expected_replicas=2, prefix=_prefix(), timeout=0.25, retry_every=0.5)
    limiter = fleet.limiter(RateLimit(requests=10, perSeconds=1, headroom=1.0), "crm")
    try:
        with structlog.testing.capture_logs() as logs:
            await limiter.pace()
            assert fleet.available
            own_redis.kill()
            started = time.monotonic()
            await limiter.pace()  # the call that finds Redis gone still gets its turn, quickly
            assert time.monotonic() - started < 3.0
            assert not fleet.available
            assert limiter.tokens is None
            elapsed = await _pace_all([limiter], each=6)  # 10/s over 2 replicas: 5/s, never unlimited
            assert elapsed >= 5 / 5 * 0.9
            assert not fleet.available
            own_redis.start()

            async def back() -> bool:
                await limiter.pace()
                return fleet.available

            await _eventually(back, "the limiter goes back to the fleet schedule")
        events = [entry["event"] for entry in logs]
        assert sum("unreachable" in e for e in events) == 1  # logged once per transition
        assert sum("reachable again" in e for e in events) == 1
    finally:
        await fleet.close()


async def test_a_connection_from_before_a_restart_is_not_an_outage(own_redis: RedisServer) -> None:
    fleet = FleetStore(own_redis.url, prefix=_prefix(), timeout=0.25)
    limiter = fleet.limiter(RateLimit(requests=100, perSeconds=1), "crm")
    try:
        await limiter.pace()
        own_redis.kill()
        own_redis.start()  # back before this replica called again: its pooled connection is dead
        await limiter.pace()
        assert fleet.available
    finally:
        await fleet.close()


async def test_pause_holds_locally_while_redis_is_down(own_redis: RedisServer) -> None:
    fleet = FleetStore(own_redis.url, prefix=_prefix(), timeout=0.25)
    limiter = fleet.limiter(RateLimit(requests=100, perSeconds=1), "crm")
    try:
        own_redis.kill()
        limiter.slow_down(1.5)
        started = time.monotonic()
        await limiter.pace()
        assert time.monotonic() - started >= 1.0
    finally:
        await fleet.close()


# -- several processes ------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import asyncio, sys, time
    from octopus_crm.adapters.fleet import FleetStore
    from octopus_crm.adapters.ratelimit import RateLimit

    async def main(url: str, prefix: str, count: int) -> None:
        fleet = FleetStore(url, expected_replicas=3, prefix=prefix, timeout=1.0)
        limiter = fleet.limiter(RateLimit(requests=20, perSeconds=1, headroom=1.0), "crm")
        stamps = []
        for _ in range(count):
            await limiter.pace()
            stamps.append(time.time())
        print(" ".join(repr(s) for s in stamps), "shared" if fleet.available else "local", flush=True)
        await fleet.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_processes_share_one_schedule(redis_url: str) -> None:
    prefix = _prefix()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, redis_url, prefix, "10", cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [(await asyncio.wait_for(p.communicate(), 120))[0].decode().split() for p in procs]
    assert all(out[-1] == "shared" for out in outputs)
    stamps = sorted(float(s) for out in outputs for s in out[:-1])
    assert len(stamps) == 30
    # 30 turns at 20/s fleet-wide: no second holds more than 20 (+1 for the window's edges)
    for start in stamps:
        assert sum(1 for s in stamps if start <= s < start + 1.0) <= 21


async def _eventually(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}")
