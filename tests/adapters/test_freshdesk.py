"""Freshdesk adapter against the Freshdesk fake over real loopback HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.freshdesk import FreshdeskAdapter, dedupe_tag, text_to_html
from octopus_crm.adapters.http import Response
from octopus_crm.core.errors import AuthError, ConfigError, PermanentError, RateLimitedError
from octopus_crm_sandbox.freshdesk import FreshdeskFake
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import event_of, seed_config, seed_entry, with_changes

TECH = event_of("技术支持")


@asynccontextmanager
async def running(
    fake: FreshdeskFake | None = None, **overrides: Any
) -> AsyncIterator[tuple[FreshdeskFake, FreshdeskAdapter]]:
    fake = fake or FreshdeskFake()
    async with SandboxServer(fake):
        adapter = FreshdeskAdapter(*seed_config("freshdesk", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:freshdesk-demo:ticket") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="freshdesk-demo")


def sent(fake: FreshdeskFake) -> dict[str, Any]:
    request = next(r for r in reversed(fake.requests) if r.path == "/api/v2/tickets")
    body: dict[str, Any] = orjson.loads(request.body)
    return body


async def test_the_seed_ticket_arrives_in_freshdesk_shapes() -> None:
    async with running() as (fake, freshdesk):
        delivered = await freshdesk.create(TECH, "ticket", ctx())
        assert delivered.external_id == "1"
        assert delivered.external_url == f"{fake.base_url}/a/tickets/1"
        body = sent(fake)
        assert body["email"] == TECH.sender.email and body["name"] == TECH.sender.name
        assert body["priority"] == 4  # urgent
        assert body["status"] == 2  # open
        assert body["source"] == 7  # a chat app (whatsapp / telegram / web → portal)
        assert body["type"] == "Incident"  # 技术支持
        assert body["subject"].startswith("技术支持 - ")
        assert body["tags"] == ["octopus", TECH.platform, dedupe_tag(ctx().idempotency_key)]
        assert body["description"].startswith("<p>") and "<br>" not in body["description"]
        request = fake.requests[-1]
        assert request.headers["Content-Type"].startswith("application/json")
        kind, _, value = request.headers["Authorization"].partition(" ")
        assert kind == "Basic"
        assert base64.b64decode(value).decode() == f"{FreshdeskFake.ENV['FRESHDESK_API_KEY']}:X"


@pytest.mark.parametrize(
    ("ours", "theirs"), [("low", 1), ("medium", 2), ("high", 3), ("urgent", 4)], ids=["low", "medium", "high", "urgent"]
)
async def test_priorities_map_onto_freshdesk_numbers(ours: str, theirs: int) -> None:
    event = with_changes(TECH, classification={"priority": ours})
    async with running() as (fake, freshdesk):
        await freshdesk.create(event, "ticket", ctx())
        assert sent(fake)["priority"] == theirs


def test_value_maps_cover_our_vocabulary() -> None:
    maps = FreshdeskAdapter.value_maps
    assert set(maps["ticket.priority"]) == {"low", "medium", "high", "urgent"}
    assert maps["ticket.status"] == {"open": 2, "pending": 3, "resolved": 4, "closed": 5}
    assert maps["ticket.source"]["email"] == 1 and maps["ticket.source"]["web"] == 2
    assert maps["ticket.source"]["phone"] == 3 and maps["ticket.source"]["wework"] == 7
    assert {maps["ticket.type"][c] for c in ("技术支持", "客户投诉", "产品反馈", "销售线索")} == {
        "Incident",
        "Problem",
        "Feature Request",
        "Question",
    }


def test_text_becomes_escaped_html() -> None:
    assert text_to_html("a <b>&\nc\n\n\nd") == "<p>a &lt;b&gt;&amp;<br>c</p><p>d</p>"


async def test_customer_text_is_escaped_not_rendered() -> None:
    event = with_changes(TECH, content='<script>alert("x")</script>\nline two')
    async with running() as (fake, freshdesk):
        await freshdesk.create(event, "ticket", ctx())
        description = sent(fake)["description"]
    assert "<script>" not in description
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;<br>line two" in description


async def test_a_ticket_without_any_requester_is_refused_before_sending() -> None:
    event = with_changes(TECH, sender={"email": None, "phone": None})
    async with running() as (fake, freshdesk):
        with pytest.raises(PermanentError) as info:
            await freshdesk.create(event, "ticket", ctx())
    assert info.value.code == "missing_field"
    assert not [r for r in fake.requests if r.path == "/api/v2/tickets"]


async def test_a_phone_only_requester_is_accepted() -> None:
    event = with_changes(TECH, sender={"email": None})
    async with running() as (fake, freshdesk):
        await freshdesk.create(event, "ticket", ctx())
        assert "email" not in sent(fake) and sent(fake)["phone"] == TECH.sender.phone


async def test_an_unknown_ticket_type_keeps_freshdesks_validation_message() -> None:
    event = with_changes(TECH, classification={"category": "其他"})
    async with running() as (_, freshdesk):
        with pytest.raises(PermanentError) as info:
            await freshdesk.create(event, "ticket", ctx())
    assert "type: It should be one of these values" in info.value.message
    assert info.value.code == "http_400"


async def test_a_wrong_api_key_is_an_auth_error_after_one_attempt() -> None:
    async with running(FreshdeskFake(api_key="another-key")) as (fake, freshdesk):
        with pytest.raises(AuthError):
            await freshdesk.create(TECH, "ticket", ctx())
    assert len([r for r in fake.requests if r.path == "/api/v2/tickets"]) == 1


async def test_the_per_minute_limit_answers_429_with_its_headers_and_is_classified() -> None:
    async with running(FreshdeskFake(rate_limit=(2, 60.0)), rateLimit={"requests": 100}) as (fake, freshdesk):
        await freshdesk.create(TECH, "ticket", ctx("a"))
        await freshdesk.create(TECH, "ticket", ctx("b"))
        with pytest.raises(RateLimitedError) as info:
            await freshdesk.create(TECH, "ticket", ctx("c"))
        assert info.value.retry_after is not None and 50 <= info.value.retry_after <= 60
        limiter = freshdesk.current_limiter()
        assert limiter is not None and limiter.paused_for > 50
    ok, _, rejected = fake.requests[-3:]
    assert ok.path == rejected.path == "/api/v2/tickets"
    assert fake.window is not None and fake.window.rejected == 1


def test_limit_headers_on_a_429_are_classified() -> None:
    response = Response(
        429,
        {"Retry-After": "17", "X-RateLimit-Total": "200", "X-RateLimit-Remaining": "0"},
        orjson.dumps({"message": "limit"}),
    )
    error = FreshdeskAdapter.spec.errors.classify(response)
    assert isinstance(error, RateLimitedError) and error.retry_after == 17.0


async def test_a_lost_answer_is_found_again_by_its_tag() -> None:
    async with running(FreshdeskFake(search_lag=0.0)) as (fake, freshdesk):
        fake.inject(Fault(504, "gateway timeout", after_effect=True, path_contains="/api/v2/tickets"))
        with pytest.raises(Exception):  # noqa: B017 - the class is covered by the conformance suite
            await freshdesk.create(TECH, "ticket", ctx())
        found = await freshdesk.find_existing(TECH, "ticket", ctx())
        other = await freshdesk.find_existing(TECH, "ticket", ctx("another-key"))
    assert found is not None and found.external_id == "1"
    assert other is None
    search = next(r for r in fake.requests if r.path == "/api/v2/search/tickets")
    assert search.query["query"] == f"\"tag:'{dedupe_tag(ctx().idempotency_key)}'\""


async def test_search_lag_means_cannot_tell_yet() -> None:
    async with running(FreshdeskFake(search_lag=30.0)) as (_, freshdesk):
        await freshdesk.create(TECH, "ticket", ctx())
        assert await freshdesk.find_existing(TECH, "ticket", ctx()) is None


async def test_the_dedupe_tag_can_be_switched_off() -> None:
    async with running(dedupeTag=False) as (fake, freshdesk):
        await freshdesk.create(TECH, "ticket", ctx())
        assert sent(fake)["tags"] == ["octopus", TECH.platform]
        assert await freshdesk.find_existing(TECH, "ticket", ctx()) is None


def _config(**changes: Any) -> IntegrationConfig:
    config = seed_entry("freshdesk", FreshdeskFake.ENV)["config"]
    config.update(changes)
    return IntegrationConfig.model_validate(config)


def test_seed_spellings_and_domain_are_accepted() -> None:
    adapter = FreshdeskAdapter("fd", _config(credentials={"api_key": "k"}, endpoints={"domain": "acme"}))
    assert adapter.base_url == "https://acme.freshdesk.com"
    adapter = FreshdeskAdapter("fd", _config(credentials={"apikey": "k"}, endpoints={"domain": "help.acme.com"}))
    assert adapter.base_url == "https://help.acme.com"


def test_configuration_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"credentials\.apiKey is required"):
        FreshdeskAdapter("fd", _config(credentials={}))
    with pytest.raises(ConfigError, match=r"endpoints\.baseUrl"):
        FreshdeskAdapter("fd", _config(endpoints={}))
    with pytest.raises(ConfigError, match=r"did you mean credentials\.apiKey"):
        FreshdeskAdapter("fd", _config(credentials={"apiKye": "k"}))


async def test_the_connection_test_reads_the_current_agent() -> None:
    async with running() as (fake, freshdesk):
        await freshdesk.test_connection()
    assert [r.path for r in fake.requests] == ["/api/v2/agents/me"]
