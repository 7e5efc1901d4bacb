"""The VendorSpec engine's parts no current vendor uses yet, against a small vendor over loopback
whose envelope (who may call, token endpoints) is built from the same spec: API-key header and
query auth, OAuth2 client credentials, a JSON token in the query, an id in ``Location``, GraphQL
errors, a status map, quota detection, retry-after headers and an unknown ``authType``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest
from aiohttp import web
from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext, IntegrationConfig
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings
from octopus_crm.adapters.spec import (
    ApiKeyHeader,
    ApiKeyQuery,
    ConnectionCheck,
    CreateCall,
    Errors,
    JsonToken,
    OAuth2ClientCredentials,
    SpecAdapter,
    VendorSpec,
)
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.envelope import caller, token_route
from octopus_crm_sandbox.kit import FakeVendor, Fault, SandboxServer
from tests.adapters.seed import event_of

KEY = "k-123"
CLIENT = ("cid", "csecret")
ACCEPTED = {"apiKey": KEY, "clientId": CLIENT[0], "clientSecret": CLIENT[1]}


class TinyFake(FakeVendor):
    """A vendor with a REST create (id in Location), a GraphQL create and an OAuth2 token route."""

    name = "tiny"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen_auth: list[str] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            token_route(SPEC.auth["oauth2"], ACCEPTED, self),
            token_route(SPEC.auth["json_token"], ACCEPTED, self),
            web.post("/items", self.create),
            web.post("/graphql", self.graphql),
            web.get("/me", self.me),
        ]

    def authorised(self, request: web.Request) -> bool:
        callers = [caller(scheme, request, ACCEPTED, self) for scheme in SPEC.auth.values()]
        self.seen_auth.append(request.headers.get("X-Api-Key") or request.query.get("key") or "")
        return any(callers)

    async def create(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.json_response({"message": "bad key"}, status=401)
        record_id = self.new_id("it_")
        self.records[record_id] = await request.json()
        return web.json_response({}, status=201, headers={"Location": f"{self.base_url}/items/{record_id}"})

    async def graphql(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.json_response({"errors": [{"message": "no", "extensions": {"code": "UNAUTHENTICATED"}}]})
        record_id = self.new_id("gq_")
        self.records[record_id] = await request.json()
        return web.json_response(
            {"data": {"issueCreate": {"issue": {"id": record_id, "url": f"https://t/{record_id}"}}}}
        )

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True}) if self.authorised(request) else web.json_response({}, status=401)


class TinyCredentials(Credentials):
    apiKey: SecretStr | None = None
    clientId: str | None = None
    clientSecret: SecretStr | None = None


class TinyEndpoints(Endpoints):
    baseUrl: Url | None = None


class TinySettings(VendorSettings):
    credentials: TinyCredentials = Field(default_factory=TinyCredentials)
    endpoints: TinyEndpoints = Field(default_factory=TinyEndpoints)


def _graphql_body(adapter: Any, fields: dict[str, Any], event: Any, ctx: DeliveryContext) -> Any:
    return {"query": "mutation($t: String!) { issueCreate(title: $t) { issue { id url } } }", "variables": fields}


SPEC = VendorSpec(
    auth={
        "header": ApiKeyHeader("X-Api-Key", ("apiKey",)),
        "query": ApiKeyQuery({"key": ("apiKey",)}),
        "oauth2": OAuth2ClientCredentials("/oauth/token"),
        "json_token": JsonToken(
            "/cgi/gettoken",
            method="GET",
            send={"corpid": ("clientId",), "corpsecret": ("clientSecret",)},
            token_field="access_token",
            ttl_field="expires_in",
            code_field="errcode",
            message_field="errmsg",
            param="access_token",
        ),
    },
    default_auth="header",
    objects={
        "item": CreateCall(
            "/items", id_header="Location", url=lambda adapter, rid, body: f"{adapter.base_url}/i/{rid}"
        ),
        "issue": CreateCall(
            "/graphql",
            body=_graphql_body,
            id_at=("data", "issueCreate", "issue", "id"),
            url_at=("data", "issueCreate", "issue", "url"),
        ),
    },
    errors=Errors(
        graphql=True,
        status={409: "retryable"},
        retry_after_headers=("X-RateLimit-Reset-After",),
        quota=lambda response: "daily" in response.text,
    ),
    test_call=ConnectionCheck("/me"),
)


class TinyAdapter(SpecAdapter):
    info: ClassVar[AdapterInfo] = AdapterInfo(
        type="tiny",
        display_name="Tiny",
        display_name_zh="Tiny",
        object_types=("item", "issue"),
        auth_types=("header", "query", "oauth2", "json_token"),
        rate_limit=RateLimit(requests=1000, concurrency=8),
    )
    settings_model = TinySettings
    spec = SPEC


def tiny(fake: TinyFake, auth_type: str = "header", **credentials: str) -> TinyAdapter:
    config = {
        "authType": auth_type,
        "credentials": credentials or {"apiKey": KEY},
        "endpoints": {"baseUrl": fake.base_url, "allowPrivateNetwork": True},
        "mappings": {"item": {"title": "{{messageContent}}"}, "issue": {"t": "{{category}}"}},
    }
    return TinyAdapter("tiny-1", IntegrationConfig.model_validate(config))


@asynccontextmanager
async def running(auth_type: str = "header", **credentials: str) -> AsyncIterator[tuple[TinyFake, TinyAdapter]]:
    fake = TinyFake()
    async with SandboxServer(fake):
        adapter = tiny(fake, auth_type, **credentials)
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


CTX = DeliveryContext("evt-1:tiny-1:item")


@pytest.mark.parametrize("auth_type", ["header", "query"])
async def test_api_key_in_a_header_or_the_query_and_the_id_from_location(auth_type: str) -> None:
    async with running(auth_type) as (fake, adapter):
        delivered = await adapter.create(event_of("技术支持"), "item", CTX)
        await adapter.test_connection()
    assert delivered.external_id in fake.records
    assert delivered.external_url == f"{fake.base_url}/i/{delivered.external_id}"
    assert fake.seen_auth[0] == KEY


@pytest.mark.parametrize("auth_type", ["oauth2", "json_token"])
async def test_a_fetched_token_is_fetched_once_and_refreshed_once_on_401(auth_type: str) -> None:
    async with running(auth_type, clientId=CLIENT[0], clientSecret=CLIENT[1]) as (fake, adapter):
        await adapter.create(event_of("技术支持"), "item", CTX)
        await adapter.create(event_of("技术支持"), "item", CTX)
        assert fake.token_requests == 1
        fake.expire_tokens()
        await adapter.create(event_of("技术支持"), "item", CTX)
    assert fake.token_requests == 2
    assert len(fake.records) == 3


async def test_oauth2_needs_its_credentials_at_load() -> None:
    fake = TinyFake()
    fake.base_url = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match=r"credentials.clientSecret is required"):
        tiny(fake, "oauth2", clientId="cid")


async def test_graphql_answers_give_the_id_and_url_and_errors_are_typed() -> None:
    async with running() as (fake, adapter):
        delivered = await adapter.create(event_of("技术支持"), "issue", CTX)
        assert (
            delivered.external_id.startswith("gq_") and delivered.external_url == f"https://t/{delivered.external_id}"
        )
        cases = [
            ({"errors": [{"message": "slow down", "extensions": {"code": "RATELIMITED"}}]}, RateLimitedError),
            ({"errors": [{"message": "who", "extensions": {"code": "UNAUTHENTICATED"}}]}, AuthError),
            ({"errors": [{"message": "title is required"}]}, PermanentError),
        ]
        for body, expected in cases:
            fake.inject(Fault(200, body, path_contains="/graphql"))
            with pytest.raises(expected):
                await adapter.create(event_of("技术支持"), "issue", CTX)


async def test_status_map_retry_after_headers_and_quota_detection() -> None:
    async with running() as (fake, adapter):
        fake.inject(Fault(409, "conflict", path_contains="/items"))
        with pytest.raises(RetryableError):
            await adapter.create(event_of("技术支持"), "item", CTX)
        fake.inject(Fault(429, "slow", headers={"X-RateLimit-Reset-After": "7"}, path_contains="/items"))
        with pytest.raises(RateLimitedError) as limited:
            await adapter.create(event_of("技术支持"), "item", CTX)
        assert limited.value.retry_after == 7.0 and not isinstance(limited.value, QuotaExhaustedError)
    async with running() as (fake, adapter):  # a fresh limiter: the one above pauses for 7 s
        fake.inject(Fault(429, "daily limit reached", path_contains="/items"))
        with pytest.raises(QuotaExhaustedError) as quota:
            await adapter.create(event_of("技术支持"), "item", CTX)
    assert quota.value.retry_after == 3600.0


def test_an_unknown_auth_type_names_the_accepted_ones() -> None:
    fake = TinyFake()
    fake.base_url = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match=r"authType must be one of header, query, oauth2, json_token \(got 'basic'\)"):
        tiny(fake, "basic")


def test_an_oauth2_token_is_sent_under_the_schemes_name() -> None:
    from aiohttp.test_utils import make_mocked_request

    from octopus_crm.adapters.auth import Token
    from octopus_crm.adapters.http import Request
    from octopus_crm.adapters.spec import OAuth2Refresh

    scheme = OAuth2Refresh("/oauth/v2/token", scheme="Zoho-oauthtoken")
    request = Request("GET", "/x")
    scheme.place(request, Token("t-1"))
    assert request.headers["Authorization"] == "Zoho-oauthtoken t-1"
    fake = TinyFake()
    fake.tokens["t-1"] = float("inf")
    ok = make_mocked_request("GET", "/x", headers={"Authorization": "Zoho-oauthtoken t-1"})
    as_bearer = make_mocked_request("GET", "/x", headers={"Authorization": "Bearer t-1"})
    assert caller(scheme, ok, {}, fake) == "token"
    assert caller(scheme, as_bearer, {}, fake) is None
