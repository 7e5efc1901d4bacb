"""Dynamics 365 / Dataverse adapter against the Dataverse fake over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.dynamics365 import Dynamics365Adapter, key_value
from octopus_crm.adapters.registry import ADAPTERS
from octopus_crm.core.errors import AuthError, ConfigError, PermanentError, RateLimitedError
from octopus_crm_sandbox.dynamics365 import ACCOUNT_ID, CONTACT_ID, DynamicsFake
from octopus_crm_sandbox.kit import SandboxServer
from tests.adapters.seed import event_of, seed_config

LEAD_EVENT = event_of("销售线索")
COMPLAINT = event_of("客户投诉")
GUID_LEN = 36


@asynccontextmanager
async def running(fake: DynamicsFake | None = None, **overrides: Any) -> AsyncIterator[tuple[DynamicsFake, Any]]:
    fake = fake or DynamicsFake()
    async with SandboxServer(fake):
        adapter = Dynamics365Adapter(*seed_config("dynamics365", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:dynamics-demo:lead") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="dynamics-demo")


def data_calls(fake: DynamicsFake) -> list[Any]:
    return [r for r in fake.requests if r.path.startswith("/api/data/")]


def test_registered_under_its_aliases() -> None:
    for name in ("dynamics365", "dynamics", "dataverse"):
        assert ADAPTERS[name] is Dynamics365Adapter


async def test_seed_lead_is_a_create_only_upsert_by_alternate_key() -> None:
    async with running() as (fake, dynamics):
        delivered = await dynamics.create(LEAD_EVENT, "lead", ctx())
        token = next(r for r in fake.requests if r.path.endswith("/oauth2/v2.0/token"))
        form = dict(pair.split("=", 1) for pair in token.body.decode().split("&"))
        sent = data_calls(fake)[-1]
    assert token.path == f"/{DynamicsFake.ENV['DYNAMICS_TENANT_ID']}/oauth2/v2.0/token"
    assert form["grant_type"] == "client_credentials"
    assert form["scope"].endswith("%2F.default")
    assert sent.method == "PATCH"
    assert sent.path == "/api/data/v9.2/leads(octopus_idempotencykey='evt-1:dynamics-demo:lead')"
    assert sent.headers["If-None-Match"] == "*"
    assert "If-Match" not in sent.headers
    for name, value in {"OData-MaxVersion": "4.0", "OData-Version": "4.0", "Accept": "application/json"}.items():
        assert sent.headers[name] == value
    assert sent.headers["Authorization"].startswith("Bearer eyJ0-")
    assert len(delivered.external_id) == GUID_LEN
    assert (
        delivered.external_url == f"{fake.base_url}/main.aspx?etn=lead&id={delivered.external_id}&pagetype=entityrecord"
    )
    record = fake.records[delivered.external_id]
    assert record["fields"]["lastname"] == LEAD_EVENT.sender.name
    assert record["fields"]["leadqualitycode"] == 1  # high → Hot
    assert record["fields"]["octopus_idempotencykey"] == "evt-1:dynamics-demo:lead"


async def test_a_redelivery_gets_412_and_returns_the_existing_row() -> None:
    async with running() as (fake, dynamics):
        first = await dynamics.create(LEAD_EVENT, "lead", ctx())
        again = await dynamics.create(LEAD_EVENT, "lead", ctx())
        statuses = [r.method for r in data_calls(fake)]
    assert again.external_id == first.external_id
    assert len(fake.records) == 1
    assert statuses == ["PATCH", "PATCH", "GET"]


async def test_without_an_alternate_key_a_post_answers_204_with_the_entity_id() -> None:
    fake = DynamicsFake()
    async with SandboxServer(fake):
        integration_id, config = seed_config("dynamics365", fake)
        raw = config.model_dump()
        raw["endpoints"].pop("alternateKey")
        dynamics = Dynamics365Adapter(integration_id, IntegrationConfig.model_validate(raw))
        try:
            delivered = await dynamics.create(LEAD_EVENT, "lead", ctx())
            assert await dynamics.find_existing(LEAD_EVENT, "lead", ctx()) is None
        finally:
            await dynamics.aclose()
    sent = data_calls(fake)[-1]
    assert (sent.method, sent.path) == ("POST", "/api/data/v9.2/leads")
    assert "Prefer" not in sent.headers
    assert delivered.external_id in fake.records


async def test_return_representation_reads_the_id_from_the_201_body() -> None:
    async with running(endpoints={"returnRepresentation": True}) as (fake, dynamics):
        delivered = await dynamics.create(LEAD_EVENT, "lead", ctx())
        sent = data_calls(fake)[-1]
    assert sent.headers["Prefer"] == "return=representation"
    assert sent.query["$select"] == "leadid"
    assert delivered.external_id in fake.records


async def test_a_case_binds_its_customer_and_maps_priority() -> None:
    async with running() as (fake, dynamics):
        delivered = await dynamics.create(COMPLAINT, "case", ctx("evt-2:dynamics-demo:case"))
        sent = data_calls(fake)[-1]
    assert sent.path.startswith("/api/data/v9.2/incidents(")
    fields = orjson.loads(sent.body)
    assert fields["customerid_account@odata.bind"] == f"/accounts({ACCOUNT_ID})"
    assert "customerid" not in fields
    assert fields["prioritycode"] == 1  # high → High
    assert "etn=incident" in (delivered.external_url or "")


@pytest.mark.parametrize(
    ("written", "bound"),
    [
        (f"contact:{CONTACT_ID}", ("customerid_contact@odata.bind", f"/contacts({CONTACT_ID})")),
        (f"/accounts({ACCOUNT_ID})", ("customerid_account@odata.bind", f"/accounts({ACCOUNT_ID})")),
        (ACCOUNT_ID, ("customerid_account@odata.bind", f"/accounts({ACCOUNT_ID})")),
    ],
)
async def test_customer_spellings(written: str, bound: tuple[str, str]) -> None:
    mappings = {"case": {"title": "{{category}}", "customerid": written}}
    async with running(mappings=mappings) as (fake, dynamics):
        await dynamics.create(COMPLAINT, "case", ctx("evt-3:dynamics-demo:case"))
        fields = orjson.loads(data_calls(fake)[-1].body)
    assert fields[bound[0]] == bound[1]


async def test_a_bad_or_unknown_customer_is_permanent() -> None:
    async with running(mappings={"case": {"title": "x", "customerid": "{{senderName}}"}}) as (_, dynamics):
        with pytest.raises(PermanentError, match="customerid"):
            await dynamics.create(COMPLAINT, "case", ctx())
    unknown = "11111111-2222-3333-4444-555555555555"
    async with running(mappings={"case": {"title": "x", "customerid": f"account:{unknown}"}}) as (_, dynamics):
        with pytest.raises(PermanentError, match="0x80040217"):
            await dynamics.create(COMPLAINT, "case", ctx())


async def test_vendor_validation_errors_keep_the_dataverse_code() -> None:
    async with running(mappings={"lead": {"subject": "x", "nickname": "{{senderName}}"}}) as (_, dynamics):
        with pytest.raises(PermanentError, match=r"0x80048d19.*nickname") as info:
            await dynamics.create(LEAD_EVENT, "lead", ctx())
    assert info.value.status == 400
    async with running(mappings={"lead": {"subject": "y" * 301}}) as (_, dynamics):
        with pytest.raises(PermanentError, match="0x80044331"):
            await dynamics.create(LEAD_EVENT, "lead", ctx())


async def test_service_protection_429_is_rate_limited_with_retry_after() -> None:
    async with running(DynamicsFake(rate_limit=(1, 60))) as (_, dynamics):
        await dynamics.create(LEAD_EVENT, "lead", ctx("a"))
        with pytest.raises(RateLimitedError, match="0x80072322") as info:
            await dynamics.create(LEAD_EVENT, "lead", ctx("b"))
    assert info.value.status == 429
    assert info.value.retry_after is not None and 55 <= info.value.retry_after <= 60


async def test_a_wrong_secret_is_an_auth_error() -> None:
    fake = DynamicsFake()
    fake.accepted["clientSecret"] = "rotated"
    async with running(fake) as (_, dynamics):
        with pytest.raises(AuthError, match="AADSTS7000215"):
            await dynamics.create(LEAD_EVENT, "lead", ctx())


async def test_the_connection_test_is_who_am_i() -> None:
    async with running() as (fake, dynamics):
        await dynamics.test_connection()
    assert [r.path for r in data_calls(fake)] == ["/api/data/v9.2/WhoAmI"]
    assert fake.records == {}


def _config(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "credentials": {"tenant_id": "t", "client_id": "c", "client_secret": "s"},
        "endpoints": {"orgUrl": "https://acme.crm4.dynamics.com/api/data/v9.2/"},
        "mappings": {"lead": {"subject": "{{category}}"}},
    }
    base.update(changes)
    return base


def test_the_users_spellings_are_accepted() -> None:
    adapter = Dynamics365Adapter("d", IntegrationConfig.model_validate(_config()))
    assert adapter.base_url == "https://acme.crm4.dynamics.com/api/data/v9.2"
    assert (
        adapter.record_url("case", "g")
        == "https://acme.crm4.dynamics.com/main.aspx?etn=incident&id=g&pagetype=entityrecord"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"credentials": {"client_id": "c", "client_secret": "s"}}, "tenantId is required"),
        ({"endpoints": {}}, "baseUrl is required"),
        ({"mappings": {"case": {"title": "x"}}}, "customerid is required"),
        ({"alternateKey": "Bad Name"}, "not a column"),
        ({"endpoints": {"baseUrl": "https://a.crm.dynamics.com", "apiVersion": "latest"}}, "v9.2"),
        ({"endpoints": {"baseUrl": "https://a.crm.dynamics.com", "alternatKey": "x"}}, "did you mean"),
    ],
)
def test_bad_configs_fail_at_load(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Dynamics365Adapter("d", IntegrationConfig.model_validate(_config(**changes)))


def test_long_keys_are_hashed_to_fit_the_column() -> None:
    assert key_value("short") == "short"
    assert len(key_value("k" * 300)) == 64
