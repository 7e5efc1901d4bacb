"""Circuit breaker: closed → open after repeated failures → half-open probe → closed or open."""

from __future__ import annotations

from octopus_crm.strategies.breaker import BreakerPolicy, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    threshold: int = 3, open_seconds: float = 30.0, probes: int = 1
) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock = Clock()
    changes: list[BreakerState] = []
    policy = BreakerPolicy(failureThreshold=threshold, openSeconds=open_seconds, halfOpenProbes=probes)
    return CircuitBreaker(policy, clock=clock, on_change=changes.append), clock, changes


def test_opens_after_threshold_consecutive_failures() -> None:
    cb, _, changes = breaker(threshold=3)
    for _ in range(2):
        assert cb.allow()
        cb.failure()
    assert cb.state is BreakerState.CLOSED
    cb.failure()
    assert cb.state is BreakerState.OPEN
    assert not cb.allow()
    assert changes == [BreakerState.OPEN]


def test_a_success_resets_the_failure_count() -> None:
    cb, _, changes = breaker(threshold=3)
    cb.failure()
    cb.failure()
    cb.success()
    cb.failure()
    cb.failure()
    assert cb.state is BreakerState.CLOSED
    assert changes == []


def test_open_becomes_half_open_after_open_seconds() -> None:
    cb, clock, changes = breaker(threshold=1, open_seconds=30)
    cb.failure()
    clock.now += 29.9
    assert not cb.allow()
    assert 0 < cb.retry_in <= 0.1 + 1e-9
    clock.now += 0.1
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.retry_in == 0.0
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN]


def test_half_open_lets_only_the_probes_through_and_success_closes() -> None:
    cb, clock, changes = breaker(threshold=1, open_seconds=5, probes=2)
    cb.failure()
    clock.now += 5
    assert [cb.allow() for _ in range(4)] == [True, True, False, False]
    cb.success()
    assert cb.state is BreakerState.CLOSED
    assert all(cb.allow() for _ in range(10))
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_probe_failure_reopens_for_a_full_period() -> None:
    cb, clock, changes = breaker(threshold=5, open_seconds=10)
    for _ in range(5):
        cb.failure()
    clock.now += 10
    assert cb.allow()  # the probe
    cb.failure()  # one failure in half-open is enough, whatever the threshold
    assert cb.state is BreakerState.OPEN
    assert cb.retry_in == 10.0
    clock.now += 9
    assert not cb.allow()
    clock.now += 1
    assert cb.allow()
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
    ]


def test_default_policy() -> None:
    cb = CircuitBreaker()
    for _ in range(4):
        cb.failure()
    assert cb.allow()
    cb.failure()
    assert not cb.allow()


def test_trip_opens_for_the_time_another_replica_gave() -> None:
    cb, clock, changes = breaker(open_seconds=30.0)
    cb.trip(12.0)
    assert cb.state is BreakerState.OPEN and cb.opened_elsewhere
    assert cb.retry_in == 12.0
    assert changes == [BreakerState.OPEN]
    clock.now += 12.0
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.allow()
    cb.failure()  # its own probe failed: this opening is its own
    assert cb.state is BreakerState.OPEN and not cb.opened_elsewhere
