"""Feishu adapter against the Feishu fake over loopback HTTP.

The seed has no Feishu integration; ``FEISHU_ENTRY`` is a seed-style one (same shape as the seed's
``crmIntegrations`` entries) that the examples can adopt.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.feishu import RECORD_RATE, TASK_RATE, FeishuAdapter, client_token
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.feishu import TASK_CREATE_SPEC, FeishuFake, check_meta
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import resolved, serving

ROOT = Path(__file__).resolve().parents[2]
EVENTS = [
    ClassifiedMessage.model_validate_json(line)
    for line in (ROOT / "examples" / "events.sample.jsonl").read_text().splitlines()
    if line.strip()
]

# A seed-style integration for Feishu (proposed for examples/crm-config.seed.json).
FEISHU_ENTRY: dict[str, Any] = {
    "id": "cn-feishu",
    "name": "飞书任务与多维表格",
    "type": "feishu",
    "enabled": True,
    "priority": 7,
    "config": {
        "authType": "app_secret",
        "credentials": {"appId": "${FEISHU_APP_ID}", "appSecret": "${FEISHU_APP_SECRET}"},
        "endpoints": {"baseUrl": "https://open.feishu.cn/open-apis"},
        "appToken": "bascnOctopusFakeBase01",
        "tableId": "tblOctopusLeads01",
        "tenantDomain": "acme.feishu.cn",
        "userIdType": "user_id",
        "mappings": {
            "task": {
                "summary": "[{{priority}}] {{category}} - {{messageContent|truncate:80}}",
                "description": "{{messageContent}}\n\n来源: {{platform}} / {{senderName}} ({{senderEmail}})",
                "assignee": "{{assigneeUserId}}",
            },
            "bitable_record": {
                "客户": "{{senderName}}",
                "邮箱": "{{senderEmail}}",
                "电话": "{{senderPhone}}",
                "内容": "{{messageContent}}",
                "分类": "{{category}}",
                "优先级": "{{priority}}",
                "平台": "{{platform}}",
                "事件ID": "{{eventId}}",
            },
        },
        "valueMaps": {"bitable_record.优先级": {"low": "低", "medium": "中", "high": "高", "urgent": "紧急"}},
    },
    "rules": {
        "conditions": [{"field": "category", "operator": "in", "value": ["技术支持", "客户投诉", "销售线索"]}],
        "actions": [
            {"type": "create", "object": "task", "when": {"category": ["技术支持", "客户投诉"]}},
            {"type": "create", "object": "bitable_record"},
        ],
    },
}
FAST = {"rateLimit": {"requests": 1000, "perSeconds": 1, "concurrency": 64}}


def make_adapter(fake: FeishuFake, **overrides: Any) -> FeishuAdapter:
    config = resolved(copy.deepcopy(FEISHU_ENTRY["config"]), fake.ENV)
    config["endpoints"] = fake.endpoints()
    config.update(overrides)
    return FeishuAdapter(FEISHU_ENTRY["id"], IntegrationConfig.model_validate(config))


def ctx(event: ClassifiedMessage, object_type: str = "task") -> DeliveryContext:
    return DeliveryContext(f"{event.eventId}:cn-feishu:{object_type}", integration_id="cn-feishu")


@asynccontextmanager
async def running(fake: FeishuFake, **overrides: Any) -> AsyncIterator[FeishuAdapter]:
    async with serving(fake, lambda: make_adapter(fake, **overrides)) as adapter:
        yield adapter


def _sent(fake: FeishuFake, path_part: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in fake.requests if path_part in r.path and r.method == "POST"]


async def test_task_created_from_seed_style_mapping() -> None:
    fake = FeishuFake()
    event = EVENTS[1]
    async with running(fake) as adapter:
        delivered = await adapter.create(event, "task", ctx(event))
    task = fake.tasks[delivered.external_id]
    assert delivered.external_url == task["url"]
    assert str(task["url"]).startswith("https://applink.feishu.cn/client/todo/detail?guid=")
    body = _sent(fake, "/task/v2/tasks")[0]
    assert check_meta(TASK_CREATE_SPEC["requestBody"], body) == []
    assert body["summary"] == f"[urgent] 技术支持 - {event.content}"
    assert body["description"].startswith(event.content + "\n\n来源: whatsapp / 李雷 (user1@example.com)")
    assert body["members"] == [{"id": "manager-001", "role": "assignee", "type": "user"}]
    assert body["origin"]["platform_i18n_name"]["zh_cn"] == "Octopus"
    assert orjson.loads(body["extra"]) == {"eventId": event.eventId}
    assert uuid.UUID(body["client_token"]).version == 4
    request = next(r for r in fake.requests if r.path == "/open-apis/task/v2/tasks")
    assert request.query["user_id_type"] == "user_id"
    assert request.headers["Authorization"] == f"Bearer {next(iter(fake.tokens))}"


async def test_bitable_record_created_with_field_names_and_url() -> None:
    fake = FeishuFake()
    event = EVENTS[0]
    async with running(fake) as adapter:
        delivered = await adapter.create(event, "bitable_record", ctx(event, "bitable_record"))
    record = fake.bitable[delivered.external_id]
    assert record["fields"]["客户"] == "王小明" and record["fields"]["优先级"] == "高"
    assert record["fields"]["事件ID"] == event.eventId
    assert delivered.external_url == (
        f"https://acme.feishu.cn/base/bascnOctopusFakeBase01?table=tblOctopusLeads01&record={delivered.external_id}"
    )
    request = next(r for r in fake.requests if r.path.endswith("/records"))
    assert request.query["client_token"] == client_token(ctx(event, "bitable_record").idempotency_key)


async def test_client_token_makes_repeats_return_the_same_record() -> None:
    fake = FeishuFake()
    event = EVENTS[4]
    async with running(fake) as adapter:
        first = await adapter.create(event, "task", ctx(event))
        again = await adapter.create(event, "task", ctx(event))
        found = await adapter.find_existing(event, "task", ctx(event))
        other = await adapter.create(EVENTS[5], "task", ctx(EVENTS[5]))
        row = await adapter.create(event, "bitable_record", ctx(event, "bitable_record"))
        row_again = await adapter.create(event, "bitable_record", ctx(event, "bitable_record"))
    assert first == again and found is not None and found.external_id == first.external_id
    assert other.external_id != first.external_id
    assert row.external_id == row_again.external_id
    assert len(fake.tasks) == 2 and len(fake.bitable) == 1 and fake.replays == 3


async def test_special_characters_arrive_byte_for_byte() -> None:
    fake = FeishuFake()
    content = 'Mail me at {{senderEmail}} — "urgent"\nsecond line\t🐙🎉'
    event = EVENTS[1].model_copy(update={"content": content})
    async with running(fake) as adapter:
        task = await adapter.create(event, "task", ctx(event))
        row = await adapter.create(event, "bitable_record", ctx(event, "bitable_record"))
    assert fake.tasks[task.external_id]["description"].startswith(content + "\n\n")
    assert fake.bitable[row.external_id]["fields"]["内容"] == content
    raw = next(r.body for r in fake.requests if r.path.endswith("/records"))
    assert "🐙🎉".encode() in raw and b'\\"urgent\\"\\nsecond line' in raw


async def test_expired_token_is_refreshed_exactly_once() -> None:
    fake = FeishuFake()
    async with running(fake) as adapter:
        await adapter.create(EVENTS[0], "task", ctx(EVENTS[0]))
        fake.expire_tokens()
        delivered = await adapter.create(EVENTS[1], "task", ctx(EVENTS[1]))
    assert delivered.external_id in fake.tasks
    assert fake.token_requests == 2
    rejected = [r for r in fake.requests if r.path.endswith("/tasks")]
    assert len(rejected) == 3  # ok, 400/99991663, ok after the refresh


async def test_cold_cache_concurrent_deliveries_fetch_one_token() -> None:
    fake = FeishuFake()
    events = [EVENTS[i % len(EVENTS)] for i in range(100)]
    async with running(fake, **FAST) as adapter:
        results = await asyncio.gather(
            *(adapter.create(e, "task", DeliveryContext(f"k{i}")) for i, e in enumerate(events))
        )
    assert len({r.external_id for r in results}) == 100
    assert fake.token_requests == 1


async def test_token_still_rejected_after_refresh_is_auth_error() -> None:
    fake = FeishuFake()
    rejected = {"code": 99991663, "msg": "Invalid access token for authorization.", "data": {}}
    async with running(fake) as adapter:
        fake.inject(*(Fault(400, rejected, path_contains="/task/") for _ in range(2)))
        with pytest.raises(AuthError, match="Invalid access token"):
            await adapter.create(EVENTS[0], "task", ctx(EVENTS[0]))
    assert fake.token_requests == 2


@pytest.mark.parametrize(
    ("object_type", "status", "code", "msg", "error_type"),
    [
        ("task", 400, 99991400, "request trigger frequency limit", RateLimitedError),
        ("task", 400, 1470400, "invalid param: summary", PermanentError),
        (
            "task",
            400,
            99991672,
            "Access denied. One of the following scopes is required: [task:task:write]",
            AuthError,
        ),
        ("task", 400, 99991676, "token lacks the scope", AuthError),
        ("bitable_record", 400, 1254045, "FieldNameNotFound", PermanentError),
        ("bitable_record", 200, 1254291, "Write conflict", RetryableError),
        ("bitable_record", 400, 1254607, "Data not ready, please try again later", RetryableError),
        ("bitable_record", 200, 1254290, "TooManyRequest", RateLimitedError),
        ("bitable_record", 403, 1254302, "Permission denied.", AuthError),
        (
            "bitable_record",
            504,
            1255040,
            "Request timed out, please try again later",
            RetryableError,
        ),
    ],
)
async def test_error_codes_map_to_error_types(
    object_type: str, status: int, code: int, msg: str, error_type: type[DeliveryError]
) -> None:
    fake = FeishuFake()
    async with running(fake) as adapter:
        where = "/task/" if object_type == "task" else "/bitable/"
        fake.inject(Fault(status, {"code": code, "msg": msg, "data": {}}, path_contains=where))
        with pytest.raises(DeliveryError) as info:
            await adapter.create(EVENTS[0], object_type, ctx(EVENTS[0], object_type))
    assert type(info.value) is error_type
    assert msg in info.value.message and info.value.code == f"code_{code}"


async def test_429_waits_for_x_ogw_ratelimit_reset() -> None:
    fake = FeishuFake()
    limited = Fault(
        429,
        {"code": 99991400, "msg": "request trigger frequency limit", "data": {}},
        headers={"x-ogw-ratelimit-limit": "50", "x-ogw-ratelimit-reset": "7"},
        path_contains="/task/",
    )
    async with running(fake) as adapter:
        fake.inject(limited)
        with pytest.raises(RateLimitedError) as info:
            await adapter.create(EVENTS[0], "task", ctx(EVENTS[0]))
        assert info.value.retry_after == 7.0
        assert adapter.http.limiter is not None and adapter.http.limiter.paused_for > 6
    fake = FeishuFake()
    async with running(fake) as adapter:
        fake.inject(Fault(502, "bad gateway", path_contains="/task/"))
        with pytest.raises(RetryableError):
            await adapter.create(EVENTS[0], "task", ctx(EVENTS[0]))


async def test_fake_validation_errors_keep_feishu_message() -> None:
    fake = FeishuFake()
    mappings = copy.deepcopy(FEISHU_ENTRY["config"]["mappings"])
    mappings["bitable_record"]["客户名称"] = "{{senderName}}"
    async with running(fake, mappings=mappings, userIdType="open_id") as adapter:
        with pytest.raises(PermanentError, match="FieldNameNotFound") as record_error:
            await adapter.create(EVENTS[0], "bitable_record", ctx(EVENTS[0], "bitable_record"))
        with pytest.raises(PermanentError, match=r"members\[0\]\.id: not a valid open_id"):
            await adapter.create(EVENTS[0], "task", ctx(EVENTS[0]))
    assert record_error.value.code == "code_1254045" and record_error.value.status == 400
    assert not fake.tasks and not fake.bitable


def test_fake_checks_bodies_against_the_task_create_schema() -> None:
    problems = check_meta(
        TASK_CREATE_SPEC["requestBody"],
        {"summary": 1, "members": [{"id": "ou_1"}], "due": {"timestamp": 5}, "bogus": True},
    )
    assert "summary: must be string" in problems
    assert "members[0].role: required" in problems
    assert "due.timestamp: must be string" in problems
    assert "bogus: unknown field" in problems
    assert check_meta(TASK_CREATE_SPEC["requestBody"], {}) == ["summary: required"]


async def test_wrong_app_secret_is_auth_error_without_leaking_it() -> None:
    fake = FeishuFake(app_secret="the-real-secret")
    async with running(fake) as adapter:
        with pytest.raises(AuthError) as info:
            await adapter.create(EVENTS[0], "task", ctx(EVENTS[0]))
    assert "app secret invalid" in info.value.message
    assert fake.ENV["FEISHU_APP_SECRET"] not in info.value.message


async def test_both_domains_and_the_bare_fake_host_work() -> None:
    fake = FeishuFake()
    assert make_adapter(fake, endpoints={"domain": "lark"}).base_url == "https://open.larksuite.com/open-apis"
    assert make_adapter(fake, endpoints={}).base_url == "https://open.feishu.cn/open-apis"
    assert make_adapter(fake, endpoints={"baseUrl": "https://open.feishu.cn"}).base_url == (
        "https://open.feishu.cn/open-apis"
    )
    with pytest.raises(ConfigError, match="domain"):
        make_adapter(fake, endpoints={"domain": "larkk"})
    async with SandboxServer(fake):
        adapter = make_adapter(fake, endpoints={"baseUrl": fake.base_url, "allowPrivateNetwork": True})
        try:
            delivered = await adapter.create(EVENTS[0], "task", ctx(EVENTS[0]))
        finally:
            await adapter.aclose()
    assert delivered.external_id in fake.tasks


async def test_test_connection() -> None:
    fake = FeishuFake()
    async with running(fake) as adapter:
        await adapter.test_connection()
    assert [r.path for r in fake.requests][-1] == "/open-apis/bitable/v1/apps/bascnOctopusFakeBase01/tables"
    fake = FeishuFake()
    async with running(fake, mappings={"task": FEISHU_ENTRY["config"]["mappings"]["task"]}) as adapter:
        await adapter.test_connection()
    assert fake.token_requests == 1
    fake = FeishuFake(app_id="cli_someone_else")
    async with running(fake) as adapter:
        with pytest.raises(AuthError):
            await adapter.test_connection()


def test_config_defaults_and_errors() -> None:
    fake = FeishuFake()
    fake.base_url = "http://127.0.0.1:9"  # never started: only the configuration is checked
    assert make_adapter(fake).rate_limit == TASK_RATE
    only_records = {"bitable_record": FEISHU_ENTRY["config"]["mappings"]["bitable_record"]}
    assert make_adapter(fake, mappings=only_records).rate_limit == RECORD_RATE
    with pytest.raises(ConfigError, match="appToken and tableId"):
        make_adapter(fake, appToken=None)
    with pytest.raises(ConfigError, match="summary"):
        make_adapter(fake, mappings={"task": {"description": "{{messageContent}}"}})
    assert "lark" in FeishuAdapter.info.aliases
