"""Zendesk Support adapter against the Zendesk fake over real loopback HTTP."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.http import Request
from octopus_crm.adapters.zendesk import ZendeskAdapter, external_marker, idempotency_header_value
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.zendesk import ZendeskFake
from tests.adapters.seed import event_of, seed_config, with_changes

SERVICE = event_of("客户服务")  # priority medium, sender Hanna Schmidt <user2@example.com>
TECH = event_of("技术支持")  # priority urgent
FAST = {"requests": 1000, "perSeconds": 1, "concurrency": 16}


@asynccontextmanager
async def running(
    fake: ZendeskFake | None = None, **overrides: Any
) -> AsyncIterator[tuple[ZendeskFake, ZendeskAdapter]]:
    fake = fake or ZendeskFake()
    overrides.setdefault("rateLimit", FAST)
    async with SandboxServer(fake):
        adapter = ZendeskAdapter(*seed_config("zendesk", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:support-zendesk:ticket") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="support-zendesk")


def creates(fake: ZendeskFake) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path == "/api/v2/tickets"]


async def test_the_seed_ticket_arrives_in_zendesks_shape() -> None:
    async with running() as (fake, zendesk):
        delivered = await zendesk.create(SERVICE, "ticket", ctx())
        sent = creates(fake)[0]
        body = orjson.loads(sent.body)
    assert delivered.external_id == "35436"
    assert delivered.external_url == f"{fake.base_url}/agent/tickets/35436"
    assert body == {
        "ticket": {
            "subject": f"客户服务 - {SERVICE.content}",
            "comment": {"body": f"{SERVICE.content}\n\n来源: {SERVICE.platform} / {SERVICE.sender.name}"},
            "requester": {"name": "Hanna Schmidt", "email": "user2@example.com"},
            "priority": "normal",  # our medium
            "type": "question",
            "tags": ["octopus", SERVICE.platform],
            "external_id": external_marker(ctx().idempotency_key),
        }
    }
    assert sent.headers["Idempotency-Key"] == ctx().idempotency_key
    user, _, password = base64.b64decode(sent.headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (user, password) == (f"{ZendeskFake.ENV['ZENDESK_EMAIL']}/token", ZendeskFake.ENV["ZENDESK_API_TOKEN"])
    assert fake.records["35436"]["ignored"] == []


@pytest.mark.parametrize(
    ("ours", "theirs"), [("low", "low"), ("medium", "normal"), ("high", "high"), ("urgent", "urgent")]
)
async def test_priorities_map_onto_zendesks_four(ours: str, theirs: str) -> None:
    event = with_changes(SERVICE, classification={"priority": ours})
    async with running() as (fake, zendesk):
        await zendesk.create(event, "ticket", ctx())
    assert fake.records["35436"]["ticket"]["priority"] == theirs


async def test_a_redelivery_with_the_same_key_replays_the_first_ticket() -> None:
    async with running() as (fake, zendesk):
        first = await zendesk.create(SERVICE, "ticket", ctx())
        again = await zendesk.create(SERVICE, "ticket", ctx())
    assert again.external_id == first.external_id
    assert len(fake.records) == 1 and fake.replayed == 1


async def test_the_same_key_with_another_body_reports_the_existing_ticket() -> None:
    async with running() as (fake, zendesk):
        first = await zendesk.create(SERVICE, "ticket", ctx())
        again = await zendesk.create(TECH, "ticket", ctx())  # e.g. the mapping changed in between
    assert again.external_id == first.external_id and again.detail == {"existing": True}
    assert len(fake.records) == 1
    async with running(externalIdMarker=False) as (fake, zendesk):
        await zendesk.create(SERVICE, "ticket", ctx())
        with pytest.raises(PermanentError) as info:
            await zendesk.create(TECH, "ticket", ctx())
    assert "IdempotentRequestError" in info.value.message and len(fake.records) == 1


async def test_a_flat_mapping_without_requester_asks_as_the_sender() -> None:
    mapping = {"ticket": {"subject": "{{category}}", "description": "{{messageContent}}", "tags": "vip, needs reply"}}
    async with running(mappings=mapping) as (fake, zendesk):
        await zendesk.create(SERVICE, "ticket", ctx())
        no_email = with_changes(SERVICE, sender={"email": None})
        await zendesk.create(no_email, "ticket", ctx("evt-2:support-zendesk:ticket"))
    first, second = (fake.records[i]["body"] for i in ("35436", "35437"))
    assert first["comment"] == {"body": SERVICE.content}
    assert first["requester"] == {"name": "Hanna Schmidt", "email": "user2@example.com"}
    assert first["tags"] == ["vip", "needs_reply"]  # Zendesk would split a tag at its space
    assert second["requester"] == {"name": "Hanna Schmidt"}


async def test_requester_keys_and_a_nested_ticket_are_accepted() -> None:
    mapping = {
        "ticket": {
            "ticket": {"subject": "x", "comment": {"body": "{{messageContent}}", "public": False}},
            "requesterName": "{{senderName}} (WeChat)",
        }
    }
    async with running(mappings={"ticket": mapping["ticket"]["ticket"]}) as (fake, zendesk):
        await zendesk.create(SERVICE, "ticket", ctx())
    assert fake.records["35436"]["body"]["comment"] == {"body": SERVICE.content, "public": False}
    flat = {"ticket": {"subject": "x", "body": "{{messageContent}}", "requesterName": "{{senderName}} (WeChat)"}}
    async with running(mappings=flat) as (fake, zendesk):
        await zendesk.create(SERVICE, "ticket", ctx())
    assert fake.records["35436"]["requester"] == {"name": "Hanna Schmidt (WeChat)", "email": "user2@example.com"}


async def test_a_validation_error_keeps_zendesks_details() -> None:
    mapping = {"ticket": {"subject": "x", "comment": "{{messageContent}}", "priority": "critical"}}
    async with running(mappings=mapping) as (_, zendesk):
        with pytest.raises(PermanentError) as info:
            await zendesk.create(SERVICE, "ticket", ctx())
    assert info.value.status == 422
    assert "RecordInvalid" in info.value.message and "ticket/priority" in info.value.message


async def test_oauth_bearer_and_the_seeds_other_spellings() -> None:
    fake = ZendeskFake()
    credentials = {"accessToken": fake.accepted["accessToken"]}
    async with running(fake, authType="oauth", credentials=credentials) as (fake, zendesk):
        await zendesk.test_connection()
        await zendesk.create(SERVICE, "ticket", ctx())
    assert creates(fake)[0].headers["Authorization"] == f"Bearer {fake.accepted['accessToken']}"
    spelled = IntegrationConfig.model_validate(
        {
            "authType": "api_token",
            "credentials": {"username": "a@example.com", "api_token": "t"},
            "endpoints": {"subdomain": "acme"},
            "mappings": {"ticket": {"comment": "{{messageContent}}"}},
        }
    )
    assert ZendeskAdapter("z", spelled).base_url == "https://acme.zendesk.com"


def test_bad_settings_fail_at_load_naming_the_key() -> None:
    def config(**changes: Any) -> IntegrationConfig:
        base = {
            "credentials": {"email": "a@example.com", "apiToken": "t"},
            "endpoints": {"baseUrl": "https://acme.zendesk.com"},
            "mappings": {"ticket": {"comment": "{{messageContent}}"}},
        }
        return IntegrationConfig.model_validate({**base, **changes})

    with pytest.raises(ConfigError, match=re.escape("credentials.apiToken")):
        ZendeskAdapter("z", config(credentials={"email": "a@example.com"}))
    with pytest.raises(ConfigError, match=re.escape("did you mean endpoints.subdomain")):
        ZendeskAdapter("z", config(endpoints={"subdomian": "acme"}))
    with pytest.raises(ConfigError, match=re.escape("endpoints.subdomain")):
        ZendeskAdapter("z", config(endpoints={"subdomain": "evil.example.com/"}))
    with pytest.raises(ConfigError, match="baseUrl"):
        ZendeskAdapter("z", config(endpoints={}))


async def test_a_bad_token_is_final() -> None:
    async with running(credentials={"email": "octopus-bot@example.com", "apiToken": "wrong"}) as (fake, zendesk):
        with pytest.raises(AuthError) as info:
            await zendesk.create(SERVICE, "ticket", ctx())
    assert "Couldn't authenticate you" in info.value.message and len(creates(fake)) == 1


async def test_remaining_zero_holds_the_integration_until_the_reset() -> None:
    async with running() as (fake, zendesk):
        headers = {"ratelimit-remaining": "0", "ratelimit-reset": "9", "X-Rate-Limit-Remaining": "0"}
        fake.inject(Fault(201, {"ticket": {"id": 77}}, headers=headers, path_contains="/api/v2/tickets"))
        delivered = await zendesk.create(SERVICE, "ticket", ctx())
        limiter = zendesk.current_limiter()
        assert delivered.external_id == "77"
        assert limiter is not None and 8 < limiter.paused_for <= 9


async def test_429_without_retry_after_waits_for_ratelimit_reset_and_409_is_retryable() -> None:
    async with running() as (fake, zendesk):
        fake.inject(Fault(409, {"error": "Conflict", "description": "try again"}))
        with pytest.raises(RetryableError):
            await zendesk.create(SERVICE, "ticket", ctx())
        fake.inject(Fault(429, {"error": "APIRateLimitExceeded"}, headers={"ratelimit-reset": "12"}))
        with pytest.raises(RateLimitedError) as info:
            await zendesk.create(SERVICE, "ticket", ctx())
    assert info.value.retry_after == 12


async def test_the_last_request_of_the_window_holds_the_next_and_the_fakes_429_has_zendesks_headers() -> None:
    fake = ZendeskFake(rate_limit=(1, 60.0))
    async with running(fake) as (fake, zendesk):
        await zendesk.create(SERVICE, "ticket", ctx())
        limiter = zendesk.current_limiter()
        assert limiter is not None and limiter.paused_for > 0  # ratelimit-remaining: 0, no 429 spent
        with pytest.raises(RateLimitedError) as info:
            await zendesk.http.send(Request("GET", "/api/v2/users/me", paced=False))
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
    assert fake.window is not None and fake.window.rejected == 1


async def test_a_long_key_is_hashed_to_zendesks_255_characters() -> None:
    key = "evt-" + "x" * 300
    assert len(idempotency_header_value(key)) <= 255
    assert idempotency_header_value("short") == "short"
    async with running() as (fake, zendesk):
        await zendesk.create(SERVICE, "ticket", ctx(key))
    assert creates(fake)[0].headers["Idempotency-Key"] == idempotency_header_value(key)


async def test_a_mapped_external_id_turns_the_marker_and_lookup_off() -> None:
    mapping = {"ticket": {"comment": "{{messageContent}}", "external_id": "{{messageId}}"}}
    async with running(mappings=mapping) as (fake, zendesk):
        await zendesk.create(SERVICE, "ticket", ctx())
        assert await zendesk.find_existing(SERVICE, "ticket", ctx()) is None
    assert fake.records["35436"]["ticket"]["external_id"] == SERVICE.messageId


@pytest.mark.parametrize("shape", [[1, 2], "a string", 42, None, {"ticket": [1]}, {"ticket": {"id": True}}])
async def test_an_undocumented_answer_is_a_typed_error(shape: Any) -> None:
    async with running() as (fake, zendesk):
        fake.inject(Fault(201, shape, path_contains="/api/v2/tickets"))
        with pytest.raises(DeliveryError):
            await zendesk.create(SERVICE, "ticket", ctx())
        fake.inject(Fault(200, shape, path_contains="/api/v2/tickets"))
        assert await zendesk.find_existing(SERVICE, "ticket", ctx()) is None


def test_the_plan_picks_the_default_pace_and_rate_limit_still_wins() -> None:
    def limit(**changes: Any) -> float:
        base = {
            "credentials": {"email": "a@example.com", "apiToken": "t"},
            "endpoints": {"subdomain": "acme"},
            "mappings": {"ticket": {"comment": "{{messageContent}}"}},
        }
        return ZendeskAdapter("z", IntegrationConfig.model_validate({**base, **changes})).rate_limit.requests

    assert limit() == 200 and limit(plan="enterprise") == 700 and limit(plan="enterprise_plus") == 2500
    assert limit(plan="enterprise", rateLimit={"requests": 50, "perSeconds": 60}) == 50
    with pytest.raises(ConfigError, match="plan"):
        limit(plan="platinum")
