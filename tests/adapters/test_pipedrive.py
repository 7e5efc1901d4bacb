"""Pipedrive adapter against the Pipedrive fake over real loopback HTTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.pipedrive import PipedriveAdapter, origin_marker, seconds_until_utc_midnight
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.pipedrive import PipedriveFake
from tests.adapters.seed import event_of, seed_config, with_changes

SALES = event_of("销售线索")  # 王小明 <user0@example.com>, +86 138 0000 0000
TOKEN = PipedriveFake.ENV["PIPEDRIVE_API_TOKEN"]
FAST = {"requests": 1000, "perSeconds": 1, "concurrency": 16}


@asynccontextmanager
async def running(
    fake: PipedriveFake | None = None, **overrides: Any
) -> AsyncIterator[tuple[PipedriveFake, PipedriveAdapter]]:
    fake = fake or PipedriveFake()
    overrides.setdefault("rateLimit", FAST)
    async with SandboxServer(fake):
        adapter = PipedriveAdapter(*seed_config("pipedrive", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:sales-pipedrive:lead") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="sales-pipedrive")


def sent(fake: PipedriveFake, method: str, path: str) -> list[Any]:
    return [r for r in fake.requests if r.method == method and r.path == path]


async def test_a_seed_lead_gets_the_sender_as_its_person() -> None:
    async with running() as (fake, pipedrive):
        delivered = await pipedrive.create(SALES, "lead", ctx())
    (search,) = sent(fake, "GET", "/api/v2/persons/search")
    assert search.query == {"term": "user0@example.com", "fields": "email", "exact_match": "true", "limit": "1"}
    (person_request,) = sent(fake, "POST", "/api/v2/persons")
    assert orjson.loads(person_request.body) == {
        "name": "王小明",
        "emails": [{"value": "user0@example.com", "primary": True, "label": "work"}],
        "phones": [{"value": SALES.sender.phone, "primary": True, "label": "work"}],
    }
    (lead_request,) = sent(fake, "POST", "/api/v1/leads")
    (person_id,) = (p["id"] for p in fake.store["person"].values())
    assert orjson.loads(lead_request.body) == {
        "title": f"销售线索 - 王小明 ({SALES.platform})",
        "origin_id": origin_marker(ctx().idempotency_key),
        "person_id": person_id,
    }
    assert re.fullmatch(r"[0-9a-f-]{36}", delivered.external_id)  # lead ids are UUIDs
    assert delivered.external_url == f"{fake.base_url}/leads/inbox/{delivered.external_id}"
    assert all(r.headers.get("x-api-token") == TOKEN and "api_token" not in r.query for r in fake.requests)
    assert not [r for r in fake.requests if r.path in ("/api/v1/persons", "/api/v1/deals")]  # out of support


async def test_retries_and_redeliveries_never_make_a_second_person() -> None:
    fake = PipedriveFake(search_lag=60.0)  # search never shows the new person in time
    async with running(fake) as (fake, pipedrive):
        fake.inject(Fault(503, {"success": False, "error": "Service unavailable"}, path_contains="/api/v1/leads"))
        with pytest.raises(RetryableError):
            await pipedrive.create(SALES, "lead", ctx())
        await pipedrive.create(SALES, "lead", ctx())
        await pipedrive.create(SALES, "lead", ctx("evt-2:sales-pipedrive:lead"))
    assert len(fake.store["person"]) == 1 and len(fake.store["lead"]) == 2


async def test_concurrent_leads_of_one_new_sender_create_one_person() -> None:
    async with running() as (fake, pipedrive):
        await asyncio.gather(*(pipedrive.create(SALES, "lead", ctx(f"evt-{i}")) for i in range(5)))
    assert len(fake.store["person"]) == 1 and len(fake.store["lead"]) == 5


async def test_an_existing_person_is_found_not_created() -> None:
    async with running() as (fake, pipedrive):
        await pipedrive.create(SALES, "person", ctx("evt-0:sales-pipedrive:person"))
    async with running(fake) as (fake, fresh):  # a new adapter: nothing cached, search answers
        again = await fresh.create(SALES, "person", ctx("evt-9:sales-pipedrive:person"))
        await fresh.create(SALES, "lead", ctx())
    assert len(fake.store["person"]) == 1
    assert again.detail == {"existing": True} and again.external_url == f"{fake.base_url}/person/{again.external_id}"


async def test_a_sender_without_email_is_found_by_phone() -> None:
    no_email = with_changes(SALES, sender={"email": None})
    async with running() as (fake, pipedrive):
        await pipedrive.create(no_email, "lead", ctx())
    async with running(fake) as (fake, fresh):
        await fresh.create(no_email, "lead", ctx("evt-2"))
    assert len(fake.store["person"]) == 1
    assert sent(fake, "GET", "/api/v2/persons/search")[0].query["fields"] == "phone"


async def test_deals_activities_and_lead_values_in_pipedrives_shapes() -> None:
    mappings = {
        "deal": {"title": "{{category}}", "value": 1200, "currency": "EUR"},
        "activity": {"subject": "Call {{senderName}}", "type": "call", "note": "{{messageContent}}"},
        "lead": {"title": "{{category}}", "value": 500, "currency": "CNY"},
    }
    async with running(mappings=mappings) as (fake, pipedrive):
        deal = await pipedrive.create(SALES, "deal", ctx("evt-1:d"))
        activity = await pipedrive.create(SALES, "activity", ctx("evt-1:a"))
        await pipedrive.create(SALES, "lead", ctx("evt-1:l"))
    stored_deal = fake.store["deal"][deal.external_id]
    assert stored_deal["value"] == 1200 and stored_deal["currency"] == "EUR"
    assert stored_deal["origin_id"] == origin_marker("evt-1:d") and isinstance(stored_deal["person_id"], int)
    assert deal.external_url == f"{fake.base_url}/deal/{deal.external_id}"
    assert fake.store["activity"][activity.external_id]["subject"] == "Call 王小明" and activity.external_url is None
    (lead,) = fake.store["lead"].values()
    assert lead["value"] == {"amount": 500.0, "currency": "CNY"}


async def test_an_ambiguous_lead_or_deal_is_found_by_its_origin_marker() -> None:
    async with running() as (fake, pipedrive):
        for kind in ("lead", "deal"):
            key = f"evt-7:sales-pipedrive:{kind}"
            assert await pipedrive.find_existing(SALES, kind, ctx(key)) is None
            fake.inject(Fault(504, "gateway timeout", after_effect=True, path_contains=f"/{kind}s"))
            with pytest.raises(RetryableError):
                await pipedrive.create(SALES, kind, ctx(key))
            found = await pipedrive.find_existing(SALES, kind, ctx(key))
            assert found is not None and found.external_id in fake.store[kind]
            assert await pipedrive.find_existing(SALES, kind, ctx("another")) is None


async def test_success_false_and_validation_errors_are_permanent_with_pipedrives_words() -> None:
    mappings = {"deal": {"title": ""}, "person": {"name": "{{senderName}}"}}
    async with running(mappings=mappings) as (fake, pipedrive):
        with pytest.raises(PermanentError) as info:
            await pipedrive.create(SALES, "deal", ctx())
        assert info.value.status == 400 and "title" in info.value.message
        fake.inject(Fault(200, {"success": False, "error": "Lead not saved", "data": None}))
        with pytest.raises(PermanentError) as info:
            await pipedrive.create(SALES, "person", ctx())
        assert info.value.code == "success_false" and "Lead not saved" in info.value.message


async def test_a_spent_daily_budget_is_a_quota_until_utc_midnight() -> None:
    async with running(PipedriveFake(daily_budget=2)) as (fake, pipedrive):
        await pipedrive.create(SALES, "lead", ctx())  # person + lead: the budget
        with pytest.raises(QuotaExhaustedError) as info:
            await pipedrive.create(SALES, "lead", ctx("evt-2"))
    assert info.value.retry_after is not None
    assert abs(info.value.retry_after - seconds_until_utc_midnight()) < 5
    assert len(fake.store["lead"]) == 1


async def test_the_burst_window_headers_hold_one_slot_and_a_short_429_waits_retry_after() -> None:
    async with running() as (fake, pipedrive):
        headers = {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"}
        fake.inject(Fault(200, {"success": True, "data": {"id": 5}}, headers=headers, body_contains='"name"'))
        await pipedrive.create(SALES, "activity", ctx())  # no person needed: nothing held yet
        limiter = pipedrive.current_limiter()
        assert limiter is not None and limiter.paused_for == 0
        await pipedrive.create(SALES, "person", ctx())
        assert 0 < limiter.paused_for <= 0.1  # a rolling 2 s window of 20: one slot
        fake.inject(Fault(429, {"success": False, "error": "Request over limit"}, headers={"Retry-After": "3"}))
        with pytest.raises(RateLimitedError) as info:
            await pipedrive.create(SALES, "activity", ctx("evt-3"))
    assert not isinstance(info.value, QuotaExhaustedError) and info.value.retry_after == 3


async def test_oauth_and_the_seeds_other_spellings() -> None:
    fake = PipedriveFake()
    async with running(fake, authType="oauth", credentials={"accessToken": fake.accepted["accessToken"]}) as (_, pd):
        await pd.test_connection()
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {fake.accepted['accessToken']}"
    config = IntegrationConfig.model_validate(
        {
            "credentials": {"api_token": "t"},
            "endpoints": {"company_domain": "acme"},
            "mappings": {"person": {"name": "{{senderName}}"}},
        }
    )
    adapter = PipedriveAdapter("p", config)
    assert adapter.base_url == "https://acme.pipedrive.com" and adapter.ui_url == adapter.base_url
    default = PipedriveAdapter("p", config.model_copy(update={"endpoints": {}}))
    assert default.base_url == "https://api.pipedrive.com" and default.ui_url == "https://app.pipedrive.com"


def test_bad_settings_fail_at_load() -> None:
    def build(**changes: Any) -> PipedriveAdapter:
        base = {"credentials": {"apiToken": "t"}, "mappings": {"lead": {"title": "x"}}}
        return PipedriveAdapter("p", IntegrationConfig.model_validate({**base, **changes}))

    with pytest.raises(ConfigError, match=re.escape("credentials.apiToken")):
        build(credentials={})
    with pytest.raises(ConfigError, match=re.escape("endpoints.companyDomain")):
        build(endpoints={"companyDomain": "evil.example.com/x"})
    with pytest.raises(ConfigError, match="unknown key"):
        build(personFromSendr=False)


async def test_a_lead_value_needs_a_currency_and_a_deal_value_becomes_a_number() -> None:
    mappings = {"lead": {"title": "x", "value": 500}, "deal": {"title": "x", "value": "1,200"}}
    async with running(mappings=mappings) as (fake, pipedrive):
        with pytest.raises(ConfigError, match="currency"):
            await pipedrive.create(SALES, "lead", ctx())
        deal = await pipedrive.create(SALES, "deal", ctx())
    assert fake.store["deal"][deal.external_id]["value"] == 1200.0


async def test_concurrent_persons_with_one_email_are_one_person() -> None:
    async with running() as (fake, pipedrive):
        results = await asyncio.gather(*(pipedrive.create(SALES, "person", ctx(f"evt-{i}")) for i in range(4)))
    assert len(fake.store["person"]) == 1 and len({r.external_id for r in results}) == 1
    assert sorted(bool(r.detail) for r in results) == [False, True, True, True]


async def test_without_a_sender_person_a_lead_must_name_one() -> None:
    async with running(personFromSender=False) as (fake, pipedrive):
        with pytest.raises(ConfigError, match="person_id or organization_id"):
            await pipedrive.create(SALES, "lead", ctx())
    assert fake.store["lead"] == {}


async def test_a_bad_token_is_final() -> None:
    async with running(credentials={"apiToken": "wrong"}) as (fake, pipedrive):
        with pytest.raises(AuthError) as info:
            await pipedrive.create(SALES, "activity", ctx())
    assert "authorized" in info.value.message and len(fake.requests) == 1


@pytest.mark.parametrize("shape", [[1, 2], "a string", 42, None, {"success": True, "data": [1]}])
async def test_an_undocumented_answer_is_a_typed_error(shape: Any) -> None:
    async with running() as (fake, pipedrive):
        fake.inject(Fault(200, shape, path_contains="/api/v1/leads"))
        with pytest.raises(DeliveryError):
            await pipedrive.create(SALES, "lead", ctx())
        fake.inject(Fault(200, shape, path_contains="/persons/search"))
        fake.inject(Fault(200, shape, path_contains="/api/v1/leads"))
        assert await pipedrive.find_existing(SALES, "lead", ctx("evt-new")) is None


def test_the_plan_and_oauth_pick_the_burst_pace() -> None:
    def limit(**changes: Any) -> float:
        base = {"credentials": {"apiToken": "t", "accessToken": "o"}, "mappings": {"lead": {"title": "x"}}}
        adapter = PipedriveAdapter("p", IntegrationConfig.model_validate({**base, **changes}))
        assert adapter.rate_limit.per_seconds == 2
        return adapter.rate_limit.requests

    assert limit() == 20 and limit(plan="professional") == 80
    assert limit(authType="oauth") == 80 and limit(authType="oauth", plan="enterprise") == 480
    assert limit(plan="power", rateLimit={"requests": 5, "perSeconds": 2}) == 5


async def test_an_oauth_app_trades_its_refresh_token_with_the_client_in_basic_auth() -> None:
    fake = PipedriveFake()
    credentials = {k: fake.accepted[k] for k in ("clientId", "clientSecret", "refreshToken")}
    async with running(fake, authType="oauth2", credentials=credentials) as (fake, pipedrive):
        await pipedrive.create(SALES, "activity", ctx())
        fake.expire_tokens()
        await pipedrive.create(SALES, "activity", ctx("evt-2"))
    first, _ = [r for r in fake.requests if r.path == "/oauth/token"]
    assert first.body == b"grant_type=refresh_token&refresh_token=pd-fake-refresh-token"
    assert first.headers["Authorization"].startswith("Basic ") and fake.token_requests == 2
    assert sent(fake, "POST", "/api/v2/activities")[-1].headers["Authorization"].startswith("Bearer tok-")
    wrong = {**credentials, "clientSecret": "nope"}
    async with running(PipedriveFake(), authType="oauth2", credentials=wrong) as (_, pipedrive):
        with pytest.raises(AuthError):
            await pipedrive.create(SALES, "activity", ctx())
