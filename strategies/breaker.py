"""Per-integration circuit breaker: closed → open after repeated failures → half-open probe.

Only retryable failures (timeouts, 5xx, connection errors) count; a vendor rejecting one bad
record says nothing about the vendor's health. While open, deliveries fail fast and the primary/
backup strategy goes straight to the backup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from octopus_crm.core.policies import BreakerPolicy

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker"]


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self.opened_elsewhere = False  # the last opening came from another replica (see trip)

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.policy.open_seconds:
            self._set(BreakerState.HALF_OPEN)
            self._probes = 0
        return self._state

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.policy.open_seconds - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.policy.half_open_probes:
            self._probes += 1
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        state = self.state
        self._failures += 1
        if state is BreakerState.HALF_OPEN or self._failures >= self.policy.failure_threshold:
            self._opened_at = self._clock()
            self.opened_elsewhere = False
            self._set(BreakerState.OPEN)

    def trip(self, seconds: float) -> None:
        """Open for ``seconds`` from now: another replica opened this circuit (fleet-wide state)."""
        self._opened_at = self._clock() - (self.policy.open_seconds - seconds)
        self.opened_elsewhere = True
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
