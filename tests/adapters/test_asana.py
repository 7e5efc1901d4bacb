"""Asana adapter against the Asana fake over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.asana import AsanaAdapter, external_gid
from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.core.errors import ConfigError, PermanentError, RateLimitedError, RetryableError
from octopus_crm_sandbox.asana import AsanaFake
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import event_of, seed_config

TECH = event_of("技术支持")
OAUTH = {"authType": "oauth", "credentials": {"accessToken": AsanaFake.ENV["ASANA_ACCESS_TOKEN"]}}


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[AsanaFake, AsanaAdapter]]:
    fake = AsanaFake()
    async with SandboxServer(fake):
        adapter = AsanaAdapter(*seed_config("asana", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:asana-demo:task") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="asana-demo")


def sent(fake: AsanaFake) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(next(r for r in fake.requests if r.method == "POST").body)
    return body


async def test_seed_task_is_created_in_the_project_with_the_priority_option() -> None:
    async with running() as (fake, asana):
        delivered = await asana.create(TECH, "task", ctx())
    record = fake.records[delivered.external_id]
    assert record["auth"] == "pat"
    assert delivered.external_url == f"https://app.asana.com/0/{AsanaFake.PROJECT}/{delivered.external_id}/f"
    data = sent(fake)["data"]
    assert data["projects"] == [AsanaFake.PROJECT]
    assert data["name"] == f"技术支持 - {TECH.sender.name}"
    assert TECH.content in data["notes"]
    option = {"high": "1200000000000913", "urgent": "1200000000000914", "medium": "1200000000000912"}
    assert data["custom_fields"] == {AsanaFake.PRIORITY_FIELD: option[TECH.classification.priority]}
    assert "external" not in data and "priority" not in data  # a PAT cannot write external data
    request = next(r for r in fake.requests if r.method == "POST")
    assert request.headers["Authorization"] == f"Bearer {AsanaFake.ENV['ASANA_TOKEN']}"
    assert request.query == {"opt_fields": "gid,name,permalink_url"}


async def test_oauth_sets_an_external_gid_and_finds_the_task_by_it() -> None:
    async with running(**OAUTH) as (fake, asana):
        assert await asana.find_existing(TECH, "task", ctx()) is None  # Asana's 404: not created
        delivered = await asana.create(TECH, "task", ctx())
        found = await asana.find_existing(TECH, "task", ctx())
    assert sent(fake)["data"]["external"] == {"gid": external_gid(ctx().idempotency_key)}
    assert found is not None and found.external_id == delivered.external_id
    assert found.external_url == delivered.external_url
    lookups = [r.path for r in fake.requests if r.method == "GET"]
    assert lookups == [f"/api/1.0/tasks/external:{external_gid(ctx().idempotency_key)}"] * 2


async def test_a_pat_integration_does_not_look_up() -> None:
    async with running() as (fake, asana):
        await asana.create(TECH, "task", ctx())
        assert await asana.find_existing(TECH, "task", ctx()) is None
    assert [r for r in fake.requests if r.method == "GET"] == []


async def test_other_spellings_and_a_workspace_container_are_accepted() -> None:
    mapping = {"task": {"name": "{{senderName}}", "tags": "1200000000000031, 1200000000000032"}}
    async with running(credentials={"personalAccessToken": AsanaFake.ENV["ASANA_TOKEN"]}) as (fake, _):
        config = seed_config("asana", fake)[1].model_dump()
        del config["projects"]
        config.update(workspaceId=AsanaFake.WORKSPACE, mappings=mapping, valueMaps={})
        config["credentials"] = {"personalAccessToken": AsanaFake.ENV["ASANA_TOKEN"]}
        del config["priorityField"]
        asana = AsanaAdapter("asana-ws", IntegrationConfig.model_validate(config))
        try:
            await asana.create(TECH, "task", ctx())
        finally:
            await asana.aclose()
    data = sent(fake)["data"]
    assert data["workspace"] == AsanaFake.WORKSPACE and "projects" not in data
    assert data["tags"] == ["1200000000000031", "1200000000000032"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"priorityField": None}, "priorityField"),
        ({"projects": None}, "projects or workspace"),
        ({"projectz": "1"}, "did you mean projects"),
    ],
)
def test_config_mistakes_fail_at_load(change: dict[str, Any], message: str) -> None:
    fake = AsanaFake()
    _, config = seed_config("asana", fake)
    raw = {k: v for k, v in {**config.model_dump(), **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        AsanaAdapter("asana-bad", IntegrationConfig.model_validate(raw))
    assert message in info.value.message


async def test_a_read_only_field_in_the_mapping_is_refused_with_asanas_message() -> None:
    async with running(mappings={"task": {"name": "x", "created_at": "2024-01-01T00:00:00Z"}}, valueMaps={}) as (
        fake,
        asana,
    ):
        with pytest.raises(PermanentError) as info:
            await asana.create(TECH, "task", ctx())
    assert info.value.status == 400 and "created_at: Cannot write this property" in info.value.message
    assert fake.records == {}


async def test_an_unknown_enum_option_keeps_the_vendor_message() -> None:
    async with running(valueMaps={"task.priority": {}}) as (_, asana):
        with pytest.raises(PermanentError) as info:
            await asana.create(TECH, "task", ctx())
    assert "is not a valid option" in info.value.message


async def test_429_is_rate_limited_with_retry_after_and_500_keeps_the_phrase() -> None:
    async with running() as (fake, asana):
        fake.inject(Fault(500, {"errors": [{"message": "Server Error", "phrase": "6 sad squid snuggle softly"}]}))
        with pytest.raises(RetryableError) as failed:
            await asana.create(TECH, "task", ctx("b"))
        fake.inject(Fault(429, {"errors": [{"message": "too many"}]}, headers={"Retry-After": "17"}))
        with pytest.raises(RateLimitedError) as limited:
            await asana.create(TECH, "task", ctx())
    assert limited.value.retry_after == 17 and limited.value.message == "too many"
    assert "Server Error" in failed.value.message


async def test_the_fake_answers_429_the_asana_way() -> None:
    fake = AsanaFake(rate_limit=(1, 60.0))
    async with SandboxServer(fake):
        asana = AsanaAdapter(*seed_config("asana", fake, rateLimit={"requests": 100}))
        try:
            await asana.create(TECH, "task", ctx("a"))
            with pytest.raises(RateLimitedError) as info:
                await asana.create(TECH, "task", ctx("b"))
        finally:
            await asana.aclose()
    assert info.value.retry_after is not None and 50 < info.value.retry_after <= 60
    assert "too many requests" in info.value.message


async def test_connection_test_reads_users_me() -> None:
    async with running() as (fake, asana):
        await asana.test_connection()
    assert [r.path for r in fake.requests] == ["/api/1.0/users/me"]
