"""Airtable adapter against the Airtable fake over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.airtable import AirtableAdapter
from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.http import Request
from octopus_crm.core.errors import (
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
)
from octopus_crm_sandbox.airtable import AirtableFake
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import event_of, seed_config, with_changes

FEEDBACK = event_of("产品反馈")  # priority low
TECH = event_of("技术支持")  # priority urgent
TOKEN = AirtableFake.ENV["AIRTABLE_TOKEN"]
KEY = "evt-1:feedback-airtable:record"
TABLE_PATH = f"/v0/{AirtableFake.BASE_ID}/{AirtableFake.TABLE_ID}"


@asynccontextmanager
async def running(
    fake: AirtableFake | None = None, **overrides: Any
) -> AsyncIterator[tuple[AirtableFake, AirtableAdapter]]:
    fake = fake or AirtableFake()
    async with SandboxServer(fake):
        adapter = AirtableAdapter(*seed_config("airtable", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = KEY, **overrides: Any) -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="feedback-airtable", overrides=overrides)


def writes(fake: AirtableFake) -> list[Any]:
    return [r for r in fake.requests if r.method in ("POST", "PATCH")]


async def test_seed_record_is_upserted_on_the_key_field_with_typecast() -> None:
    async with running() as (fake, airtable):
        delivered = await airtable.create(FEEDBACK, "record", ctx())
    (request,) = writes(fake)
    assert (request.method, request.path) == ("PATCH", TABLE_PATH)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert orjson.loads(request.body) == {
        "records": [
            {
                "fields": {
                    "Name": FEEDBACK.sender.name,
                    "Message": FEEDBACK.content,
                    "Email": FEEDBACK.sender.email,
                    "Platform": FEEDBACK.platform,
                    "Category": "产品反馈",
                    "Priority": "Low",
                    "Octopus Key": KEY,
                }
            }
        ],
        "typecast": True,
        "performUpsert": {"fieldsToMergeOn": ["Octopus Key"]},
    }
    assert delivered.external_id.startswith("rec")
    assert (
        delivered.external_url
        == f"https://airtable.com/{AirtableFake.BASE_ID}/{AirtableFake.TABLE_ID}/{delivered.external_id}"
    )
    assert delivered.detail["createdTime"]


async def test_a_redelivery_updates_the_record_it_created() -> None:
    async with running() as (fake, airtable):
        first = await airtable.create(FEEDBACK, "record", ctx())
        again = await airtable.create(with_changes(FEEDBACK, content="edited"), "record", ctx())
        other = await airtable.create(FEEDBACK, "record", ctx("another-key"))
    assert first.external_id == again.external_id != other.external_id
    assert len(fake.records) == 2
    assert fake.records[first.external_id]["fields"]["Message"] == "edited"


async def test_without_key_field_or_merge_fields_it_is_a_plain_create() -> None:
    async with running(keyField=None) as (fake, airtable):
        await airtable.create(FEEDBACK, "record", ctx())
        await airtable.create(FEEDBACK, "record", ctx())
        assert await airtable.find_existing(FEEDBACK, "record", ctx()) is None
    assert [r.method for r in fake.requests] == ["POST", "POST"]
    assert "performUpsert" not in orjson.loads(fake.requests[0].body)
    assert len(fake.records) == 2


async def test_merging_on_customer_fields_keeps_one_row_per_sender() -> None:
    async with running(keyField=None, upsertOn=["Email"]) as (fake, airtable):
        first = await airtable.create(FEEDBACK, "record", ctx("a"))
        second = await airtable.create(with_changes(FEEDBACK, content="again"), "record", ctx("b"))
    assert first.external_id == second.external_id and len(fake.records) == 1
    assert orjson.loads(writes(fake)[1].body)["performUpsert"] == {"fieldsToMergeOn": ["Email"]}


async def test_find_existing_uses_a_formula_on_the_key_field_even_with_quotes() -> None:
    key = 'evt-"quoted"\\:feedback-airtable:record'
    async with running() as (fake, airtable):
        delivered = await airtable.create(FEEDBACK, "record", ctx(key))
        await airtable.create(FEEDBACK, "record", ctx("other"))
        found = await airtable.find_existing(FEEDBACK, "record", ctx(key))
        missing = await airtable.find_existing(FEEDBACK, "record", ctx("never"))
    assert found is not None and found.external_id == delivered.external_id and found.external_url
    assert missing is None
    lookup = next(r for r in fake.requests if r.method == "GET")
    assert lookup.query == {
        "filterByFormula": '{Octopus Key} = "evt-\\"quoted\\"\\\\:feedback-airtable:record"',
        "maxRecords": "1",
    }


async def test_typecast_off_lets_airtable_refuse_a_new_select_option() -> None:
    async with running(typecast=False) as (fake, airtable):
        with pytest.raises(PermanentError) as info:
            await airtable.create(FEEDBACK, "record", ctx(Category="未知"))
        assert info.value.status == 422 and "INVALID_MULTIPLE_CHOICE_OPTIONS" in info.value.message
        assert orjson.loads(writes(fake)[0].body)["typecast"] is False
    async with running() as (fake, airtable):
        await airtable.create(FEEDBACK, "record", ctx(Category="未知"))
    assert "未知" in fake.fields["Category"]["choices"]


async def test_an_unknown_field_keeps_airtables_message() -> None:
    async with running() as (_, airtable):
        with pytest.raises(PermanentError) as info:
            await airtable.create(FEEDBACK, "record", ctx(Nope="x"))
    assert info.value.message == 'Unknown field name: "Nope" (UNKNOWN_FIELD_NAME)'


async def test_priority_maps_to_title_case_options() -> None:
    async with running() as (fake, airtable):
        await airtable.create(TECH, "record", ctx())
    assert orjson.loads(writes(fake)[0].body)["records"][0]["fields"]["Priority"] == "Urgent"


async def test_a_table_name_is_quoted_into_the_path_and_gives_no_link() -> None:
    fake = AirtableFake()
    fake.TABLE_NAME = "Support Tickets"
    async with running(fake, tableId="Support Tickets") as (fake, airtable):
        delivered = await airtable.create(FEEDBACK, "record", ctx())
    assert writes(fake)[0].path == f"/v0/{AirtableFake.BASE_ID}/Support Tickets"
    assert delivered.external_url is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"tableId": "tbl1"}, "baseId and tableId are required"),
        ({"baseId": "app1"}, "baseId and tableId are required"),
        ({"baseId": "app1", "tableId": "tbl1", "upsertOn": ["a", "b", "c", "d"]}, "at most 3"),
        ({"baseId": "app1", "tableId": "tbl1", "mergeOnn": ["a"]}, "did you mean mergeOn"),
    ],
)
def test_settings_are_checked_at_load(config: dict[str, Any], message: str) -> None:
    raw = {"credentials": {"token": "pat1"}, "mappings": {"record": {"Name": "x"}}, **config}
    with pytest.raises(ConfigError, match=message):
        AirtableAdapter("a", IntegrationConfig.model_validate(raw))


def test_other_spellings_are_accepted() -> None:
    raw = {
        "credentials": {"personalAccessToken": "pat1"},
        "mappings": {"record": {"Name": "x"}},
        "base_id": "app1",
        "table": "tbl1",
        "idempotencyField": "Key",
        "fieldsToMergeOn": ["Email"],
    }
    airtable = AirtableAdapter("a", IntegrationConfig.model_validate(raw))
    assert (airtable.base_id, airtable.table, airtable.key_field, airtable.merge_on) == (
        "app1",
        "tbl1",
        "Key",
        ["Email"],
    )
    assert airtable.limit_scope == "airtable:base:app1"


async def test_a_429_waits_out_the_30_second_penalty_and_a_spent_quota_is_told_apart() -> None:
    limited = {"errors": [{"error": "RATE_LIMIT_REACHED", "message": "Rate limit exceeded. Please try again later"}]}
    async with running() as (fake, airtable):
        fake.inject(Fault(429, limited))
        with pytest.raises(RateLimitedError) as info:
            await airtable.create(FEEDBACK, "record", ctx())
        limiter = airtable.current_limiter()
        assert limiter is not None and limiter.paused_for > 29
    assert not isinstance(info.value, QuotaExhaustedError) and info.value.retry_after == 30.0
    billing = {"errors": [{"error": "PUBLIC_API_BILLING_LIMIT_EXCEEDED", "message": "API billing plan limit exceeded"}]}
    async with running() as (fake, airtable):
        fake.inject(Fault(429, billing))
        with pytest.raises(QuotaExhaustedError):
            await airtable.create(FEEDBACK, "record", ctx())


async def test_the_fake_refuses_the_base_for_the_penalty_after_a_429() -> None:
    fast = {"requests": 100, "concurrency": 4}
    async with running(AirtableFake(rate_limit=(1, 0.2), penalty=0.6), rateLimit=fast) as (_, airtable):
        await airtable.create(FEEDBACK, "record", ctx("a"))
        with pytest.raises(RateLimitedError):
            await airtable.create(FEEDBACK, "record", ctx("b"))
        await asyncio.sleep(0.3)  # the window has room again, the penalty has not passed
        with pytest.raises(RateLimitedError):
            await airtable.http.send(Request("GET", TABLE_PATH, paced=False))
        await asyncio.sleep(0.4)
        response = await airtable.http.send(Request("GET", TABLE_PATH, paced=False))
    assert response.status == 200 and len(orjson.loads(response.body)["records"]) == 1


@pytest.mark.parametrize("answer", [[1, 2], "a string", 42, None, {"records": "x"}, {"records": [{"id": ["rec"]}]}])
async def test_answers_of_an_undocumented_shape_are_typed_errors(answer: Any) -> None:
    async with running() as (fake, airtable):
        fake.inject(Fault(200, body=answer, path_contains="/v0/app"))
        with pytest.raises(DeliveryError):
            await airtable.create(FEEDBACK, "record", ctx())
        fake.inject(Fault(200, body={"records": [answer]}, path_contains="/v0/app"))
        with pytest.raises(DeliveryError):
            await airtable.find_existing(FEEDBACK, "record", ctx())
