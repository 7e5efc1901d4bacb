"""Kit additions to the VendorSpec engine: a 429's wait from a Unix-time reset header or a
vendor default, a list lookup filtered by a marker, and the dedupe marker itself."""

from __future__ import annotations

import time

from octopus_crm.adapters.http import Response
from octopus_crm.adapters.spec import Errors, dedupe_marker
from octopus_crm.core.errors import RateLimitedError


def too_many(**headers: str) -> Response:
    return Response(429, headers, b'{"err":"Rate limit reached"}')


def test_a_unix_reset_header_gives_the_wait() -> None:
    errors = Errors(reset_at_headers=("X-RateLimit-Reset",), default_retry_after=30.0)
    error = errors.classify(too_many(**{"X-RateLimit-Reset": str(int(time.time()) + 20)}))
    assert isinstance(error, RateLimitedError) and error.retry_after is not None and 18 <= error.retry_after <= 20


def test_retry_after_wins_and_the_default_fills_in() -> None:
    errors = Errors(reset_at_headers=("X-RateLimit-Reset",), default_retry_after=30.0)
    told = errors.classify(too_many(**{"Retry-After": "2", "X-RateLimit-Reset": str(int(time.time()) + 50)}))
    assert told is not None and told.retry_after == 2.0
    silent = errors.classify(too_many())
    assert silent is not None and silent.retry_after == 30.0
    garbled = errors.classify(too_many(**{"X-RateLimit-Reset": "soon"}))
    assert garbled is not None and garbled.retry_after == 30.0
    assert Errors().classify(too_many()).retry_after is None  # type: ignore[union-attr]


def test_a_non_429_gets_no_wait() -> None:
    error = Errors(default_retry_after=30.0).classify(Response(400, {}, b"bad"))
    assert error is not None and error.retry_after is None


def test_the_dedupe_marker_is_stable_short_and_without_spaces() -> None:
    marker = dedupe_marker("evt-1:conf:card")
    assert marker == dedupe_marker("evt-1:conf:card") != dedupe_marker("evt-2:conf:card")
    assert marker.startswith("octopus-") and len(marker) == 24 and " " not in marker
