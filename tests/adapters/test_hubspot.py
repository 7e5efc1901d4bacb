"""HubSpot adapter against the HubSpot fake over loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.hubspot import HubSpotAdapter, seconds_until_midnight
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.hubspot import HubSpotFake
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import event_of, seed_entry, with_changes

CTX = DeliveryContext(idempotency_key="evt:backup-crm:contact", integration_id="backup-crm")
OAUTH: dict[str, Any] = {
    "authType": "oauth2",
    "credentials": {
        "clientId": "hubspot-fake-client-id",
        "clientSecret": "hubspot-fake-client-secret",
        "refreshToken": "hubspot-fake-refresh-token",
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[HubSpotFake]:
    vendor = HubSpotFake(rate_limit=(10_000, 10.0))
    async with SandboxServer(vendor):
        yield vendor


def make_adapter(fake: HubSpotFake, **overrides: Any) -> HubSpotAdapter:
    """The seed's ``backup-crm`` entry pointed at the fake; ``overrides`` replace config keys."""
    config = seed_entry("hubspot", fake.ENV)["config"]
    config["endpoints"] = {**config["endpoints"], **fake.endpoints()}
    config["rateLimit"] = {"requests": 1000, "concurrency": 100}
    for key, value in overrides.items():
        if key == "endpoints":
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return HubSpotAdapter("backup-crm", IntegrationConfig.model_validate(config))


@pytest.fixture
async def adapter(fake: HubSpotFake) -> AsyncIterator[HubSpotAdapter]:
    hs = make_adapter(fake)
    yield hs
    await hs.aclose()


def posts(fake: HubSpotFake) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path.startswith("/crm/")]


# -- the seed's objects ---------------------------------------------------------------------


async def test_seed_contact_is_created(fake: HubSpotFake, adapter: HubSpotAdapter) -> None:
    event = event_of("销售线索")
    delivered = await adapter.create(event, "contact", CTX)

    record = fake.records[delivered.external_id]["properties"]
    assert record["firstname"] == "小明" and record["lastname"] == "王"
    assert record["email"] == event.sender.email
    assert record["phone"] == event.sender.phone
    assert record["lifecyclestage"] == "lead"
    assert record["lead_source"] == event.platform
    assert delivered.external_url == (
        f"https://app.hubspot.com/contacts/{fake.portal_id}/record/0-1/{delivered.external_id}"
    )
    assert delivered.detail == {}
    [sent] = posts(fake)
    assert sent.path == "/crm/v3/objects/contacts"
    assert orjson.loads(sent.body)["associations"] == []
    assert sent.headers["Authorization"] == f"Bearer {fake.ENV['HUBSPOT_TOKEN']}"


async def test_seed_ticket_uses_pipeline_ids_and_priority_map(fake: HubSpotFake, adapter: HubSpotAdapter) -> None:
    for priority, expected in (
        ("urgent", "HIGH"),
        ("high", "HIGH"),
        ("medium", "MEDIUM"),
        ("low", "LOW"),
    ):
        event = with_changes(event_of("客户投诉"), classification={"priority": priority})
        delivered = await adapter.create(event, "ticket", CTX)
        props = fake.records[delivered.external_id]["properties"]
        assert props["hs_pipeline"] == "support_pipeline" and props["hs_pipeline_stage"] == "new"
        assert props["hs_ticket_priority"] == expected
        assert props["subject"] == f"客户投诉 - {event.content}"
        assert props["content"] == event.content
        assert "/record/0-5/" in (delivered.external_url or "")
    account_calls = [r for r in fake.requests if r.path == "/account-info/v3/details"]
    assert len(account_calls) == 1  # the portal id is looked up once


async def test_configured_portal_and_zone_need_no_lookup(fake: HubSpotFake) -> None:
    hs = make_adapter(fake, endpoints={"portalId": 42, "uiDomain": "app-eu1.hubspot.com", "timeZone": "Europe/Berlin"})
    try:
        delivered = await hs.create(event_of("客户投诉"), "ticket", CTX)
    finally:
        await hs.aclose()
    assert delivered.external_url == f"https://app-eu1.hubspot.com/contacts/42/record/0-5/{delivered.external_id}"
    assert not [r for r in fake.requests if r.path.startswith("/account-info")]


async def test_duplicate_email_is_the_existing_contact(fake: HubSpotFake, adapter: HubSpotAdapter) -> None:
    event = event_of("销售线索")
    first = await adapter.create(event, "contact", CTX)
    second = await adapter.create(event, "contact", CTX)
    assert second.external_id == first.external_id
    assert second.detail == {"existing": True}
    assert (409, "CONFLICT") in fake.rejected
    assert len(fake.by_kind("contacts")) == 1
    lookup = [r for r in fake.requests if r.method == "GET" and r.path.startswith("/crm/")]
    assert lookup[-1].path == f"/crm/v3/objects/contacts/{event.sender.email}"
    assert lookup[-1].query == {"idProperty": "email"}


async def test_conflict_without_a_readable_contact_uses_the_existing_id(
    fake: HubSpotFake, adapter: HubSpotAdapter
) -> None:
    conflict = {
        "status": "error",
        "message": "Contact already exists. Existing ID: 777",
        "correlationId": "c0",
        "category": "CONFLICT",
    }
    fake.inject(Fault(409, conflict, path_contains="/crm/v3/objects/contacts"))
    delivered = await adapter.create(event_of("销售线索"), "contact", CTX)
    assert delivered.external_id == "777" and delivered.detail == {"existing": True}
    assert delivered.external_url is not None and delivered.external_url.endswith("/0-1/777")


async def test_find_existing(fake: HubSpotFake, adapter: HubSpotAdapter) -> None:
    event = event_of("销售线索")
    assert await adapter.find_existing(event, "contact", CTX) is None
    created = await adapter.create(event, "contact", CTX)
    found = await adapter.find_existing(event, "contact", CTX)
    assert found is not None and found.external_id == created.external_id
    assert await adapter.find_existing(event, "ticket", CTX) is None
    no_email = with_changes(event, sender={"email": None})
    assert await adapter.find_existing(no_email, "contact", CTX) is None


async def test_token_aliases_and_missing_token(fake: HubSpotFake) -> None:
    token = fake.ENV["HUBSPOT_TOKEN"]
    for credentials in ({"accessToken": token}, {"token": token}):
        hs = make_adapter(fake, authType="private_app", credentials=credentials)
        try:
            await hs.test_connection()
        finally:
            await hs.aclose()
    with pytest.raises(ConfigError):
        make_adapter(fake, credentials={})
    with pytest.raises(ConfigError, match="authType"):
        make_adapter(fake, authType="basic")


# -- auth -----------------------------------------------------------------------------------


async def test_bad_private_app_token_is_final(fake: HubSpotFake) -> None:
    hs = make_adapter(fake, credentials={"apiKey": "pat-na1-revoked"})
    try:
        with pytest.raises(AuthError) as info:
            await hs.create(event_of("销售线索"), "contact", CTX)
        with pytest.raises(AuthError):
            await hs.test_connection()
    finally:
        await hs.aclose()
    assert info.value.code == "INVALID_AUTHENTICATION" and info.value.status == 401
    assert "pat-na1-revoked" not in info.value.message
    assert len(posts(fake)) == 1  # no retry, no refresh
    assert not [r for r in fake.requests if r.path.startswith("/oauth")]


async def test_oauth_token_expiry_refreshes_once(fake: HubSpotFake) -> None:
    hs = make_adapter(fake, **OAUTH)
    try:
        await hs.create(event_of("客户投诉"), "ticket", CTX)
        fake.expire_tokens()
        await hs.create(event_of("客户投诉"), "ticket", CTX)
    finally:
        await hs.aclose()
    assert fake.token_requests == 2
    assert (401, "EXPIRED_AUTHENTICATION") in fake.rejected
    assert len(fake.by_kind("tickets")) == 2


async def test_oauth_cold_cache_fetches_one_token(fake: HubSpotFake) -> None:
    hs = make_adapter(fake, endpoints={"portalId": 1}, **OAUTH)
    event = event_of("客户投诉")
    try:
        results = await asyncio.gather(*(hs.create(event, "ticket", CTX) for _ in range(100)))
    finally:
        await hs.aclose()
    assert len({r.external_id for r in results}) == 100
    assert fake.token_requests == 1


async def test_oauth_bad_refresh_token_is_auth_error(fake: HubSpotFake) -> None:
    hs = make_adapter(fake, authType="oauth2", credentials={**OAUTH["credentials"], "refreshToken": "nope"})
    try:
        with pytest.raises(AuthError, match="token request failed"):
            await hs.create(event_of("客户投诉"), "ticket", CTX)
    finally:
        await hs.aclose()


# -- errors ---------------------------------------------------------------------------------


async def test_validation_errors_are_permanent_with_the_vendor_message(fake: HubSpotFake) -> None:
    cases = [
        (
            {"contact": {"email": "{{senderEmail}}", "favourite_colour": "blue"}},
            "contact",
            'Property \\"favourite_colour\\" does not exist',
        ),
        (
            {"contact": {"email": "{{senderEmail}}", "lifecyclestage": "prospect"}},
            "contact",
            "prospect was not one of the allowed options",
        ),
        ({"contact": {"email": "not-an-email"}}, "contact", "INVALID_EMAIL"),
        (
            {
                "ticket": {
                    "subject": "s",
                    "hs_pipeline": "support_pipeline",
                    "hs_pipeline_stage": "open",
                }
            },
            "ticket",
            "open was not one of the allowed options",
        ),
        (
            {"ticket": {"subject": "s", "hs_pipeline": "0"}},
            "ticket",
            "hs_pipeline_stage is required",
        ),
        (
            {"ticket": {"subject": "s", "hs_pipeline_stage": "1", "hs_object_id": "1"}},
            "ticket",
            "READ_ONLY_VALUE",
        ),
    ]
    for mappings, object_type, text in cases:
        hs = make_adapter(fake, mappings=mappings, endpoints={"portalId": 1})
        try:
            with pytest.raises(PermanentError) as info:
                await hs.create(event_of("销售线索"), object_type, CTX)
        finally:
            await hs.aclose()
        assert info.value.code == "VALIDATION_ERROR" and info.value.status == 400
        assert text in info.value.message, info.value.message
        assert "correlationId" in info.value.message
    assert not fake.records


async def test_fake_enforces_the_create_schema(fake: HubSpotFake) -> None:
    headers = {"Authorization": f"Bearer {fake.ENV['HUBSPOT_TOKEN']}"}
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}/crm/v3/objects/contacts"
        async with session.post(url, json={"properties": {"email": "a@b.co"}}, headers=headers) as resp:
            body = await resp.json()
    assert resp.status == 400 and body["category"] == "VALIDATION_ERROR"
    assert "required attributes are not set [associations]" in body["message"]
    assert set(body) >= {"status", "message", "correlationId", "category"}


@pytest.mark.parametrize(
    ("status", "body", "error_type", "code"),
    [
        (
            500,
            {
                "status": "error",
                "message": "internal error",
                "correlationId": "c1",
                "category": "INTERNAL_ERROR",
            },
            RetryableError,
            "INTERNAL_ERROR",
        ),
        (502, "<html>Bad Gateway</html>", RetryableError, "http_502"),
        (
            423,
            {
                "status": "error",
                "message": "record locked",
                "correlationId": "c2",
                "category": "LOCKED",
            },
            RetryableError,
            "LOCKED",
        ),
        (
            403,
            {
                "status": "error",
                "message": "This app hasn't been granted all required scopes",
                "correlationId": "c3",
                "category": "MISSING_SCOPES",
            },
            AuthError,
            "MISSING_SCOPES",
        ),
        (
            429,
            {
                "status": "error",
                "message": "You have reached your secondly limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": "c4",
                "policyName": "SECONDLY",
            },
            RateLimitedError,
            "SECONDLY",
        ),
        (
            404,
            {
                "status": "error",
                "message": "Unable to infer object type",
                "correlationId": "c5",
                "category": "OBJECT_NOT_FOUND",
            },
            PermanentError,
            "OBJECT_NOT_FOUND",
        ),
    ],
)
async def test_error_responses_map_to_the_taxonomy(
    fake: HubSpotFake,
    adapter: HubSpotAdapter,
    status: int,
    body: Any,
    error_type: type[Exception],
    code: str,
) -> None:
    fake.inject(Fault(status, body, path_contains="/crm/v3/objects/tickets"))
    with pytest.raises(error_type) as info:
        await adapter.create(event_of("客户投诉"), "ticket", CTX)
    assert getattr(info.value, "code", None) == code
    if isinstance(body, dict):
        assert body["message"] in str(info.value)
    assert type(info.value) is not QuotaExhaustedError
    if status == 423:
        assert getattr(info.value, "retry_after", None) == 2.0


async def test_daily_limit_is_a_quota_until_midnight() -> None:
    fake = HubSpotFake(daily_limit=2)
    async with SandboxServer(fake):
        hs = make_adapter(fake, endpoints={"portalId": 1, "timeZone": "Asia/Shanghai"})
        try:
            await hs.create(event_of("客户投诉"), "ticket", CTX)
            await hs.create(event_of("客户投诉"), "ticket", CTX)
            with pytest.raises(QuotaExhaustedError) as info:
                await hs.create(event_of("客户投诉"), "ticket", CTX)
        finally:
            await hs.aclose()
    assert info.value.code == "DAILY"
    assert 60 <= (info.value.retry_after or 0) <= 86_400
    assert abs((info.value.retry_after or 0) - seconds_until_midnight("Asia/Shanghai")) < 5


async def test_daily_limit_resets_at_the_accounts_midnight_even_with_portal_configured() -> None:
    """The README tells users to set ``portalId``; the zone is learnt from the account anyway."""
    fake = HubSpotFake(daily_limit=3, time_zone="America/Los_Angeles")
    async with SandboxServer(fake):
        hs = make_adapter(fake, endpoints={"portalId": 1})
        try:
            await hs.create(event_of("客户投诉"), "ticket", CTX)  # + the account lookup, once
            await hs.create(event_of("客户投诉"), "ticket", CTX)
            with pytest.raises(QuotaExhaustedError) as info:
                await hs.create(event_of("客户投诉"), "ticket", CTX)
        finally:
            await hs.aclose()
    assert len([r for r in fake.requests if r.path == "/account-info/v3/details"]) == 1
    assert abs((info.value.retry_after or 0) - seconds_until_midnight("America/Los_Angeles")) < 5
    assert abs((info.value.retry_after or 0) - seconds_until_midnight(None)) > 3000  # not UTC's


async def test_secondly_window_429_is_rate_limited() -> None:
    fake = HubSpotFake(rate_limit=(2, 0.2))
    async with SandboxServer(fake):
        hs = make_adapter(fake, endpoints={"portalId": 1, "timeZone": "UTC"})
        try:
            await hs.create(event_of("客户投诉"), "ticket", CTX)
            await hs.create(event_of("客户投诉"), "ticket", CTX)
            with pytest.raises(RateLimitedError) as info:
                await hs.create(event_of("客户投诉"), "ticket", CTX)
        finally:
            await hs.aclose()
    assert info.value.code == "TEN_SECONDLY_ROLLING"
    assert not isinstance(info.value, QuotaExhaustedError)


async def test_remaining_zero_holds_the_integration() -> None:
    fake = HubSpotFake(rate_limit=(1, 10.0))
    async with SandboxServer(fake):
        hs = make_adapter(fake, endpoints={"portalId": 1})
        try:
            await hs.create(event_of("客户投诉"), "ticket", CTX)
            limiter = hs.http.limiter
            assert limiter is not None and 9.0 < limiter.paused_for <= 10.0
        finally:
            await hs.aclose()
    last = fake.requests[-1]
    assert last.path == "/crm/v3/objects/tickets"


# -- content and pacing ---------------------------------------------------------------------


async def test_message_arrives_byte_for_byte(fake: HubSpotFake, adapter: HubSpotAdapter) -> None:
    content = 'Literal {{senderEmail}} and "quotes"\nsecond line 🐙 \\n 中文'
    event = with_changes(event_of("客户投诉"), content=content)
    delivered = await adapter.create(event, "ticket", CTX)
    assert fake.records[delivered.external_id]["properties"]["content"] == content
    sent = posts(fake)[-1]
    assert orjson.loads(sent.body)["properties"]["content"] == content
    assert orjson.dumps(content) in sent.body
