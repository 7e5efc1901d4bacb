"""DingTalk adapter against the DingTalk fake over real loopback HTTP: both API generations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.dingtalk import CHINA, PRIORITY, DingTalkAdapter, _until_next_month, classify, source_id
from octopus_crm.adapters.http import Response
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    TokenExpiredError,
)
from octopus_crm_sandbox.dingtalk import DingTalkFake
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import event_of, seed_config, seed_entry, with_changes

TECH = event_of("技术支持")
TODO = "/v1.0/todo/users/"


@asynccontextmanager
async def running(
    fake: DingTalkFake | None = None, **overrides: Any
) -> AsyncIterator[tuple[DingTalkFake, DingTalkAdapter]]:
    fake = fake or DingTalkFake()
    async with SandboxServer(fake):
        adapter = DingTalkAdapter(*seed_config("dingtalk", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:dingtalk-demo:task") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="dingtalk-demo")


def last(fake: DingTalkFake, path: str) -> Any:
    return next(r for r in reversed(fake.requests) if path in r.path)


async def test_the_seed_task_is_a_todo_owned_by_the_executor_with_the_new_token_header() -> None:
    async with running() as (fake, dingtalk):
        delivered = await dingtalk.create(TECH, "task", ctx())
        assert delivered.external_id.startswith("OPJpwt") and delivered.external_url is None
        request = last(fake, TODO)
        assert request.method == "POST" and request.path == "/v1.0/todo/users/manager-001/tasks"
        assert request.query == {"operatorId": "manager-001"}
        assert fake.token_valid(request.headers["x-acs-dingtalk-access-token"])
        assert "access_token" not in request.query and "Authorization" not in request.headers
        body = orjson.loads(request.body)
        assert body["subject"] == "客户咨询 - 技术支持"
        assert body["priority"] == PRIORITY["urgent"] == 40
        assert body["executorIds"] == ["manager-001"] and body["creatorId"] == "manager-001"
        assert "participantIds" not in body and "ccIds" not in body  # the seed's empty lists
        assert body["sourceId"] == source_id(ctx().idempotency_key)
        token_calls = [r for r in fake.requests if "token" in r.path.lower()]
        assert [r.path for r in token_calls] == ["/v1.0/oauth2/accessToken"]
        assert orjson.loads(token_calls[0].body) == {
            "appKey": DingTalkFake.ENV["DINGTALK_APP_KEY"],
            "appSecret": DingTalkFake.ENV["DINGTALK_APP_SECRET"],
        }


@pytest.mark.parametrize(("ours", "theirs"), sorted(PRIORITY.items()))
async def test_priorities_map_onto_dingtalk_levels(ours: str, theirs: int) -> None:
    async with running() as (fake, dingtalk):
        await dingtalk.create(with_changes(TECH, classification={"priority": ours}), "task", ctx())
        assert orjson.loads(last(fake, TODO).body)["priority"] == theirs


async def test_cc_ids_join_the_participants_and_long_text_is_clipped() -> None:
    mappings = {
        "task": {
            "subject": "{{messageContent}}",
            "description": "{{messageContent}}",
            "executorIds": ["{{assigneeUserId}}"],
            "participantIds": "octopus-bot",
            "ccIds": ["{{systemUserId}}", "PUoiinWIpa2GYMF2pZXuvjQiEiE"],
        }
    }
    event = with_changes(TECH, content="长" * 5000)
    async with running(mappings=mappings) as (fake, dingtalk):
        await dingtalk.create(event, "task", ctx())
        body = orjson.loads(last(fake, TODO).body)
    assert body["participantIds"] == ["octopus-bot", "PUoiinWIpa2GYMF2pZXuvjQiEiE"]
    assert len(body["subject"]) == 1024 and len(body["description"]) == 4096 and body["description"][-1] == "…"


async def test_the_configured_operator_owns_the_todo() -> None:
    async with running(operatorUnionId="PUoiinWIpa2GYMF2pZXuvjQiEiE") as (fake, dingtalk):
        await dingtalk.create(TECH, "task", ctx())
        request = last(fake, TODO)
    assert request.path == "/v1.0/todo/users/PUoiinWIpa2GYMF2pZXuvjQiEiE/tasks"
    assert orjson.loads(request.body)["executorIds"] == ["manager-001"]


async def test_an_unknown_union_id_keeps_dingtalks_message() -> None:
    event = with_changes(TECH, assignment={"assigneeUserId": "not-a-union-id"})
    async with running() as (_, dingtalk):
        with pytest.raises(PermanentError) as info:
            await dingtalk.create(event, "task", ctx())
    assert info.value.code == "todo.taskCreate.paramError" and info.value.status == 400


async def test_a_task_without_owner_or_subject_is_refused_before_sending() -> None:
    event = with_changes(TECH, assignment={"assigneeUserId": None})
    async with running() as (fake, dingtalk):
        with pytest.raises(PermanentError, match="owner"):
            await dingtalk.create(event, "task", ctx())
    assert not [r for r in fake.requests if TODO in r.path]


async def test_an_ambiguous_todo_is_found_by_its_source_id() -> None:
    async with running() as (fake, dingtalk):
        fake.inject(Fault(504, "gateway timeout", after_effect=True, path_contains=TODO))
        with pytest.raises(Exception):  # noqa: B017 - the class is covered by the conformance suite
            await dingtalk.create(TECH, "task", ctx())
        found = await dingtalk.find_existing(TECH, "task", ctx())
        missing = await dingtalk.find_existing(TECH, "task", ctx("another"))
        lookup = next(r for r in fake.requests if "/sources/" in r.path)
    assert found is not None and found.external_id in fake.records
    assert missing is None
    assert lookup.path == f"/v1.0/todo/users/manager-001/tasks/sources/{source_id(ctx().idempotency_key)}"


async def test_a_work_notification_uses_the_old_api_and_its_own_token() -> None:
    event = event_of("销售线索")
    async with running() as (fake, dingtalk):
        delivered = await dingtalk.create(event, "message", ctx("evt-2:dingtalk-demo:message"))
        request = last(fake, "asyncsend_v2")
        body = orjson.loads(request.body)
        assert delivered.external_id == str(256271667526)
        assert fake.token_valid(request.query["access_token"])
        assert "x-acs-dingtalk-access-token" not in request.headers
        assert body["agent_id"] == int(DingTalkFake.ENV["DINGTALK_AGENT_ID"])
        assert body["userid_list"] == "manager-001"
        assert body["msg"]["msgtype"] == "text" and event.content in body["msg"]["text"]["content"]
        gettoken = last(fake, "/gettoken")
        assert gettoken.query == {
            "appkey": DingTalkFake.ENV["DINGTALK_APP_KEY"],
            "appsecret": DingTalkFake.ENV["DINGTALK_APP_SECRET"],
        }
        # A redelivery: DingTalk shows the same content to the same user once a day.
        await dingtalk.create(event, "message", ctx("evt-2:dingtalk-demo:message"))
    assert len(fake.notifications) == 1 and fake.suppressed == 1


async def test_each_generation_refreshes_its_own_token_once() -> None:
    async with running() as (fake, dingtalk):
        await dingtalk.create(TECH, "task", ctx("a"))
        await dingtalk.create(TECH, "message", ctx("b"))
        assert fake.token_requests == 2
        fake.expire_tokens()
        await dingtalk.create(TECH, "message", ctx("c"))  # old API: errcode 42001 → gettoken again
        assert fake.token_requests == 3
        await dingtalk.create(TECH, "task", ctx("d"))  # new API: 401 InvalidAuthentication → again
        assert fake.token_requests == 4
    answers = [r.path for r in fake.requests]
    assert answers.count("/gettoken") == 2 and answers.count("/v1.0/oauth2/accessToken") == 2


async def test_the_qps_limit_answers_in_each_generations_shape() -> None:
    fast = {"requests": 1000, "perSeconds": 1, "concurrency": 8}
    async with running(DingTalkFake(rate_limit=(1, 5.0)), rateLimit=fast) as (_, dingtalk):
        await dingtalk.create(TECH, "task", ctx("a"))
        with pytest.raises(RateLimitedError) as new:
            await dingtalk.create(TECH, "task", ctx("b"))
        assert new.value.code == "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi" and new.value.status == 403
        with pytest.raises(RateLimitedError) as old:
            await dingtalk.create(TECH, "message", ctx("c"))
    assert old.value.code == "errcode_90018" and old.value.retry_after == 1.0


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        (401, {"code": "InvalidAuthentication", "message": "不合法的access_token"}, TokenExpiredError, None),
        (200, {"errcode": 40014, "errmsg": "不合法的access_token"}, TokenExpiredError, "errcode_40014"),
        (200, {"errcode": 88, "sub_code": "40014", "sub_msg": "bad token", "errmsg": "x"}, TokenExpiredError, None),
        (200, {"errcode": 90002, "errmsg": "global QPS"}, RateLimitedError, "errcode_90002"),
        (403, {"code": "Forbidden.AccessDenied.QpsLimitForApi", "message": "qps"}, RateLimitedError, None),
        (200, {"errcode": 60020, "errmsg": "ip not allowed"}, AuthError, "errcode_60020"),
        (200, {"code": "staff.not.found", "message": "no such staff"}, PermanentError, "staff.not.found"),
    ],
)
def test_both_error_shapes_map_to_the_taxonomy(status: int, body: Any, expected: type, code: str | None) -> None:
    error = classify(Response(status, {}, orjson.dumps(body)))
    assert error is not None and isinstance(error, expected), repr(error)
    if code is not None:
        assert error.code == code


def test_quota_waits_until_the_month_ends_in_china_time() -> None:
    error = classify(Response(200, {}, orjson.dumps({"errcode": 90020, "errmsg": "本月api调用量已超过限制"})))
    assert isinstance(error, QuotaExhaustedError) and error.retry_after is not None and error.retry_after >= 60
    assert _until_next_month(datetime(2026, 12, 31, 23, 0, tzinfo=CHINA)) == 3600.0
    assert _until_next_month(datetime(2026, 2, 27, 0, 0, tzinfo=CHINA)) == 2 * 86400.0


def test_the_ip_block_page_pauses_for_its_wait() -> None:
    error = classify(Response(200, {}, orjson.dumps({"status": 1111, "wait": 5, "source": "x5", "punish": "deny"})))
    assert isinstance(error, RateLimitedError) and error.retry_after == 300.0


def _config(**changes: Any) -> IntegrationConfig:
    config = seed_entry("dingtalk", DingTalkFake.ENV)["config"]
    config.update(changes)
    return IntegrationConfig.model_validate(config)


def test_seed_keys_and_spellings_are_accepted() -> None:
    adapter = DingTalkAdapter("d", _config(credentials={"app_key": "k", "app_secret": "s", "agent_id": "1"}))
    assert adapter.base_url == "https://oapi.dingtalk.com" and adapter.api_url == "https://api.dingtalk.com"
    DingTalkAdapter("d", _config(credentials={"clientId": "k", "clientSecret": "s", "agentId": 7}))


def test_configuration_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"credentials\.appKey is required"):
        DingTalkAdapter("d", _config(credentials={"appSecret": "s", "agentId": "1"}))
    with pytest.raises(ConfigError, match=r"credentials\.agentId is required"):
        DingTalkAdapter("d", _config(credentials={"appKey": "k", "appSecret": "s"}))
    adapter = DingTalkAdapter("d", _config(credentials={"appKey": "k", "appSecret": "s", "agentId": "<ID>"}))
    with pytest.raises(ConfigError, match=r"credentials\.agentId must be the app's numeric AgentId"):
        adapter.message({"content": "hi", "userid_list": ["u"]})
    with pytest.raises(ConfigError, match=r"mappings\.task\.title: not a DingTalk to-do field"):
        DingTalkAdapter("d", _config(mappings={"task": {"title": "x"}}))
    with pytest.raises(ConfigError, match="authType must be one of app_secret"):
        DingTalkAdapter("d", _config(authType="corp_secret"))


async def test_the_connection_test_reads_scopes_and_proves_both_tokens() -> None:
    async with running() as (fake, dingtalk):
        await dingtalk.test_connection()
    assert [r.path for r in fake.requests] == ["/gettoken", "/auth/scopes", "/v1.0/oauth2/accessToken"]
    assert fake.records == {}


async def test_a_wrong_secret_is_an_auth_error() -> None:
    async with running(DingTalkFake(app_secret="another")) as (_, dingtalk):
        with pytest.raises(AuthError):
            await dingtalk.create(TECH, "task", ctx())
