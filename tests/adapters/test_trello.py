"""Trello adapter against the Trello fake over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.http import Request
from octopus_crm.adapters.spec import dedupe_marker
from octopus_crm.adapters.trello import DESC_MAX, TrelloAdapter
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.trello import TrelloFake
from tests.adapters.seed import event_of, seed_config, with_changes

TECH = event_of("技术支持")  # priority urgent
DESC = f"{TECH.content}\n\n来源: {TECH.platform} / {TECH.sender.name}"
FEEDBACK = event_of("产品反馈")  # priority low
KEY = TrelloFake.ENV["TRELLO_API_KEY"]
TOKEN = TrelloFake.ENV["TRELLO_TOKEN"]


@asynccontextmanager
async def running(fake: TrelloFake | None = None, **overrides: Any) -> AsyncIterator[tuple[TrelloFake, TrelloAdapter]]:
    fake = fake or TrelloFake()
    async with SandboxServer(fake):
        adapter = TrelloAdapter(*seed_config("trello", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1:board-trello:card") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="board-trello")


def overriding(**fields: Any) -> DeliveryContext:
    return DeliveryContext(idempotency_key="evt-1:board-trello:card", overrides=fields)


def creates(fake: TrelloFake) -> list[Any]:
    return [r for r in fake.requests if r.path == "/1/cards"]


async def test_seed_card_is_created_in_the_list_with_credentials_in_the_query() -> None:
    async with running() as (fake, trello):
        delivered = await trello.create(TECH, "card", ctx())
    card = fake.records[delivered.external_id]
    assert delivered.external_url == card["shortUrl"]
    (request,) = creates(fake)
    assert request.method == "POST"
    assert request.query == {"key": KEY, "token": TOKEN}
    assert request.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(request.body)
    assert set(body) == {"idList", "name", "desc", "pos"}
    assert body["idList"] == TrelloFake.LIST_ID
    assert body["name"] == f"[技术支持] {TECH.sender.name}: {TECH.content}"
    assert body["pos"] == "top"  # urgent → top of the list
    assert body["desc"] == f"{DESC}\n\n{dedupe_marker(ctx().idempotency_key)}"
    assert card["ignored"] == []


async def test_low_priority_goes_to_the_bottom_and_value_maps_can_be_overridden() -> None:
    async with running() as (fake, trello):
        await trello.create(FEEDBACK, "card", ctx("a"))
    assert orjson.loads(creates(fake)[0].body)["pos"] == "bottom"
    async with running(valueMaps={"card.pos": {"low": "top"}}) as (fake, trello):
        await trello.create(FEEDBACK, "card", ctx("b"))
    assert orjson.loads(creates(fake)[0].body)["pos"] == "top"


@pytest.mark.parametrize(
    "config",
    [
        {"credentials": {"key": KEY, "apiToken": TOKEN}, "idList": TrelloFake.LIST_ID},
        {"credentials": {"api_key": KEY, "accessToken": TOKEN}, "list_id": TrelloFake.LIST_ID},
    ],
)
async def test_other_spellings_of_the_settings_are_accepted(config: dict[str, Any]) -> None:
    fake = TrelloFake()
    mapping = {"card": {"name": "{{messageContent}}"}}
    async with SandboxServer(fake):
        raw = {"mappings": mapping, "endpoints": fake.endpoints(), **config}
        trello = TrelloAdapter("t", IntegrationConfig.model_validate(raw))
        try:
            delivered = await trello.create(TECH, "card", ctx())
        finally:
            await trello.aclose()
    assert fake.records[delivered.external_id]["idList"] == TrelloFake.LIST_ID


def test_unknown_keys_and_a_missing_token_are_refused_at_load() -> None:
    base = {"credentials": {"apiKey": "k", "token": "t"}, "mappings": {"card": {"name": "x", "idList": "a" * 24}}}
    with pytest.raises(ConfigError, match="lsitId: unknown key; did you mean listId"):
        TrelloAdapter("t", IntegrationConfig.model_validate({**base, "lsitId": "x"}))
    with pytest.raises(ConfigError, match=r"credentials\.token is required"):
        TrelloAdapter("t", IntegrationConfig.model_validate({**base, "credentials": {"apiKey": "k"}}))


async def test_the_mapping_names_the_list_or_the_create_is_refused() -> None:
    other = "5f" * 12
    async with running(TrelloFake(lists=(TrelloFake.LIST_ID, other))) as (fake, trello):
        delivered = await trello.create(TECH, "card", overriding(idList=other))
        assert fake.records[delivered.external_id]["idList"] == other
    async with running(listId=None) as (fake, trello):
        with pytest.raises(ConfigError, match="idList is required"):
            await trello.create(TECH, "card", ctx())
    assert creates(fake) == []


async def test_a_long_message_keeps_its_marker_within_trellos_limit() -> None:
    event = with_changes(TECH, content="长" * 20000)
    async with running() as (fake, trello):
        delivered = await trello.create(event, "card", ctx())
        found = await trello.find_existing(event, "card", ctx())
    desc = fake.records[delivered.external_id]["desc"]
    assert len(desc) <= DESC_MAX and desc.endswith(dedupe_marker(ctx().idempotency_key))
    assert found is not None and found.external_id == delivered.external_id


async def test_find_existing_matches_only_this_deliverys_marker() -> None:
    async with running() as (fake, trello):
        first = await trello.create(TECH, "card", ctx("one"))
        await trello.create(TECH, "card", ctx("two"))
        found = await trello.find_existing(TECH, "card", ctx("one"))
        missing = await trello.find_existing(TECH, "card", ctx("three"))
    assert found is not None and (found.external_id, found.external_url) == (first.external_id, first.external_url)
    assert missing is None
    lookup = next(r for r in fake.requests if r.path.startswith("/1/lists/"))
    assert lookup.path == f"/1/lists/{TrelloFake.LIST_ID}/cards" and lookup.query["token"] == TOKEN


async def test_without_the_marker_nothing_is_looked_up() -> None:
    async with running(dedupeMarker=False) as (fake, trello):
        await trello.create(TECH, "card", ctx())
        assert await trello.find_existing(TECH, "card", ctx()) is None
    assert orjson.loads(creates(fake)[0].body)["desc"] == DESC
    assert [r.path for r in fake.requests] == ["/1/cards"]


async def test_key_and_token_never_reach_error_text_or_the_reported_url() -> None:
    echo = f"invalid token {TOKEN} for key {KEY} at /1/cards?key={KEY}&token={TOKEN}"
    async with running() as (fake, trello):
        fake.inject(Fault(401, echo))
        with pytest.raises(AuthError) as auth:
            await trello.create(TECH, "card", ctx())
        fake.inject(Fault(400, {"message": echo, "error": "ERROR"}))
        with pytest.raises(PermanentError) as bad:
            await trello.create(TECH, "card", ctx())
        port = fake.base_url.rsplit(":", 1)[1]
    for error in (auth.value, bad.value):
        text = f"{error} {error.message} {error.as_dict()}"
        assert KEY not in text and TOKEN not in text
    closed = TrelloAdapter(*seed_config("trello", fake, endpoints={"baseUrl": f"http://127.0.0.1:{port}"}))
    with pytest.raises(RetryableError) as down:
        await closed.create(TECH, "card", ctx())
    await closed.aclose()
    assert KEY not in str(down.value) and TOKEN not in str(down.value)


async def test_the_reported_url_of_a_response_has_no_query() -> None:
    async with running() as (_, trello):
        response = await trello.http.send(Request("GET", "/1/members/me"))
    assert response.status == 200 and "?" not in response.url and TOKEN not in response.url


async def test_429_bodies_wait_out_trellos_window_or_retry_after() -> None:
    limit = {"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}
    async with running() as (fake, trello):
        fake.inject(Fault(429, limit))
        with pytest.raises(RateLimitedError) as plain:
            await trello.create(TECH, "card", ctx())
    assert plain.value.retry_after == 10.0 and "API_TOKEN_LIMIT_EXCEEDED" in plain.value.message
    async with running() as (fake, trello):
        fake.inject(Fault(429, {**limit, "error": "API_KEY_LIMIT_EXCEEDED"}, headers={"Retry-After": "3"}))
        with pytest.raises(RateLimitedError) as told:
            await trello.create(TECH, "card", ctx())
    assert told.value.retry_after == 3.0


async def test_the_fake_enforces_the_per_token_window_with_trellos_body() -> None:
    async with running(TrelloFake(rate_limit=(2, 10.0)), rateLimit={"requests": 100, "concurrency": 4}) as (_, trello):
        await trello.create(TECH, "card", ctx("a"))
        await trello.create(TECH, "card", ctx("b"))
        with pytest.raises(RateLimitedError) as info:
            await trello.create(TECH, "card", ctx("c"))
    assert "API_TOKEN_LIMIT_EXCEEDED" in info.value.message


async def test_the_fake_refuses_what_trello_refuses() -> None:
    async with running() as (fake, trello):
        with pytest.raises(PermanentError, match="invalid value for pos"):
            await trello.create(TECH, "card", overriding(pos="middle"))
        with pytest.raises(PermanentError, match="invalid value for idList"):
            await trello.create(TECH, "card", overriding(idList="0" * 24))
        with pytest.raises(PermanentError, match="invalid value for idLabels"):
            await trello.create(TECH, "card", overriding(idLabels=["red"]))
    assert fake.records == {}


def test_the_limiter_scope_is_the_token_never_the_token_itself() -> None:
    _, config = seed_config("trello", TrelloFake(), endpoints={"baseUrl": "https://api.trello.com"})
    scope = TrelloAdapter("a", config).limit_scope
    assert scope.startswith("trello:token:") and TOKEN not in scope
    assert TrelloAdapter("b", config).limit_scope == scope


@pytest.mark.parametrize("answer", [[1, 2], "a string", 42, None, {"id": {"nested": 1}}])
async def test_answers_of_an_undocumented_shape_are_typed_errors(answer: Any) -> None:
    async with running() as (fake, trello):
        fake.inject(Fault(200, body=answer, path_contains="/1/cards"))
        with pytest.raises(DeliveryError):
            await trello.create(TECH, "card", ctx())
        fake.inject(Fault(200, body=[answer, "x"], path_contains="/1/lists/"))
        assert await trello.find_existing(TECH, "card", ctx()) is None
