"""What ``/healthz`` and ``/readyz`` report, and the rules that turn it into an answer.

aiokafka retries fetches, heartbeats and commits internally and keeps quiet about it, so the
consumer never learns that the broker is gone. Whether the broker answers therefore comes from a
request of our own (:class:`daemon.broker_probe.BrokerProbe`), and a stalled consumer is only
reported while the broker answers: an outage makes the pod unready, never restarts it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["LAG_INTERVAL_S", "Health"]

LAG_INTERVAL_S = 5.0  # how often the consumer samples its lag from the broker


@dataclass
class Health:
    stall_timeout: float = 300.0
    broker_timeout: float = 15.0
    connected: bool = False
    joined: bool = False
    assigned: int = 0
    running: bool = False
    crashed: str | None = None
    last_progress: float = field(default_factory=time.monotonic)
    lag: int = 0
    lag_sampled_at: float | None = None
    broker_answered_at: float | None = None
    reachable_since: float | None = None
    last_error: str | None = None
    watch_lag: bool = True  # the retry topic's lag is waiting work by design, not a stall

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def broker_answered(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.broker_reachable(now):
            self.reachable_since = now  # the stall clock starts again when the broker comes back
        self.broker_answered_at = now
        self.connected = True
        self.last_error = None

    def broker_reachable(self, now: float | None = None) -> bool:
        if self.broker_answered_at is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.broker_answered_at <= self.broker_timeout

    def lag_sampled(self, lag: int, now: float | None = None) -> None:
        self.lag = lag
        self.lag_sampled_at = time.monotonic() if now is None else now

    def alive(self) -> tuple[bool, str]:
        if self.crashed:
            return False, f"consumer loop crashed: {self.crashed}"
        if not (self.watch_lag and self.running and self.lag > 0):
            return True, "ok"
        now = time.monotonic()
        if not self.broker_reachable(now):
            return True, "ok (broker unreachable: waiting for it, not stuck)"
        if self.lag_sampled_at is None or now - self.lag_sampled_at > self.broker_timeout + 2 * LAG_INTERVAL_S:
            return True, "ok (lag not measured recently)"
        stalled_since = max(self.last_progress, self.reachable_since or 0.0)
        # evidence: the broker answered, and lag was still above zero, a full STALL_TIMEOUT_S into the stall
        seen_stuck_at = min(self.broker_answered_at or 0.0, self.lag_sampled_at)
        if seen_stuck_at - stalled_since > self.stall_timeout:
            return False, (
                f"stuck: no progress for {now - stalled_since:.0f}s while the broker answers and lag is {self.lag}"
            )
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.connected:
            return False, f"broker not connected{f': {self.last_error}' if self.last_error else ''}"
        now = time.monotonic()
        if not self.broker_reachable(now):
            silent = f" for {now - self.broker_answered_at:.0f}s" if self.broker_answered_at is not None else ""
            error = f" ({self.last_error})" if self.last_error else ""
            return False, f"broker unreachable: no answer{silent}{error}"
        if not self.joined:
            return False, "not yet a member of the consumer group"
        return True, f"{self.assigned} partitions assigned"
