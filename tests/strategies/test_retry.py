"""Retry policy: exponential backoff with a cap and jitter; the vendor's requested delay wins."""

from __future__ import annotations

import random

import pytest

from octopus_crm.strategies.retry import RetryPolicy


def test_exponential_growth_without_jitter() -> None:
    policy = RetryPolicy(initialDelay=1.0, multiplier=2.0, maxDelay=300, jitter=0)
    assert [policy.delay(a) for a in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def test_seed_guide_backoff_is_the_default_shape() -> None:
    # The guide's retryIntegration waits 1000 * 2^i ms between its attempts.
    policy = RetryPolicy(jitter=0)
    assert [policy.delay(a) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_delay_is_capped() -> None:
    policy = RetryPolicy(initialDelay=5, multiplier=3, maxDelay=60, jitter=0)
    assert [policy.delay(a) for a in range(1, 6)] == [5.0, 15.0, 45.0, 60.0, 60.0]
    assert policy.delay(1000) == 60.0  # no overflow for a huge attempt count


def test_jitter_stays_within_bounds_and_spreads() -> None:
    policy = RetryPolicy(initialDelay=10, multiplier=2, maxDelay=100, jitter=0.2)
    rng = random.Random(1)
    samples = [policy.delay(2, rng=rng) for _ in range(2000)]
    assert all(16.0 <= s <= 24.0 for s in samples)
    assert max(samples) - min(samples) > 6.0  # actually spread, not a constant
    capped = [policy.delay(10, rng=rng) for _ in range(200)]
    assert all(80.0 <= s <= 120.0 for s in capped)


def test_requested_delay_overrides_the_policy() -> None:
    policy = RetryPolicy(initialDelay=1, maxDelay=5, jitter=0.5)
    assert policy.delay(1, requested=42.0) == 42.0  # Retry-After beyond the cap is honoured
    assert policy.delay(3, requested=0.0) == 0.0
    assert policy.delay(1, requested=-3.0) == 0.0


def test_exhausted_after_max_attempts() -> None:
    policy = RetryPolicy(maxAttempts=3)
    assert [policy.exhausted(a) for a in (1, 2, 3, 4)] == [False, False, True, True]
    assert RetryPolicy(maxAttempts=1).exhausted(1)


def test_policy_values_are_validated() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(maxAttempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)
    assert RetryPolicy.model_validate({"maxAttempts": 7, "initialDelay": 0.5}).max_attempts == 7
