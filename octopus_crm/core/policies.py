"""Policies as value objects: a vendor's rate limit, the retry backoff, the circuit breaker.

They are part of the configuration schema (``rateLimit``, ``retry``, ``circuitBreaker``); the
machinery that applies them (the limiter, the breaker) lives with its users.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BreakerPolicy", "RateLimit", "RetryPolicy"]


class RateLimit(BaseModel):
    """``requests`` per ``perSeconds``, at most ``concurrency`` in flight."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    requests: float = Field(gt=0)
    per_seconds: float = Field(default=1.0, gt=0, alias="perSeconds")
    burst: int = Field(default=1, ge=1)
    concurrency: int = Field(default=32, ge=1)
    headroom: float = Field(default=0.97, gt=0, le=1)

    @property
    def rate(self) -> float:
        return self.requests / self.per_seconds * self.headroom


class RetryPolicy(BaseModel):
    """Initial delay, multiplier, cap, attempts, jitter; the vendor's requested delay overrides
    the computed backoff."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    max_attempts: int = Field(default=5, ge=1, alias="maxAttempts")
    initial_delay: float = Field(default=1.0, ge=0, alias="initialDelay")
    multiplier: float = Field(default=2.0, ge=1)
    max_delay: float = Field(default=300.0, ge=0, alias="maxDelay")
    jitter: float = Field(default=0.2, ge=0, le=1, description="± fraction of the delay")
    park_after: float = Field(
        default=900.0,
        alias="parkAfter",
        description="A requested delay longer than this parks the integration instead of retrying.",
    )
    handoff_budget: float = Field(
        default=1.0,
        ge=0,
        alias="handoffBudget",
        description="A fresh delivery the integration cannot start within this many seconds (its pace, "
        "a pause, busy slots) goes to the retry topic instead of holding back its event's other targets.",
    )

    def delay(self, attempt: int, requested: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if requested is not None:
            return max(0.0, requested)
        try:
            grown = self.initial_delay * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # a very high attempt count: the cap applies
            grown = self.max_delay
        base = min(self.max_delay, grown)
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


class BreakerPolicy(BaseModel):
    """Open after ``failureThreshold`` retryable failures, for ``openSeconds``, then probe."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    failure_threshold: int = Field(default=5, ge=1, alias="failureThreshold")
    open_seconds: float = Field(default=30.0, gt=0, alias="openSeconds")
    half_open_probes: int = Field(default=1, ge=1, alias="halfOpenProbes")
