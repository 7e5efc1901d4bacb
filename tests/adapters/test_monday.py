"""monday.com adapter against the monday fake over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.monday import API_VERSION, CREATE, PRIORITY_MONDAY, MondayAdapter, dedupe_marker
from octopus_crm.core.errors import (
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.monday import BOARD_ID, MondayFake
from tests.adapters.seed import event_of, seed_config, with_changes

LEAD = event_of("销售线索")


@asynccontextmanager
async def running(fake: MondayFake | None = None, **overrides: Any) -> AsyncIterator[tuple[MondayFake, MondayAdapter]]:
    fake = fake or MondayFake()
    async with SandboxServer(fake):
        adapter = MondayAdapter(*seed_config("monday", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:ops-monday:item") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="ops-monday")


def sent(fake: MondayFake) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in fake.requests if b"create_item" in r.body]


async def test_the_seed_mapping_creates_an_item_with_json_encoded_column_values() -> None:
    async with running() as (fake, monday):
        delivered = await monday.create(LEAD, "item", ctx())
    (body,) = sent(fake)
    assert body["query"] == CREATE
    variables = body["variables"]
    assert variables["board"] == BOARD_ID and variables["labels"] is False and "group" not in variables
    assert variables["name"] == f"销售线索 - {LEAD.sender.name}"
    assert isinstance(variables["columns"], str)  # monday wants a JSON-encoded string
    cells = orjson.loads(variables["columns"])
    assert cells["status"] == "待处理"
    assert cells["priority"] == PRIORITY_MONDAY[LEAD.classification.priority]
    assert cells["content"] == LEAD.content and cells["customer_name"] == LEAD.sender.name
    assert cells["received_date"] == LEAD.receivedAt.strftime("%Y-%m-%d %H:%M:%S")  # a date column's format
    item = fake.records[delivered.external_id]
    assert item["column_values"] == cells and delivered.external_url == item["url"]
    headers = fake.requests[-1].headers
    assert headers["Authorization"] == MondayFake.ENV["MONDAY_API_TOKEN"] and headers["API-Version"] == API_VERSION


async def test_the_seeds_other_spellings_are_accepted() -> None:
    fake = MondayFake()
    async with SandboxServer(fake):
        _, config = seed_config("monday", fake)
        raw = config.model_dump()
        raw["board_id"] = int(raw.pop("boardId"))
        raw["credentials"] = {"api_token": MondayFake.ENV["MONDAY_API_TOKEN"]}
        raw.update(group_id="new_group", api_version="2025-10")
        monday = MondayAdapter("ops-monday", IntegrationConfig.model_validate(raw))
        try:
            delivered = await monday.create(LEAD, "item", ctx())
        finally:
            await monday.aclose()
    assert fake.records[delivered.external_id]["group_id"] == "new_group"
    assert fake.versions == ["2025-10"]


def test_boardid_is_required() -> None:
    fake = MondayFake()
    fake.base_url = "http://127.0.0.1:9"
    _, config = seed_config("monday", fake)
    raw = config.model_dump()
    raw.pop("boardId")
    with pytest.raises(ConfigError, match="boardId is required"):
        MondayAdapter("ops-monday", IntegrationConfig.model_validate(raw))


async def test_an_unknown_status_label_is_refused_unless_labels_may_be_created() -> None:
    mapping = {"item": {"name": "{{senderName}}", "columnValues": {"status": "Escalated"}}}
    async with running(mappings=mapping) as (fake, monday):
        with pytest.raises(PermanentError, match="label does not exist") as info:
            await monday.create(LEAD, "item", ctx())
        assert info.value.code == "ColumnValueException" and info.value.status == 200
    async with running(mappings=mapping, createLabelsIfMissing=True) as (fake, monday):
        delivered = await monday.create(LEAD, "item", ctx())
    assert fake.records[delivered.external_id]["column_values"]["status"] == "Escalated"


async def test_an_unknown_column_is_a_permanent_error_naming_it() -> None:
    mapping = {"item": {"name": "x", "columnValues": {"no_such_column": "v"}}}
    async with running(mappings=mapping) as (_fake, monday):
        with pytest.raises(PermanentError, match="no_such_column") as info:
            await monday.create(LEAD, "item", ctx())
    assert info.value.code == "InvalidColumnIdException"


async def test_a_long_multiline_name_is_one_line_of_255() -> None:
    event = with_changes(LEAD, sender={"name": "Wei\nZhang " + "x" * 400})
    async with running() as (fake, monday):
        delivered = await monday.create(event, "item", ctx())
    name = fake.records[delivered.external_id]["name"]
    assert len(name) == 255 and "\n" not in name and name.endswith("…")


async def test_the_complexity_budget_read_from_the_answer_paces_the_integration() -> None:
    async with running(MondayFake(complexity_budget=25_000)) as (fake, monday):
        await monday.create(LEAD, "item", ctx())  # 10,000 of 25,000: the next two would overspend
        limiter = monday.current_limiter()
        assert limiter is not None and 1 < limiter.paused_for <= 60
    assert len(fake.records) == 1


async def test_an_exhausted_complexity_budget_is_rate_limiting_with_its_wait() -> None:
    async with running(MondayFake(complexity_budget=5_000)) as (fake, monday):
        with pytest.raises(RateLimitedError) as info:
            await monday.create(LEAD, "item", ctx())
    assert info.value.code == "COMPLEXITY_BUDGET_EXHAUSTED" and info.value.status == 200
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
    assert fake.records == {}


async def test_the_daily_limit_is_a_quota_until_midnight_utc() -> None:
    async with running(MondayFake(daily_limit=0)) as (_fake, monday):
        with pytest.raises(QuotaExhaustedError) as info:
            await monday.create(LEAD, "item", ctx())
    assert info.value.code == "DAILY_LIMIT_EXCEEDED"
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 86_400


async def test_the_minute_limit_answers_429_with_retry_after() -> None:
    async with running(MondayFake(rate_limit=(1, 60))) as (fake, monday):
        await monday.create(LEAD, "item", ctx("a"))
        with pytest.raises(RateLimitedError) as info:
            await monday.create(LEAD, "item", ctx("b"))
    assert info.value.status == 429 and info.value.code == "RATE_LIMIT_EXCEEDED"
    assert fake.window is not None and fake.window.rejected == 1
    assert info.value.retry_after is not None and info.value.retry_after > 50


async def test_a_dedupe_column_finds_the_item_again_and_none_without_it() -> None:
    async with running(dedupeColumn="octopus_key") as (fake, monday):
        created = await monday.create(LEAD, "item", ctx())
        found = await monday.find_existing(LEAD, "item", ctx())
        missing = await monday.find_existing(LEAD, "item", ctx("other"))
    assert fake.records[created.external_id]["column_values"]["octopus_key"] == dedupe_marker(ctx().idempotency_key)
    assert found is not None and found.external_id == created.external_id and found.external_url == created.external_url
    assert missing is None
    async with running() as (fake, monday):
        await monday.create(LEAD, "item", ctx())
        assert await monday.find_existing(LEAD, "item", ctx()) is None
    assert [name for name, _ in fake.operations] == ["create_item", "complexity"]  # no lookup was sent


async def test_the_connection_test_reads_me() -> None:
    async with running() as (fake, monday):
        await monday.test_connection()
    assert [name for name, _ in fake.operations] == ["me"] and fake.records == {}


async def test_an_error_only_on_the_complexity_field_does_not_fail_a_created_item() -> None:
    item = {"id": "9000000042", "url": "https://octopus-fake.monday.com/boards/1/pulses/9000000042"}
    errors = [{"message": "busy", "path": ["complexity"], "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]
    async with running() as (fake, monday):
        fake.inject(Fault(200, {"data": {"create_item": item, "complexity": None}, "errors": errors}))
        delivered = await monday.create(LEAD, "item", ctx())
        errors[0]["path"] = ["create_item"]
        fake.inject(Fault(200, {"data": {"create_item": None, "complexity": None}, "errors": errors}))
        with pytest.raises(RetryableError):
            await monday.create(LEAD, "item", ctx("b"))
    assert delivered.external_id == "9000000042"
