"""Zoho CRM adapter against the Zoho fake over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.http import Response
from octopus_crm.adapters.registry import ADAPTERS
from octopus_crm.adapters.zoho import QUOTA_RETRY_AFTER, ZohoAdapter, classify
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
)
from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.zoho import ZohoFake
from tests.adapters.seed import event_of, seed_config, with_changes

LEAD_EVENT = event_of("销售线索")  # telegram, high
COMPLAINT = event_of("客户投诉")
TECH = event_of("技术支持")  # urgent


@asynccontextmanager
async def running(fake: ZohoFake | None = None, **overrides: Any) -> AsyncIterator[tuple[ZohoFake, Any]]:
    fake = fake or ZohoFake()
    async with SandboxServer(fake):
        adapter = ZohoAdapter(*seed_config("zoho", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:zoho-demo:lead") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="zoho-demo")


def api_calls(fake: ZohoFake) -> list[Any]:
    return [r for r in fake.requests if r.path.startswith("/crm/")]


def test_registered_under_its_aliases() -> None:
    for name in ("zoho", "zohocrm", "zoho-crm"):
        assert ADAPTERS[name] is ZohoAdapter


async def test_seed_lead_is_upserted_on_the_idempotency_field() -> None:
    async with running() as (fake, zoho):
        delivered = await zoho.create(LEAD_EVENT, "lead", ctx())
        token = next(r for r in fake.requests if r.path == "/oauth/v2/token")
        sent = api_calls(fake)[-1]
    form = dict(pair.split("=", 1) for pair in token.body.decode().split("&"))
    assert form["grant_type"] == "refresh_token"
    assert "refresh_token" in form and "refresh_token" not in token.query  # form body, not the URL
    assert sent.path == "/crm/v8/Leads/upsert"
    assert sent.headers["Authorization"].startswith("Zoho-oauthtoken 1000-")
    body = orjson.loads(sent.body)
    assert body["duplicate_check_fields"] == ["Octopus_Key"]
    assert "trigger" not in body  # omitted: Zoho runs the module's workflows
    record = body["data"][0]
    assert record["Octopus_Key"] == "evt-1:zoho-demo:lead"
    assert record["Last_Name"] == LEAD_EVENT.sender.name
    assert record["Lead_Source"] == "Chat"  # telegram
    assert delivered.external_id in fake.records
    assert delivered.external_url == f"{fake.base_url}/crm/tab/Leads/{delivered.external_id}"
    assert delivered.detail["action"] == "insert"


async def test_a_redelivery_updates_the_same_record() -> None:
    async with running() as (fake, zoho):
        first = await zoho.create(LEAD_EVENT, "lead", ctx())
        again = await zoho.create(LEAD_EVENT, "lead", ctx())
    assert again.external_id == first.external_id
    assert again.detail == {"action": "update", "duplicate_field": "Octopus_Key"}
    assert len(fake.records) == 1


async def test_the_tokens_api_domain_is_where_records_go() -> None:
    # dataCenter com.cn would send calls to www.zohoapis.com.cn; the token says the fake.
    async with running() as (fake, zoho):
        await zoho.create(LEAD_EVENT, "lead", ctx())
    assert api_calls(fake)


async def test_a_plain_insert_taking_a_unique_value_returns_the_existing_record() -> None:
    fake = ZohoFake(unique_fields={"Leads": ("Email",)})
    async with running(fake, idempotencyField=None) as (fake, zoho):
        first = await zoho.create(LEAD_EVENT, "lead", ctx("a"))
        again = await zoho.create(LEAD_EVENT, "lead", ctx("b"))
        paths = [r.path for r in api_calls(fake)]
    assert paths == ["/crm/v8/Leads", "/crm/v8/Leads"]
    assert again.external_id == first.external_id
    assert again.detail == {"duplicate": "Email"}
    assert len(fake.records) == 1


async def test_duplicate_check_fields_and_trigger_are_sent_as_configured() -> None:
    overrides: dict[str, Any] = {"idempotencyField": None, "duplicateCheckFields": {"lead": ["Email"]}, "trigger": []}
    async with running(**overrides) as (fake, zoho):
        await zoho.create(LEAD_EVENT, "lead", ctx())
        body = orjson.loads(api_calls(fake)[-1].body)
    assert body["duplicate_check_fields"] == ["Email"]
    assert body["trigger"] == []


async def test_case_and_task_value_maps() -> None:
    async with running() as (fake, zoho):
        await zoho.create(TECH, "case", ctx("evt-2:zoho-demo:case"))
        case = orjson.loads(api_calls(fake)[-1].body)["data"][0]
        await zoho.create(TECH, "task", ctx("evt-2:zoho-demo:task"))
        task_call = api_calls(fake)[-1]
    assert case["Priority"] == "High"  # urgent → High (Cases have no Highest)
    assert case["Case_Origin"] == "Web"  # whatsapp
    assert task_call.path == "/crm/v8/Tasks/upsert"  # one idempotencyField name serves every module
    assert orjson.loads(task_call.body)["data"][0]["Priority"] == "Highest"


async def test_a_per_record_error_names_the_field() -> None:
    async with running(mappings={"lead": {"Last_Name": "{{senderName}}", "Email": "not-an-email"}}) as (_, zoho):
        with pytest.raises(PermanentError, match=r"INVALID_DATA.*\[Email\]") as info:
            await zoho.create(LEAD_EVENT, "lead", ctx())
    assert info.value.code == "zoho_INVALID_DATA"
    async with running(mappings={"lead": {"Company": "{{tenantName}}"}}) as (_, zoho):
        with pytest.raises(PermanentError, match=r"MANDATORY_NOT_FOUND.*\[Last_Name\]"):
            await zoho.create(LEAD_EVENT, "lead", ctx())


def _response(status: int, body: Any, **headers: str) -> Response:
    return Response(status, headers, orjson.dumps(body))


def test_classification_of_zoho_answers() -> None:
    ok = {"data": [{"code": "SUCCESS", "details": {"id": "1"}, "message": "record added", "status": "success"}]}
    assert classify(_response(201, ok)) is None
    assert classify(_response(204, None)) is None
    failed = {"data": [{"code": "INVALID_DATA", "details": {}, "message": "invalid data", "status": "error"}]}
    assert isinstance(classify(_response(207, failed)), PermanentError)
    dup = {"data": [{"code": "DUPLICATE_DATA", "details": {"id": "9"}, "message": "duplicate data", "status": "error"}]}
    assert classify(_response(400, dup)) is None  # the existing record is the delivered one
    short = classify(
        _response(429, {"code": "TOO_MANY_REQUESTS", "message": "m", "status": "error"}, **{"Retry-After": "3"})
    )
    assert isinstance(short, RateLimitedError) and not isinstance(short, QuotaExhaustedError)
    assert short.retry_after == 3
    spent = classify(_response(429, {"code": "LIMIT_EXCEEDED", "message": "m", "status": "error"}))
    assert isinstance(spent, QuotaExhaustedError) and spent.retry_after == QUOTA_RETRY_AFTER
    expired = classify(_response(401, {"code": "INVALID_TOKEN", "message": "invalid oauth token", "status": "error"}))
    assert expired is not None and expired.retriable


async def test_credit_exhaustion_is_a_quota_and_concurrency_a_short_limit() -> None:
    async with running(ZohoFake(credits=1)) as (_, zoho):
        await zoho.create(LEAD_EVENT, "lead", ctx("a"))
        with pytest.raises(QuotaExhaustedError):
            await zoho.create(LEAD_EVENT, "lead", ctx("b"))
    async with running(ZohoFake(rate_limit=(1, 60))) as (_, zoho):
        await zoho.create(LEAD_EVENT, "lead", ctx("a"))
        with pytest.raises(RateLimitedError) as info:
            await zoho.create(LEAD_EVENT, "lead", ctx("b"))
    assert not isinstance(info.value, QuotaExhaustedError)
    assert info.value.retry_after is not None and info.value.retry_after > 50


async def test_a_bad_refresh_token_answered_200_is_an_auth_error() -> None:
    fake = ZohoFake()
    fake.accepted["refreshToken"] = "revoked"
    async with running(fake) as (_, zoho):
        with pytest.raises(AuthError, match="invalid_code"):
            await zoho.create(LEAD_EVENT, "lead", ctx())


async def test_too_many_token_requests_is_rate_limited() -> None:
    async with running() as (fake, zoho):
        for _ in range(10):
            fake.token_window.hit()
        with pytest.raises(RateLimitedError) as info:
            await zoho.create(LEAD_EVENT, "lead", ctx())
    assert info.value.retry_after == 600


async def test_find_existing_searches_the_idempotency_field() -> None:
    key = "evt-(1):zoho-demo:lead"
    async with running() as (fake, zoho):
        assert await zoho.find_existing(LEAD_EVENT, "lead", ctx(key)) is None  # 204: no match
        delivered = await zoho.create(LEAD_EVENT, "lead", ctx(key))
        found = await zoho.find_existing(LEAD_EVENT, "lead", ctx(key))
        search = [r for r in api_calls(fake) if r.path.endswith("/search")][-1]
    assert found is not None and found.external_id == delivered.external_id
    assert search.query["criteria"] == r"(Octopus_Key:equals:evt-\(1\):zoho-demo:lead)"


async def test_the_connection_test_reads_one_record() -> None:
    async with running() as (fake, zoho):
        await zoho.test_connection()
    assert [(r.method, r.path, r.query.get("per_page")) for r in api_calls(fake)] == [("GET", "/crm/v8/Leads", "1")]


@pytest.mark.parametrize(
    ("written", "accounts", "api"),
    [
        (None, "https://accounts.zoho.com", "https://www.zohoapis.com"),
        ("eu", "https://accounts.zoho.eu", "https://www.zohoapis.eu"),
        (".com.cn", "https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
        ("cn", "https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
        ("com.au", "https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
        ("jp", "https://accounts.zoho.jp", "https://www.zohoapis.jp"),
        ("in", "https://accounts.zoho.in", "https://www.zohoapis.in"),
        ("ca", "https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
        ("sa", "https://accounts.zoho.sa", "https://www.zohoapis.sa"),
    ],
)
def test_data_centres(written: str | None, accounts: str, api: str) -> None:
    endpoints = {"dc": written} if written else {}
    config = {
        "credentials": {"client_id": "c", "client_secret": "s", "refresh_token": "r"},
        "endpoints": endpoints,
        "mappings": {"lead": {"Last_Name": "{{senderName}}"}},
    }
    zoho = ZohoAdapter("z", IntegrationConfig.model_validate(config))
    assert zoho.accounts_url == accounts
    assert zoho.base_url == f"{api}/crm/v8"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"endpoints": {"dataCenter": "mars"}}, "dataCenter must be one of"),
        ({"endpoints": {"apiVersion": "v1"}}, "apiVersion"),
        ({"credentials": {"clientId": "c", "clientSecret": "s"}}, "refreshToken is required"),
        ({"idempotencyField": "Octopus Key"}, "not a field API name"),
        ({"mappings": {"deal": {"Deal_Name": "x"}}}, "no object type 'deal'"),
        ({"duplicateCheckFeilds": ["Email"]}, "did you mean duplicateCheckFields"),
    ],
)
def test_bad_configs_fail_at_load(changes: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {
        "credentials": {"clientId": "c", "clientSecret": "s", "refreshToken": "r"},
        "mappings": {"lead": {"Last_Name": "{{senderName}}"}},
    }
    config.update(changes)
    with pytest.raises(ConfigError, match=message):
        ZohoAdapter("z", IntegrationConfig.model_validate(config))


async def test_text_arrives_byte_for_byte() -> None:
    content = 'Refund "now" (订单 #12)\nsecond line 😀'
    async with running() as (fake, zoho):
        delivered = await zoho.create(with_changes(LEAD_EVENT, content=content), "lead", ctx())
    assert fake.records[delivered.external_id]["fields"]["Description"].endswith(content)
