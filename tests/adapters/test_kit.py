"""The adapter kit: token cache, limiter, HTTP engine and body codes, over loopback HTTP."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from octopus_crm.adapters.auth import Token, TokenAuth
from octopus_crm.adapters.base import BodyCodes
from octopus_crm.adapters.http import (
    HttpClient,
    Request,
    Response,
    Timeouts,
    classify_status,
    parse_retry_after,
)
from octopus_crm.adapters.ratelimit import Limiter, RateLimit
from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    AuthError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm_sandbox.kit import FakeVendor, Fault, SandboxServer

# -- a tiny vendor: POST /token issues a bearer token, POST /records needs one ----------------


class RecordsFake(FakeVendor):
    name = "records"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/token", self.token), web.post("/records", self.create)]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/records",)

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response({"access_token": self.issue_token(), "expires_in": 7200})

    async def create(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not self.token_valid(auth.removeprefix("Bearer ")):
            return web.json_response({"error": "invalid_token"}, status=401)
        record_id = self.new_id("rec-")
        self.records[record_id] = await request.json()
        return web.json_response({"id": record_id}, status=201)


@pytest.fixture
async def fake() -> AsyncIterator[RecordsFake]:
    vendor = RecordsFake()
    async with SandboxServer(vendor):
        yield vendor


async def fetch_from(http: HttpClient) -> Token:
    response = await http.raw(Request("POST", "/token", authenticated=False))
    body = response.json()
    return Token(body["access_token"], time.monotonic() + body["expires_in"])


def record_posts(fake: RecordsFake) -> int:
    return sum(1 for r in fake.requests if r.path == "/records")


# -- TokenAuth -------------------------------------------------------------------------------


async def test_cold_cache_under_100_concurrent_requests_fetches_once() -> None:
    fetches = 0

    async def fetch(http: HttpClient) -> Token:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.02)
        return Token(f"tok-{fetches}", time.monotonic() + 3600)

    auth = TokenAuth(fetch)
    http = HttpClient(name="t")
    requests = [Request("POST", "/x") for _ in range(100)]
    used = await asyncio.gather(*(auth.apply(r, http) for r in requests))
    assert fetches == 1
    assert set(used) == {"tok-1"}
    assert {r.headers["Authorization"] for r in requests} == {"Bearer tok-1"}


async def test_failed_fetch_reaches_every_waiter_and_the_next_call_fetches_again() -> None:
    calls = 0

    async def fetch(http: HttpClient) -> Token:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise AuthError("bad secret", code="token_rejected")
        return Token("tok-ok")

    auth = TokenAuth(fetch)
    http = HttpClient(name="t")
    results = await asyncio.gather(*(auth.apply(Request("GET", "/"), http) for _ in range(10)), return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, AuthError) for r in results)
    assert await auth.apply(Request("GET", "/"), http) == "tok-ok"


async def test_invalidating_a_stale_token_keeps_the_newer_one() -> None:
    issued = iter(["tok-1", "tok-2", "tok-3"])

    async def fetch(http: HttpClient) -> Token:
        return Token(next(issued))

    auth = TokenAuth(fetch)
    http = HttpClient(name="t")
    first = await auth.apply(Request("GET", "/"), http)  # request A used tok-1 ...
    await auth.invalidate(first)  # ... request B saw a 401 first and refreshed
    second = await auth.apply(Request("GET", "/"), http)
    assert (first, second) == ("tok-1", "tok-2")
    await auth.invalidate(first)  # A's late 401 must not throw tok-2 away
    assert auth.token is not None and auth.token.value == "tok-2"
    assert await auth.apply(Request("GET", "/"), http) == "tok-2"
    assert auth.fetches == 2


async def test_token_inside_the_refresh_margin_is_refetched() -> None:
    ttls = iter([4.0, 3600.0])
    fetched: list[str] = []

    async def fetch(http: HttpClient) -> Token:
        value = f"tok-{len(fetched) + 1}"
        fetched.append(value)
        return Token(value, time.monotonic() + next(ttls))

    auth = TokenAuth(fetch, refresh_margin=5.0)
    http = HttpClient(name="t")
    assert await auth.apply(Request("GET", "/"), http) == "tok-1"
    # tok-1 expires in 4 s, inside the 5 s margin: the next request refreshes before using it.
    assert await auth.apply(Request("GET", "/"), http) == "tok-2"
    assert await auth.apply(Request("GET", "/"), http) == "tok-2"
    assert fetched == ["tok-1", "tok-2"]


# -- Limiter ---------------------------------------------------------------------------------


async def test_limiter_paces_evenly_with_burst_one() -> None:
    limiter = Limiter(RateLimit(requests=100, burst=1, headroom=1.0))
    started = time.monotonic()
    for _ in range(21):
        async with limiter:
            pass
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 0.45  # 20 intervals of 10 ms; the first request goes at once


async def test_limiter_headroom_paces_below_the_documented_rate() -> None:
    limiter = Limiter(RateLimit(requests=100, burst=1, headroom=0.5))
    started = time.monotonic()
    for _ in range(11):
        async with limiter:
            pass
    assert time.monotonic() - started >= 0.18  # 10 intervals at 50/s


async def test_slow_down_holds_requests() -> None:
    limiter = Limiter(RateLimit(requests=1000))
    limiter.slow_down(0.2)
    limiter.slow_down(0.05)  # a shorter pause never shortens a longer one
    assert 0.15 < limiter.paused_for <= 0.2
    started = time.monotonic()
    async with limiter:
        pass
    assert time.monotonic() - started >= 0.19
    assert limiter.paused_for == 0


async def test_limiter_bounds_concurrency() -> None:
    limiter = Limiter(RateLimit(requests=10_000, concurrency=3))
    active = peak = 0

    async def one() -> None:
        nonlocal active, peak
        async with limiter:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(one() for _ in range(12)))
    assert peak == 3


# -- classify_status and Retry-After ---------------------------------------------------------


def resp(status: int, body: bytes = b"", **headers: str) -> Response:
    return Response(status, headers, body)


@pytest.mark.parametrize(
    ("status", "kind", "retriable", "error_class"),
    [
        (401, TokenExpiredError, True, "auth"),
        (403, AuthError, False, "auth"),
        (404, PermanentError, False, "permanent"),
        (408, RetryableError, True, "retryable"),
        (429, RateLimitedError, True, "retryable"),
        (500, RetryableError, True, "retryable"),
        (503, RetryableError, True, "retryable"),
    ],
)
def test_classify_status(status: int, kind: type, retriable: bool, error_class: str) -> None:
    error = classify_status(resp(status, b'{"message": "the record was rejected by the vendor"}'))
    assert type(error) is kind
    assert error is not None
    assert (error.retriable, error.error_class, error.code, error.status) == (
        retriable,
        error_class,
        f"http_{status}",
        status,
    )
    assert "rejected by the vendor" in error.message


@pytest.mark.parametrize("status", [200, 201, 204])
def test_classify_status_success(status: int) -> None:
    assert classify_status(resp(status)) is None


def test_classify_status_carries_retry_after() -> None:
    error = classify_status(resp(429, **{"Retry-After": "7"}))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 7.0
    assert error.message == "HTTP 429"


def test_parse_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (parse_retry_after(future) or 0) <= 31
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0


# -- HttpClient over real HTTP ---------------------------------------------------------------


async def test_expired_token_is_refreshed_once_and_the_request_retried(fake: RecordsFake) -> None:
    http = HttpClient(name="records", base_url=fake.base_url, allow_private_network=True, auth=TokenAuth(fetch_from))
    try:
        first = await http.send(Request("POST", "/records", json={"n": 1}))
        assert first.status == 201
        fake.expire_tokens()  # the vendor rotated its tokens
        second = await http.send(Request("POST", "/records", json={"n": 2}))
        assert second.status == 201
    finally:
        await http.aclose()
    assert fake.token_requests == 2
    assert record_posts(fake) == 3  # 201, 401, 201
    assert sorted(r["n"] for r in fake.records.values()) == [1, 2]


async def test_still_401_after_refresh_is_an_auth_error(fake: RecordsFake) -> None:
    auth = TokenAuth(fetch_from)
    http = HttpClient(name="records", base_url=fake.base_url, allow_private_network=True, auth=auth)
    fake.inject(
        Fault(401, {"error": "invalid_token"}, path_contains="/records"),
        Fault(401, {"error": "invalid_token"}, path_contains="/records"),
    )
    try:
        with pytest.raises(AuthError) as info:
            await http.send(Request("POST", "/records", json={"n": 1}))
    finally:
        await http.aclose()
    assert type(info.value) is AuthError
    assert not info.value.retriable
    assert info.value.status == 401
    assert fake.token_requests == 2
    assert record_posts(fake) == 2
    assert fake.records == {}


class CookieFake(FakeVendor):
    """Answers every POST with a session cookie, as vendors behind a CDN or a load balancer do."""

    name = "cookies"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/records", self.create)]

    async def create(self, request: web.Request) -> web.Response:
        response = web.json_response({"id": self.new_id("rec-")}, status=201)
        response.set_cookie("session", "from-the-vendor", path="/")
        return response


async def test_a_cookie_the_vendor_set_is_never_sent_back() -> None:
    """No cookie jar: one answer's cookie never rides along on the integration's later requests."""
    vendor = CookieFake()
    async with SandboxServer(vendor):
        # A host name, not an IP literal: aiohttp's jar ignores cookies from IP addresses anyway.
        base_url = vendor.base_url.replace("127.0.0.1", "localhost")
        http = HttpClient(name="cookies", base_url=base_url, allow_private_network=True)
        try:
            for n in range(3):
                answer = await http.send(Request("POST", "/records", json={"n": n}))
                assert "session=from-the-vendor" in answer.headers.get("Set-Cookie", "")
        finally:
            await http.aclose()
    assert [r.headers.get("Cookie") for r in vendor.requests] == [None, None, None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused_is_retryable_connect() -> None:
    http = HttpClient(name="down", base_url=f"http://127.0.0.1:{free_port()}", allow_private_network=True)
    try:
        with pytest.raises(RetryableError) as info:
            await http.send(Request("POST", "/records", json={}))
    finally:
        await http.aclose()
    assert type(info.value) is RetryableError
    assert info.value.code == "connect"
    assert "127.0.0.1" in info.value.message


async def test_read_timeout_after_sending_is_ambiguous(fake: RecordsFake) -> None:
    fake.inject(Fault(201, {"id": "late"}, delay=0.6, path_contains="/records"))
    http = HttpClient(
        name="records",
        base_url=fake.base_url,
        auth=TokenAuth(fetch_from),
        timeouts=Timeouts(connect=1.0, read=0.15),
        allow_private_network=True,
    )
    started = time.monotonic()
    try:
        with pytest.raises(AmbiguousDeliveryError) as info:
            await http.send(Request("POST", "/records", json={"n": 1}))
    finally:
        await http.aclose()
    assert time.monotonic() - started < 0.55  # gave up before the vendor answered (0.6 s)
    assert info.value.retriable
    assert info.value.code == "timeout"


async def test_429_with_retry_after_slows_the_limiter(fake: RecordsFake) -> None:
    limiter = Limiter(RateLimit(requests=1000))
    http = HttpClient(
        name="records", base_url=fake.base_url, allow_private_network=True, auth=TokenAuth(fetch_from), limiter=limiter
    )
    fake.inject(Fault(429, {"error": "slow down"}, headers={"Retry-After": "3"}, path_contains="/records"))
    try:
        with pytest.raises(RateLimitedError) as info:
            await http.send(Request("POST", "/records", json={"n": 1}))
    finally:
        await http.aclose()
    assert info.value.retry_after == 3.0
    assert 2.5 < limiter.paused_for <= 3.0


async def test_429_without_retry_after_pauses_a_second(fake: RecordsFake) -> None:
    limiter = Limiter(RateLimit(requests=1000))
    http = HttpClient(
        name="records", base_url=fake.base_url, allow_private_network=True, auth=TokenAuth(fetch_from), limiter=limiter
    )
    fake.inject(Fault(429, {"error": "slow down"}, path_contains="/records"))
    try:
        with pytest.raises(RateLimitedError):
            await http.send(Request("POST", "/records", json={}))
    finally:
        await http.aclose()
    assert 0.5 < limiter.paused_for <= 1.0


# -- BodyCodes (HTTP 200 with an error code in the body) -------------------------------------

WECOM_LIKE = BodyCodes(
    field="errcode",
    ok=0,
    message_field="errmsg",
    token_expired=frozenset({42001, 40014}),
    rate_limited=frozenset({45009}),
    quota=frozenset({45033}),
    retryable=frozenset({-1}),
    auth=frozenset({40001}),
)


def body(status: int, payload: bytes, **headers: str) -> Response:
    return Response(status, headers, payload)


def test_body_codes_ok() -> None:
    assert WECOM_LIKE.classify(body(200, b'{"errcode": 0, "errmsg": "ok", "sp_no": "1"}')) is None


@pytest.mark.parametrize(
    ("code", "kind", "error_class", "retriable"),
    [
        (42001, TokenExpiredError, "auth", True),
        (45009, RateLimitedError, "retryable", True),
        (45033, QuotaExhaustedError, "retryable", True),
        (-1, RetryableError, "retryable", True),
        (40001, AuthError, "auth", False),
        (40003, PermanentError, "permanent", False),
    ],
)
def test_body_codes_map_to_the_taxonomy(code: int, kind: type, error_class: str, retriable: bool) -> None:
    payload = f'{{"errcode": {code}, "errmsg": "vendor says {code}"}}'.encode()
    error = WECOM_LIKE.classify(body(200, payload))
    assert type(error) is kind
    assert error is not None
    assert (error.error_class, error.retriable, error.code) == (
        error_class,
        retriable,
        f"errcode_{code}",
    )
    assert f"vendor says {code}" in error.message


def test_body_code_rate_limit_and_quota_delays() -> None:
    limited = WECOM_LIKE.classify(body(200, b'{"errcode": 45009, "errmsg": "busy"}', **{"Retry-After": "12"}))
    assert limited is not None and limited.retry_after == 12.0
    quota = WECOM_LIKE.classify(body(200, b'{"errcode": 45033, "errmsg": "quota"}'))
    assert quota is not None and quota.retry_after == 3600.0


def test_body_code_unknown_on_5xx_is_retryable() -> None:
    error = WECOM_LIKE.classify(body(502, b'{"errcode": 40003, "errmsg": "x"}'))
    assert type(error) is RetryableError


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (200, b"<html>ok</html>", None),
        (502, b"<html>Bad Gateway</html>", RetryableError),
        (404, b'{"message": "no such thing"}', PermanentError),
        (401, b"", TokenExpiredError),
        (429, b"Too Many Requests", RateLimitedError),
    ],
)
def test_body_codes_fall_back_to_status(status: int, payload: bytes, expected: type | None) -> None:
    error = WECOM_LIKE.classify(body(status, payload))
    assert (type(error) if error is not None else None) is expected
    if error is not None:
        assert error.code == f"http_{status}"
