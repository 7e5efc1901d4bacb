"""Kit additions for Freshdesk and DingTalk: a basic scheme with a fixed password, and a JSON token
placed in a header on some paths and in the query on others."""

from __future__ import annotations

import base64

import pytest
from aiohttp.test_utils import make_mocked_request

from octopus_crm.adapters.auth import HeaderAuth, QueryAuth, RoutedAuth, Token, TokenAuth
from octopus_crm.adapters.base import IntegrationConfig
from octopus_crm.adapters.http import Request
from octopus_crm.adapters.spec import Basic
from octopus_crm.core.errors import ConfigError
from octopus_crm_sandbox.envelope import caller
from octopus_crm_sandbox.kit import FakeVendor

FIXED = Basic(("apiKey",), (), fixed_password="X")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_a_fixed_password_needs_no_credential_and_is_sent() -> None:
    config = IntegrationConfig.model_validate({"credentials": {"apiKey": "key-1"}})
    FIXED.check(config)
    auth = FIXED.build(config, "https://x.example")
    assert auth is not None
    request = Request("GET", "/me")
    await auth.apply(request, None)  # type: ignore[arg-type]  # static auth needs no client
    assert request.headers == _basic("key-1", "X")
    with pytest.raises(ConfigError, match=r"credentials\.apiKey"):
        FIXED.check(IntegrationConfig.model_validate({"credentials": {}}))


def test_the_fake_envelope_ignores_a_fixed_password_like_the_vendor() -> None:
    fake = FakeVendor()
    accepted = {"apiKey": "key-1"}
    for password, ok in (("X", True), ("anything", True)):
        request = make_mocked_request("GET", "/me", headers=_basic("key-1", password))
        assert (caller(FIXED, request, accepted, fake) is not None) is ok
    wrong = make_mocked_request("GET", "/me", headers=_basic("key-2", "X"))
    assert caller(FIXED, wrong, accepted, fake) is None
    plain = Basic(("user",), ("password",))
    request = make_mocked_request("GET", "/me", headers=_basic("u", "other"))
    assert caller(plain, request, {"user": "u", "password": "p"}, fake) is None


async def test_routed_auth_applies_the_first_matching_prefix_else_the_default() -> None:
    new, old = HeaderAuth("x-new", "n-token-1"), QueryAuth({"access_token": "o-token-1"})
    auth = RoutedAuth((("https://api.example/v1.0/", new), ("/v1.0/", new)), default=old)
    assert not auth.refreshable
    for url in ("https://api.example/v1.0/todo", "/v1.0/todo"):
        request = Request("POST", url)
        await auth.apply(request, None)  # type: ignore[arg-type]  # static auth needs no client
        assert request.headers == {"x-new": "n-token-1"} and request.params == {}
    request = Request("POST", "/topapi/message")
    await auth.apply(request, None)  # type: ignore[arg-type]
    assert request.params == {"access_token": "o-token-1"} and request.headers == {}


async def test_routed_auth_is_refreshable_and_invalidates_only_the_rejected_token() -> None:
    async def fetch(http: object) -> Token:
        raise AssertionError("not fetched in this test")

    first, second = TokenAuth(fetch), TokenAuth(fetch)
    first._token, second._token = Token("t-first-1", None, {}), Token("t-second-1", None, {})
    auth = RoutedAuth((("/v1.0/", first),), default=second)
    assert auth.refreshable
    await auth.invalidate("t-first-1")
    assert first.token is None and second.token is not None
