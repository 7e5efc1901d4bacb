"""Linear adapter against the Linear fake over real loopback HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext
from octopus_crm.adapters.linear import CREATE, PRIORITY_LINEAR, LinearAdapter, issue_id
from octopus_crm.core.errors import AuthError, ConfigError, PermanentError, RateLimitedError
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.linear import TEAM_ID, LinearFake
from tests.adapters.seed import event_of, seed_config

TECH = event_of("技术支持")


@asynccontextmanager
async def running(fake: LinearFake | None = None, **overrides: Any) -> AsyncIterator[tuple[LinearFake, LinearAdapter]]:
    fake = fake or LinearFake()
    async with SandboxServer(fake):
        adapter = LinearAdapter(*seed_config("linear", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:tech-linear:issue") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="tech-linear")


def creates(fake: LinearFake) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in fake.requests if b"issueCreate" in r.body]


async def test_the_seed_mapping_creates_an_issue_with_our_id() -> None:
    async with running() as (fake, linear):
        delivered = await linear.create(TECH, "issue", ctx())
    (body,) = creates(fake)
    assert body["query"] == CREATE
    issue = body["variables"]["input"]
    assert issue["teamId"] == TEAM_ID
    assert issue["id"] == issue_id(ctx().idempotency_key) == delivered.external_id
    assert issue["title"].startswith("技术支持 - ")
    assert issue["description"] == f"{TECH.content}\n\n来源: {TECH.platform} / {TECH.sender.name}"
    assert issue["priority"] == PRIORITY_LINEAR[TECH.classification.priority]
    assert delivered.detail["identifier"] == "SUP-1"
    assert delivered.external_url == "https://linear.app/octopus-fake/issue/sup-1"
    assert fake.requests[-1].headers["Authorization"] == LinearFake.ENV["LINEAR_API_KEY"]  # no "Bearer"


def test_the_issue_id_is_a_uuid_v4_fixed_by_the_key() -> None:
    first = issue_id("evt-1:tech-linear:issue")
    assert uuid.UUID(first).version == 4
    assert first == issue_id("evt-1:tech-linear:issue") != issue_id("evt-2:tech-linear:issue")


async def test_a_resent_create_finds_the_issue_instead_of_a_second_one() -> None:
    async with running() as (fake, linear):
        first = await linear.create(TECH, "issue", ctx())
        again = await linear.create(TECH, "issue", ctx())
    assert again.external_id == first.external_id and again.detail["identifier"] == "SUP-1"
    assert len(fake.records) == 1
    assert [name for name, _ in fake.operations] == ["issueCreate", "issueCreate", "issue"]


async def test_a_refusal_without_an_issue_behind_it_stands() -> None:
    async with running(teamId="00000000-0000-4000-8000-000000000000") as (fake, linear):
        with pytest.raises(PermanentError, match="Team") as info:
            await linear.create(TECH, "issue", ctx())
    assert info.value.code == "INVALID_INPUT"
    assert fake.records == {}


async def test_ratelimited_comes_with_http_400_and_is_dated_by_the_budget_headers() -> None:
    async with running(LinearFake(requests_limit=0)) as (_fake, linear):
        with pytest.raises(RateLimitedError) as info:
            await linear.create(TECH, "issue", ctx())
    assert info.value.status == 400 and info.value.code == "RATELIMITED"
    assert info.value.retry_after is not None and info.value.retry_after > 60  # the request budget resets in ~1 h


async def test_a_low_complexity_budget_pauses_before_it_runs_dry() -> None:
    async with running(LinearFake(complexity_limit=25)) as (_fake, linear):
        await linear.create(TECH, "issue", ctx())  # costs 10 of 25: 15 left < two more creates
        limiter = linear.current_limiter()
        assert limiter is not None and limiter.paused_for > 1


async def test_oauth_sends_a_bearer_token_and_teamid_may_sit_in_the_mapping() -> None:
    fake = LinearFake()
    async with SandboxServer(fake):
        _, config = seed_config("linear", fake)
        settings = config.model_dump()
        settings.update(authType="oauth", credentials={"accessToken": "lin_oauth_fake_token"})
        settings["mappings"]["issue"]["teamId"] = settings.pop("teamId")
        linear = LinearAdapter("tech-linear", type(config).model_validate(settings))
        try:
            await linear.create(TECH, "issue", ctx())
            await linear.test_connection()
        finally:
            await linear.aclose()
    assert fake.requests[0].headers["Authorization"] == "Bearer lin_oauth_fake_token"
    assert [name for name, _ in fake.operations] == ["issueCreate", "viewer"]


async def test_a_bad_key_is_an_auth_error_after_one_attempt() -> None:
    async with running(credentials={"apiKey": "lin_api_wrong"}) as (fake, linear):
        with pytest.raises(AuthError):
            await linear.create(TECH, "issue", ctx())
    assert len(fake.requests) == 1


def test_teamid_is_required_and_a_typo_is_named() -> None:
    fake = LinearFake()
    fake.base_url = "http://127.0.0.1:9"
    _, config = seed_config("linear", fake)
    settings = config.model_dump()
    settings.pop("teamId")
    with pytest.raises(ConfigError, match="teamId is required"):
        LinearAdapter("tech-linear", type(config).model_validate(settings))
    with pytest.raises(ConfigError, match="did you mean teamId"):
        LinearAdapter("tech-linear", type(config).model_validate({**settings, "teamID": TEAM_ID}))


async def test_the_fake_rejects_what_the_schema_rejects() -> None:
    async with running() as (fake, linear):
        bad_field = await linear.http.raw(_post(linear, 'mutation { issueCreate(input: {teamId: "x"}) { nope } }'))
        bad_variable = await linear.http.raw(_post(linear, CREATE, {"input": {"title": "no team"}}))
    assert bad_field.status == 400 and "nope" in bad_field.text
    assert orjson.loads(bad_field.body)["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert bad_variable.status == 400 and "teamId" in bad_variable.text
    assert fake.records == {}


async def test_an_error_with_partial_data_is_still_a_failure() -> None:
    body = {"data": {"issueCreate": None}, "errors": [{"message": "x", "extensions": {"code": "INVALID_INPUT"}}]}
    async with running() as (fake, linear):
        fake.inject(Fault(200, body, body_contains="issueCreate"))
        with pytest.raises(PermanentError):
            await linear.create(TECH, "issue", ctx())


def _post(adapter: LinearAdapter, query: str, variables: dict[str, Any] | None = None) -> Any:
    from octopus_crm.adapters.http import Request

    headers = {"Authorization": LinearFake.ENV["LINEAR_API_KEY"]}
    return Request("POST", adapter.base_url, json={"query": query, "variables": variables or {}}, headers=headers)
