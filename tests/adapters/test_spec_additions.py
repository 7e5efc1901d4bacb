"""Kit additions: a basic user-name suffix, "requests left" headers, a vendor-shaped idempotency
key and a find call that reads its items its own way."""

from __future__ import annotations

import base64

from octopus_crm.adapters.base import IntegrationConfig
from octopus_crm.adapters.http import HttpClient, Request, Response
from octopus_crm.adapters.ratelimit import Limiter, RateLimit
from octopus_crm.adapters.spec import Basic, CreateCall, LimitHeaders, OAuth2Refresh


async def test_basic_appends_the_user_suffix() -> None:
    config = IntegrationConfig.model_validate({"credentials": {"email": "a@example.com", "apiToken": "s3cret"}})
    auth = Basic(("email",), ("apiToken",), user_suffix="/token").build(config, "https://x.example.com")
    assert auth is not None
    request = Request("GET", "/me")
    await auth.apply(request, HttpClient(name="t"))
    value = request.headers["Authorization"]
    assert base64.b64decode(value.removeprefix("Basic ")).decode() == "a@example.com/token:s3cret"


async def test_limit_headers_hold_at_zero_and_ignore_the_rest() -> None:
    limits = LimitHeaders("x-left", "x-reset", default_wait=2.0)
    limiter = Limiter(RateLimit(requests=10))
    limits.observe(Response(200, {"x-left": "3", "x-reset": "30"}, b""), limiter)
    limits.observe(Response(200, {"x-left": "soon", "x-reset": "30"}, b""), limiter)
    limits.observe(Response(200, {}, b""), limiter)
    assert limiter.paused_for == 0
    limits.observe(Response(200, {"x-left": "0"}, b""), limiter)
    assert 1.5 < limiter.paused_for <= 2.0
    limits.observe(Response(200, {"x-left": "0", "x-reset": "30"}, b""), limiter)
    assert 29 < limiter.paused_for <= 30
    limits.observe(Response(200, {"x-left": "0"}, b""), None)  # no limiter: nothing to hold


def test_a_create_call_can_shape_the_idempotency_key() -> None:
    call = CreateCall("/x", idempotency_header="Idempotency-Key", idempotency_value=lambda key: key[:4])
    assert call.idempotency_value is not None and call.idempotency_value("abcdef") == "abcd"


async def test_a_rolling_window_waits_one_slot_not_the_whole_window() -> None:
    limits = LimitHeaders("x-left", "x-reset", rolling_window=2.0, limit="x-limit")
    limiter = Limiter(RateLimit(requests=10))
    limits.observe(Response(200, {"x-left": "0", "x-reset": "2", "x-limit": "40"}, b""), limiter)
    assert 0 < limiter.paused_for <= 0.05
    without_limit = Limiter(RateLimit(requests=10))
    limits.observe(Response(200, {"x-left": "0", "x-reset": "2"}, b""), without_limit)
    assert 1.5 < without_limit.paused_for <= 2.0  # no limit header: the whole reset


def test_a_refresh_grant_can_authenticate_the_client_with_basic() -> None:
    config = IntegrationConfig.model_validate(
        {"credentials": {"clientId": "app", "clientSecret": "s3cret", "refreshToken": "r"}}
    )
    scheme = OAuth2Refresh("/oauth/token", client_basic=True)
    assert scheme.form(config) == {"grant_type": "refresh_token", "refresh_token": "r"}
    header = scheme.token_headers(config)["Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == "app:s3cret"
    assert OAuth2Refresh("/oauth/token").token_headers(config) == {}
