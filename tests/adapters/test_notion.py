"""Notion adapter against the Notion fake over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.http import Request
from octopus_crm.adapters.notion import NOTION_VERSION, NotionAdapter, dedupe_marker
from octopus_crm.core.errors import ConfigError, PermanentError, RateLimitedError, RetryableError
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.notion import NotionFake
from tests.adapters.seed import event_of, seed_config, with_changes

FEEDBACK = event_of("产品反馈")

# The product guide's Notion example (CRM-Integration-Guide.zh.md), keys as written there.
GUIDE = {
    "authType": "integration_token",
    "credentials": {"token": NotionFake.ENV["NOTION_TOKEN"]},
    "databaseId": NotionFake.DATABASE,
    "mappings": {
        "page": {
            "properties": {
                "客户姓名": {"title": [{"text": {"content": "{{senderName}}"}}]},
                "平台": {"select": {"name": "{{platform}}"}},
                "分类": {"select": {"name": "{{category}}"}},
                "优先级": {"select": {"name": "{{priority}}"}},
                "状态": {"select": {"name": "待处理"}},
                "内容": {"rich_text": [{"text": {"content": "{{messageContent}}"}}]},
                "创建时间": {"date": {"start": "{{receivedAt}}"}},
            }
        }
    },
}


@asynccontextmanager
async def running(fake: NotionFake | None = None, **overrides: Any) -> AsyncIterator[tuple[NotionFake, NotionAdapter]]:
    fake = fake or NotionFake()
    async with SandboxServer(fake):
        adapter = NotionAdapter(*seed_config("notion", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:notion-demo:page") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="notion-demo")


def pages_sent(fake: NotionFake) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in fake.requests if r.path == "/v1/pages"]


async def test_seed_page_goes_to_the_discovered_data_source_once() -> None:
    async with running() as (fake, notion):
        first = await notion.create(FEEDBACK, "page", ctx("a"))
        await notion.create(FEEDBACK, "page", ctx("b"))
    paths = [(r.method, r.path) for r in fake.requests]
    assert paths == [
        ("GET", f"/v1/databases/{NotionFake.DATABASE}"),
        ("GET", f"/v1/data_sources/{NotionFake.DATA_SOURCE}"),
        ("POST", "/v1/pages"),
        ("POST", "/v1/pages"),
    ]
    assert all(r.headers["Notion-Version"] == NOTION_VERSION for r in fake.requests)
    assert all(r.headers["Authorization"] == f"Bearer {NotionFake.ENV['NOTION_TOKEN']}" for r in fake.requests)
    body = pages_sent(fake)[0]
    assert body["parent"] == {"type": "data_source_id", "data_source_id": NotionFake.DATA_SOURCE}
    props = body["properties"]
    assert props["客户姓名"] == {"title": [{"text": {"content": FEEDBACK.sender.name}}]}
    assert (
        props["优先级"]["select"]["name"]
        == {"low": "低", "medium": "中", "high": "高", "urgent": "紧急"}[FEEDBACK.classification.priority]
    )
    assert props["Octopus ID"] == {"rich_text": [{"text": {"content": dedupe_marker("a")}}]}
    if FEEDBACK.sender.email:
        assert props["邮箱"] == {"email": FEEDBACK.sender.email}
    assert body["children"][0] == {
        "type": "paragraph",
        "paragraph": {"rich_text": [{"text": {"content": FEEDBACK.content.split("\n\n")[0]}}]},
    }
    assert first.external_url == fake.records[first.external_id]["url"]


async def test_the_guides_example_config_is_accepted_as_written() -> None:
    fake = NotionFake()
    async with SandboxServer(fake):
        config = {**GUIDE, "endpoints": fake.endpoints()}
        notion = NotionAdapter("notion-guide", IntegrationConfig.model_validate(config))
        try:
            delivered = await notion.create(FEEDBACK, "page", ctx())
            assert await notion.find_existing(FEEDBACK, "page", ctx()) is None  # no dedupeProperty: ledger only
        finally:
            await notion.aclose()
    assert fake.records[delivered.external_id]["properties"]["状态"] == {"select": {"name": "待处理"}}
    assert "Octopus ID" not in pages_sent(fake)[0]["properties"]


async def test_long_text_is_split_into_2000_character_objects_not_truncated() -> None:
    text = "长" * 4500 + "\n\n" + "b" * 10
    async with running() as (fake, notion):
        delivered = await notion.create(with_changes(FEEDBACK, content=text), "page", ctx())
    record = fake.records[delivered.external_id]
    items = record["properties"]["内容"]["rich_text"]
    assert [len(i["text"]["content"]) for i in items] == [2000, 2000, 512]
    assert "".join(i["text"]["content"] for i in items) == text
    assert [len(i["text"]["content"]) for i in record["children"][0]["paragraph"]["rich_text"]] == [2000, 2000, 500]


async def test_text_beyond_100_objects_is_refused_before_sending() -> None:
    async with running() as (fake, notion):
        with pytest.raises(PermanentError) as info:
            await notion.create(with_changes(FEEDBACK, content="x" * 200_001), "page", ctx())
    assert info.value.code == "text_too_long"
    assert pages_sent(fake) == []


async def test_plain_values_take_the_property_type_from_the_data_source() -> None:
    properties = {
        "客户姓名": "{{senderName}}",
        "标签": "{{category}}, {{platform}}",
        "负责人": "{{assigneeUserId}}",
        "链接": "https://example.com/t/{{eventId}}",
        "电话": "{{senderPhone}}",
        "创建时间": "{{receivedAt}}",
        "平台": "{{platform}}",
        "优先级": "{{priority}}",
    }
    event = with_changes(FEEDBACK, assignment={"assigneeUserId": "0f3c4d5e-aaaa-bbbb-cccc-000000000001"})
    async with running(mappings={"page": {"properties": properties}}) as (fake, notion):
        await notion.create(event, "page", ctx())
    props = pages_sent(fake)[0]["properties"]
    assert props["客户姓名"] == {"title": [{"text": {"content": event.sender.name}}]}
    assert props["标签"] == {"multi_select": [{"name": "产品反馈"}, {"name": event.platform}]}
    assert props["负责人"] == {"people": [{"id": "0f3c4d5e-aaaa-bbbb-cccc-000000000001"}]}
    assert props["链接"] == {"url": f"https://example.com/t/{event.eventId}"}
    assert props["平台"] == {"select": {"name": event.platform}}
    assert props["优先级"]["select"]["name"] in ("低", "中", "高", "紧急")
    assert props["创建时间"]["date"]["start"].startswith(event.receivedAt.strftime("%Y-%m-%dT%H:%M"))
    assert ("电话" in props) == bool(event.sender.phone)


async def test_a_mapping_naming_an_unknown_property_is_refused() -> None:
    async with running(mappings={"page": {"properties": {"Nope": "{{senderName}}"}}}) as (fake, notion):
        with pytest.raises(PermanentError) as info:
            await notion.create(FEEDBACK, "page", ctx())
    assert info.value.code == "unknown_property" and pages_sent(fake) == []


async def test_several_data_sources_need_a_name_or_id() -> None:
    async with running(NotionFake(data_sources=2)) as (_, notion):
        with pytest.raises(ConfigError) as info:
            await notion.create(FEEDBACK, "page", ctx())
    assert info.value.code == "ambiguous_data_source" and "'客户消息'" in info.value.message
    async with running(NotionFake(data_sources=2), dataSourceName="来源 2") as (fake, notion):
        await notion.create(FEEDBACK, "page", ctx())
    assert pages_sent(fake)[0]["parent"]["data_source_id"] != NotionFake.DATA_SOURCE


async def test_a_configured_data_source_id_skips_the_database_lookup() -> None:
    async with running(dataSourceId=NotionFake.DATA_SOURCE) as (fake, notion):
        await notion.create(FEEDBACK, "page", ctx())
        await notion.test_connection()
    assert [r.path for r in fake.requests if "databases" in r.path] == []


async def test_a_database_id_parent_is_refused_under_2025_09_03() -> None:
    async with running() as (fake, notion):
        body = {"parent": {"database_id": NotionFake.DATABASE}, "properties": {}}
        with pytest.raises(PermanentError) as info:
            await notion.http.send(Request("POST", "pages", json=body))
    assert info.value.status == 400 and "validation_error" in info.value.message
    assert fake.records == {}


async def test_marker_lookup_finds_the_page_after_an_ambiguous_create() -> None:
    async with running() as (fake, notion):
        assert await notion.find_existing(FEEDBACK, "page", ctx()) is None
        delivered = await notion.create(FEEDBACK, "page", ctx())
        found = await notion.find_existing(FEEDBACK, "page", ctx())
    assert found is not None and found.external_id == delivered.external_id
    query = orjson.loads([r for r in fake.requests if r.path.endswith("/query")][-1].body)
    assert query["filter"] == {"property": "Octopus ID", "rich_text": {"equals": dedupe_marker(ctx().idempotency_key)}}


async def test_vendor_errors_are_classified_with_notions_words() -> None:
    async with running() as (fake, notion):
        await notion.create(FEEDBACK, "page", ctx("warm"))
        fake.inject(
            Fault(404, {"object": "error", "status": 404, "code": "object_not_found", "message": "Could not find"})
        )
        with pytest.raises(PermanentError) as missing:
            await notion.create(FEEDBACK, "page", ctx("a"))
        fake.inject(Fault(409, {"object": "error", "status": 409, "code": "conflict_error", "message": "Conflict"}))
        with pytest.raises(RetryableError):
            await notion.create(FEEDBACK, "page", ctx("b"))
    assert "shared with the integration" in missing.value.message and "object_not_found" in missing.value.message


async def test_the_fake_answers_429_rate_limited_with_retry_after() -> None:
    fake = NotionFake(rate_limit=(3, 30.0))
    async with running(fake, rateLimit={"requests": 100}) as (_, notion):
        await notion.create(FEEDBACK, "page", ctx("a"))  # 3 requests: database, data source, page
        with pytest.raises(RateLimitedError) as info:
            await notion.create(FEEDBACK, "page", ctx("b"))
    assert info.value.retry_after is not None and 20 < info.value.retry_after <= 30
    assert "rate_limited" in info.value.message


@pytest.mark.parametrize(
    ("change", "message"),
    [({"databaseId": None}, "databaseId is required"), ({"databaseID": "x"}, "did you mean databaseId")],
)
def test_config_mistakes_fail_at_load(change: dict[str, Any], message: str) -> None:
    raw = {k: v for k, v in {**GUIDE, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        NotionAdapter("notion-bad", IntegrationConfig.model_validate(raw))
    assert message in info.value.message


async def test_a_rate_limit_reason_is_kept_in_the_message() -> None:
    limited = {"object": "error", "status": 429, "code": "rate_limited", "message": "Slow down."}
    limited["additional_data"] = {"rate_limit_reason": "some_limit"}
    async with running() as (fake, notion):
        await notion.create(FEEDBACK, "page", ctx("warm"))
        fake.inject(Fault(429, limited, headers={"Retry-After": "75"}))
        with pytest.raises(RateLimitedError) as info:
            await notion.create(FEEDBACK, "page", ctx("a"))
    assert info.value.retry_after == 75 and "[some_limit]" in info.value.message


async def test_a_property_added_later_is_picked_up_by_reading_the_schema_again() -> None:
    fake = NotionFake()
    del fake.schema["链接"]
    mapping = {"page": {"properties": {"客户姓名": "{{senderName}}", "链接": "https://example.com/{{eventId}}"}}}
    async with running(fake, mappings=mapping) as (_, notion):
        with pytest.raises(PermanentError) as info:
            await notion.create(FEEDBACK, "page", ctx("a"))
        fake.schema["链接"] = "url"
        await notion.create(FEEDBACK, "page", ctx("b"))
    assert info.value.code == "unknown_property"
    schema_reads = [r for r in fake.requests if r.path.startswith("/v1/data_sources/") and r.method == "GET"]
    assert len(schema_reads) == 3  # first read, re-read on the unknown property (still missing), re-read once added
