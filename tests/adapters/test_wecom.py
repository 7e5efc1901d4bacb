"""WeCom adapter against the WeCom fake over loopback HTTP: the seed's ``cn-wework`` integration."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.wecom import MESSAGE_RATE, RateLimitBlocks, WeComAdapter
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.kit import Fault
from octopus_crm_sandbox.wecom import WeComFake
from tests.adapters.seed import resolved, serving

ROOT = Path(__file__).resolve().parents[2]
SEED = orjson.loads((ROOT / "examples" / "crm-config.seed.json").read_bytes())
EVENTS = [
    ClassifiedMessage.model_validate_json(line)
    for line in (ROOT / "examples" / "events.sample.jsonl").read_text().splitlines()
    if line.strip()
]
ENTRY = next(i for i in SEED["crmIntegrations"] if i["id"] == "cn-wework")
REAL_TEMPLATE = "3TmmcVxSXNgmZJM8ZpbrZVuucxadbweg7pdtEmaQ"
REAL_CONTROLS = {
    "customer_name": "Text-1571833547093",
    "platform": "Text-1571833555317",
    "content": {"id": "Textarea-1571833560452", "control": "Textarea"},
    "category": "Text-1571833566786",
    "priority": "Text-1571833571011",
}
MESSAGE_MAPPING = {
    "touser": "{{assigneeUserId}}",
    "content": "[{{priority}}] {{category}} · {{senderName}}: {{messageContent}}",
}


def seed_adapter(fake: WeComFake, **overrides: Any) -> WeComAdapter:
    """The seed's cn-wework integration pointed at ``fake``; ``overrides`` replace config keys."""
    assert ENTRY["type"] == "wework" and "wework" in WeComAdapter.info.aliases
    config = resolved(copy.deepcopy(ENTRY["config"]), fake.ENV)
    config["endpoints"] = fake.endpoints()
    config.update(overrides)
    return WeComAdapter(ENTRY["id"], IntegrationConfig.model_validate(config))


def ctx(event: ClassifiedMessage, object_type: str = "oa_approval") -> DeliveryContext:
    return DeliveryContext(f"{event.eventId}:cn-wework:{object_type}", integration_id="cn-wework")


@asynccontextmanager
async def running(fake: WeComFake, **overrides: Any) -> AsyncIterator[WeComAdapter]:
    async with serving(fake, lambda: seed_adapter(fake, **overrides)) as adapter:
        yield adapter


FAST = {"rateLimit": {"requests": 1000, "perSeconds": 1, "concurrency": 64}}


async def test_seed_oa_approval_becomes_applyevent() -> None:
    fake = WeComFake()
    event = EVENTS[0]
    async with running(fake) as adapter:
        delivered = await adapter.create(event, "oa_approval", ctx(event))
    assert delivered.external_id in fake.records
    assert delivered.external_url is None  # WeCom approvals have no web URL
    body = fake.approvals[0]
    assert body["creator_userid"] == "octopus-bot"
    assert body["template_id"] == "customer_inquiry_template"
    assert body["use_template_approver"] == 0
    assert body["approver"] == [{"attr": 1, "userid": ["manager-001"]}]
    contents = {c["id"]: (c["control"], c["value"]["text"]) for c in body["apply_data"]["contents"]}
    assert contents == {
        "customer_name": ("Text", "王小明"),
        "platform": ("Text", "telegram"),
        "content": ("Text", event.content),
        "category": ("Text", "销售线索"),
        "priority": ("Text", "高"),
    }
    lines = [line["summary_info"][0]["text"] for line in body["summary_list"]]
    assert lines == ["销售线索", "客户: 王小明", "来源: telegram"]
    applied = next(r for r in fake.requests if r.path == "/cgi-bin/oa/applyevent")
    assert applied.query["access_token"] in fake.tokens


async def test_controls_table_maps_data_keys_to_template_control_ids() -> None:
    fake = WeComFake()
    mappings = copy.deepcopy(ENTRY["config"]["mappings"])
    mappings["oa_approval"]["template_id"] = REAL_TEMPLATE
    mappings["oa_approval"]["approver"] = []
    async with running(fake, mappings=mappings, controls=REAL_CONTROLS) as adapter:
        await adapter.create(EVENTS[1], "oa_approval", ctx(EVENTS[1]))
    body = fake.approvals[0]
    assert body["use_template_approver"] == 1 and "approver" not in body
    ids = {c["id"]: c["control"] for c in body["apply_data"]["contents"]}
    assert ids["Textarea-1571833560452"] == "Textarea"
    assert set(ids) == set(fake.templates[REAL_TEMPLATE])


async def test_message_uses_wecom_duplicate_check() -> None:
    fake = WeComFake()
    event = EVENTS[2]
    mappings = {"message": MESSAGE_MAPPING}
    async with running(fake, mappings=mappings, **FAST) as adapter:
        first = await adapter.create(event, "message", ctx(event, "message"))
        again = await adapter.create(event, "message", ctx(event, "message"))
    assert first.external_id == again.external_id
    assert len(fake.messages) == 1
    sent = fake.messages[0]
    assert sent["agentid"] == 1000002 and sent["touser"] == "manager-001"
    assert sent["msgtype"] == "text" and sent["enable_duplicate_check"] == 1
    assert sent["text"]["content"].startswith("[medium] 客户服务 · Hanna Schmidt: ")
    # app messages are capped per member and dropped silently beyond: a slower default
    assert seed_adapter(fake, mappings=mappings).rate_limit == MESSAGE_RATE
    assert seed_adapter(fake).rate_limit == WeComAdapter.info.rate_limit


async def test_special_characters_arrive_byte_for_byte() -> None:
    fake = WeComFake()
    content = 'Mail me at {{senderEmail}} — "urgent"\nsecond line\t🐙🎉'
    event = EVENTS[0].model_copy(update={"content": content})
    async with running(fake, mappings={**ENTRY["config"]["mappings"], "message": MESSAGE_MAPPING}, **FAST) as adapter:
        await adapter.create(event, "oa_approval", ctx(event))
        await adapter.create(event, "message", ctx(event, "message"))
    texts = {c["id"]: c["value"]["text"] for c in fake.approvals[0]["apply_data"]["contents"]}
    assert texts["content"] == content
    assert fake.messages[0]["text"]["content"].endswith(": " + content)
    raw = next(r.body for r in fake.requests if r.path == "/cgi-bin/oa/applyevent")
    assert "🐙🎉".encode() in raw and b'\\"urgent\\"\\nsecond line' in raw


async def test_expired_token_is_refreshed_exactly_once() -> None:
    fake = WeComFake()
    async with running(fake) as adapter:
        await adapter.create(EVENTS[0], "oa_approval", ctx(EVENTS[0]))
        assert fake.token_requests == 1
        fake.expire_tokens()
        delivered = await adapter.create(EVENTS[1], "oa_approval", ctx(EVENTS[1]))
    assert delivered.external_id in fake.records
    assert fake.token_requests == 2
    assert fake.error_answers == [42001]


async def test_cold_cache_concurrent_deliveries_fetch_one_token() -> None:
    fake = WeComFake()
    events = [EVENTS[i % len(EVENTS)] for i in range(100)]
    async with running(fake, **FAST) as adapter:
        results = await asyncio.gather(*(adapter.create(e, "oa_approval", ctx(e)) for e in events))
    assert len({r.external_id for r in results}) == 100
    assert fake.token_requests == 1


async def test_token_still_rejected_after_refresh_is_auth_error() -> None:
    fake = WeComFake()
    rejected = {"errcode": 40014, "errmsg": "invalid access_token"}
    async with running(fake) as adapter:
        fake.inject(*(Fault(200, rejected, path_contains="/oa/") for _ in range(2)))
        with pytest.raises(AuthError) as info:
            await adapter.create(EVENTS[0], "oa_approval", ctx(EVENTS[0]))
    assert fake.token_requests == 2
    assert "invalid access_token" in info.value.message


@pytest.mark.parametrize(
    ("errcode", "errmsg", "error_type"),
    [
        (-1, "system busy", RetryableError),
        (45009, "api freq out of limit", RateLimitedError),
        (45033, "api concurrent out of limit", RateLimitedError),
        (60020, "not allow to access from your ip", AuthError),
        (48002, "api forbidden", AuthError),
        (301055, "no approval auth", AuthError),
        (301025, "get approval param error:invalid control id Text-1", PermanentError),
        (40003, "invalid userid", PermanentError),
    ],
)
async def test_errcode_in_http_200_maps_to_error_type(
    errcode: int, errmsg: str, error_type: type[DeliveryError]
) -> None:
    fake = WeComFake()
    async with running(fake) as adapter:
        fake.inject(Fault(200, {"errcode": errcode, "errmsg": errmsg}, path_contains="/oa/"))
        with pytest.raises(DeliveryError) as info:
            await adapter.create(EVENTS[0], "oa_approval", ctx(EVENTS[0]))
    assert type(info.value) is error_type
    assert errmsg in info.value.message and info.value.code == f"errcode_{errcode}"
    if errcode == 45009:
        assert info.value.retry_after == 60.0  # WeCom blocks for a minute
    if errcode == 45033:
        assert info.value.retry_after == 2.0  # too many calls at once: clears within seconds


async def test_vendor_validation_errors_keep_wecom_message() -> None:
    fake = WeComFake()
    stranger = EVENTS[0].model_copy(
        update={"assignment": EVENTS[0].assignment.model_copy(update={"systemUserId": "stranger"})}
    )
    async with running(fake) as adapter:
        with pytest.raises(PermanentError) as info:
            await adapter.create(stranger, "oa_approval", ctx(stranger))
    assert "creator_userid not in app visiable range" in info.value.message
    assert info.value.code == "errcode_301025"
    assert fake.error_answers == [301025]


async def test_wrong_secret_is_auth_error_without_leaking_it() -> None:
    fake = WeComFake(secret="the-real-secret")
    async with running(fake) as adapter:
        with pytest.raises(AuthError) as info:
            await adapter.create(EVENTS[0], "oa_approval", ctx(EVENTS[0]))
    assert "40001" in info.value.message
    assert fake.ENV["WEWORK_SECRET"] not in info.value.message


async def test_test_connection_reads_the_agent() -> None:
    fake = WeComFake()
    async with running(fake) as adapter:
        started = time.monotonic()
        await adapter.test_connection()
        assert time.monotonic() - started < 5
    assert [r.path for r in fake.requests] == ["/cgi-bin/gettoken", "/cgi-bin/agent/get"]
    fake = WeComFake(agent_id=1000099)
    async with running(fake) as adapter:
        with pytest.raises(PermanentError, match="invalid agentid"):
            await adapter.test_connection()


def test_config_errors_name_the_key() -> None:
    fake = WeComFake()
    mappings = copy.deepcopy(ENTRY["config"]["mappings"])
    del mappings["oa_approval"]["template_id"]
    with pytest.raises(ConfigError, match="template_id"):
        seed_adapter(fake, mappings=mappings)
    credentials = {
        **resolved(ENTRY["config"]["credentials"], fake.ENV),
        "agentId": "not-a-number",
    }
    with pytest.raises(ConfigError, match="agentId"):
        seed_adapter(fake, mappings={"message": MESSAGE_MAPPING}, credentials=credentials)
    with pytest.raises(ConfigError, match="no object type"):
        seed_adapter(fake, mappings={"lead": {"a": "b"}})


async def test_a_limit_answered_again_after_the_minute_block_is_the_hourly_one() -> None:
    """FACTS: blocks last 60 s (minute limits) / 60 min (hour limits); 45009 does not say which."""
    fake = WeComFake()
    now = [1000.0]
    async with running(fake) as adapter:
        adapter.blocks.clock = lambda: now[0]
        answers = []
        for at in (0.0, 5.0, 61.0, 200.0 + 3600):
            now[0] = 1000.0 + at
            adapter.http.limiter._pause.until = 0.0  # type: ignore[union-attr]  # time passes on the fake clock only
            fake.inject(Fault(200, {"errcode": 45009, "errmsg": "api freq out of limit"}, path_contains="/oa/"))
            with pytest.raises(RateLimitedError) as info:
                await adapter.create(EVENTS[0], "oa_approval", ctx(EVENTS[0]))
            answers.append(info.value.retry_after)
    # the block's first answer, a call sent during it, the hourly limit, a fresh block an hour later
    assert answers == [60.0, 55.0, 3600.0 - 61.0, 60.0]


def test_an_hourly_hint_in_the_message_or_minute_quota_code() -> None:
    blocks = RateLimitBlocks(clock=lambda: 0.0)
    assert blocks.pause(45009, "api freq out of limit, hour limit") == 3600.0
    assert RateLimitBlocks(clock=lambda: 0.0).pause(45011, "api minute-quota out of limit") == 60.0
