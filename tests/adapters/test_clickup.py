"""ClickUp adapter against the ClickUp fake over real loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.clickup import ClickUpAdapter
from octopus_crm.adapters.spec import dedupe_marker
from octopus_crm.core.errors import AuthError, ConfigError, DeliveryError, PermanentError, RateLimitedError
from octopus_crm_sandbox.clickup import ClickUpFake
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import event_of, seed_config

TECH = event_of("技术支持")  # priority urgent
FEEDBACK = event_of("产品反馈")  # priority low
TOKEN = ClickUpFake.ENV["CLICKUP_API_TOKEN"]
KEY = "evt-1:tasks-clickup:task"


@asynccontextmanager
async def running(
    fake: ClickUpFake | None = None, **overrides: Any
) -> AsyncIterator[tuple[ClickUpFake, ClickUpAdapter]]:
    fake = fake or ClickUpFake()
    async with SandboxServer(fake):
        adapter = ClickUpAdapter(*seed_config("clickup", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = KEY, **overrides: Any) -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="tasks-clickup", overrides=overrides)


def creates(fake: ClickUpFake) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


async def test_seed_task_is_created_with_the_token_without_a_scheme() -> None:
    async with running() as (fake, clickup):
        delivered = await clickup.create(TECH, "task", ctx())
    assert delivered.external_url == f"https://app.clickup.com/t/{delivered.external_id}"
    (request,) = creates(fake)
    assert request.path == f"/api/v2/list/{ClickUpFake.LIST_ID}/task"
    assert request.headers["Authorization"] == TOKEN  # no "Bearer"
    body = orjson.loads(request.body)
    assert body == {
        "name": f"[技术支持] {TECH.sender.name}: {TECH.content}",
        "markdown_description": f"{TECH.content}\n\n来源: {TECH.platform} / {TECH.sender.name}",
        "priority": 1,  # urgent
        "tags": ["octopus", dedupe_marker(KEY)],
    }
    task = fake.records[delivered.external_id]
    assert task["priority"]["priority"] == "urgent"


@pytest.mark.parametrize(
    ("priority", "expected"), [("low", 4), ("medium", 3), ("normal", 3), ("high", 2), ("urgent", 1), ("2", 2)]
)
async def test_priorities_map_onto_clickups_numbers(priority: str, expected: int) -> None:
    async with running() as (fake, clickup):
        await clickup.create(TECH, "task", ctx(priority=priority))
    assert orjson.loads(creates(fake)[0].body)["priority"] == expected


async def test_an_unknown_priority_is_left_out_rather_than_refused() -> None:
    async with running() as (fake, clickup):
        await clickup.create(TECH, "task", ctx(priority="whenever"))
    assert "priority" not in orjson.loads(creates(fake)[0].body)


async def test_tags_written_as_text_are_split_and_the_marker_can_be_turned_off() -> None:
    async with running(dedupeTag=False) as (fake, clickup):
        await clickup.create(TECH, "task", ctx(tags="vip, refund"))
        assert await clickup.find_existing(TECH, "task", ctx()) is None
    assert orjson.loads(creates(fake)[0].body)["tags"] == ["vip", "refund"]
    assert [r.method for r in fake.requests] == ["POST"]


async def test_other_spellings_and_oauth2_bearer_are_accepted() -> None:
    fake = ClickUpFake(token="oauth-access-token")
    mapping = {"task": {"name": "{{messageContent}}"}}
    async with SandboxServer(fake):
        for auth_type, credentials, listed in (
            ("token", {"personalToken": "oauth-access-token"}, {"list_id": ClickUpFake.LIST_ID}),
            ("oauth2", {"accessToken": "oauth-access-token"}, {"listId": ClickUpFake.LIST_ID}),
        ):
            raw = {
                "authType": auth_type,
                "credentials": credentials,
                "mappings": mapping,
                "endpoints": fake.endpoints(),
            }
            clickup = ClickUpAdapter("c", IntegrationConfig.model_validate({**raw, **listed}))
            try:
                if auth_type == "token":
                    await clickup.create(TECH, "task", ctx())
                else:  # the fake takes the token without a scheme: Bearer is refused, as ClickUp would for a pk_
                    with pytest.raises(AuthError):
                        await clickup.create(TECH, "task", ctx())
            finally:
                await clickup.aclose()
    assert [r.headers["Authorization"] for r in creates(fake)] == ["oauth-access-token", "Bearer oauth-access-token"]


def test_a_missing_list_or_unknown_key_is_refused_at_load() -> None:
    base = {"credentials": {"apiToken": "pk_1"}, "mappings": {"task": {"name": "x"}}}
    with pytest.raises(ConfigError, match="listId is required"):
        ClickUpAdapter("c", IntegrationConfig.model_validate(base))
    with pytest.raises(ConfigError, match="did you mean listId"):
        ClickUpAdapter("c", IntegrationConfig.model_validate({**base, "listID": "1"}))


async def test_find_existing_asks_for_the_marker_tag() -> None:
    async with running() as (fake, clickup):
        first = await clickup.create(TECH, "task", ctx("one"))
        await clickup.create(TECH, "task", ctx("two"))
        found = await clickup.find_existing(TECH, "task", ctx("one"))
        missing = await clickup.find_existing(TECH, "task", ctx("three"))
    assert found is not None and (found.external_id, found.external_url) == (first.external_id, first.external_url)
    assert missing is None
    lookup = next(r for r in fake.requests if r.method == "GET")
    assert lookup.path == f"/api/v2/list/{ClickUpFake.LIST_ID}/task"
    assert lookup.query == {"tags[]": dedupe_marker("one"), "include_closed": "true", "subtasks": "true"}


async def test_error_bodies_keep_err_and_ecode() -> None:
    async with running() as (_, clickup):
        with pytest.raises(PermanentError) as info:
            await clickup.create(TECH, "task", ctx(status="nonsense"))
    assert info.value.message == "Status not found (ECODE CRTSK_001)" and info.value.status == 400
    async with running(ClickUpFake(token="pk_other")) as (_, clickup):
        with pytest.raises(AuthError) as denied:
            await clickup.create(TECH, "task", ctx())
    assert "OAUTH_025" in denied.value.message


async def test_a_429_waits_until_x_ratelimit_reset() -> None:
    reset = str(int(time.time()) + 42)
    headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    async with running() as (fake, clickup):
        fake.inject(Fault(429, {"err": "Rate limit reached", "ECODE": "APP_002"}, headers=headers))
        with pytest.raises(RateLimitedError) as info:
            await clickup.create(TECH, "task", ctx())
        limiter = clickup.current_limiter()
        assert limiter is not None and limiter.paused_for > 39
    assert info.value.retry_after is not None and 40 <= info.value.retry_after <= 42


async def test_the_fakes_own_window_answers_with_the_limit_headers() -> None:
    async with running(ClickUpFake(rate_limit=(1, 60.0))) as (_, clickup):
        await clickup.create(TECH, "task", ctx("a"))
        with pytest.raises(RateLimitedError) as info:
            await clickup.create(TECH, "task", ctx("b"))
    assert info.value.retry_after is not None and 55 <= info.value.retry_after <= 61


def test_the_limiter_scope_is_the_token() -> None:
    _, config = seed_config("clickup", ClickUpFake(), endpoints={"baseUrl": "https://api.clickup.com/api/v2"})
    scope = ClickUpAdapter("a", config).limit_scope
    assert scope.startswith("clickup:token:") and TOKEN not in scope


@pytest.mark.parametrize("answer", [[1, 2], "a string", 42, None, {"tasks": "none"}, {"tasks": [1, {"tags": "x"}]}])
async def test_answers_of_an_undocumented_shape_are_typed_errors(answer: Any) -> None:
    async with running() as (fake, clickup):
        fake.inject(Fault(200, body=answer, path_contains="/task"))
        with pytest.raises(DeliveryError):
            await clickup.create(TECH, "task", ctx())
        fake.inject(Fault(200, body=answer, path_contains="/task"))
        assert await clickup.find_existing(TECH, "task", ctx()) is None
