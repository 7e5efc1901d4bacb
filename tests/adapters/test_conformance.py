"""One conformance suite for every HTTP vendor in the registry, against its fake over loopback.

The same cases for each: create → id and URL; a rejected token → exactly one refresh (static
credentials: one attempt, an auth error); 429 with and without ``Retry-After`` → the limiter
pauses and the next attempt waits it out; 5xx → retryable; a timeout after the request was sent →
ambiguous, then ``find_existing``; vendor error bodies → the taxonomy; the test-connection call
creates nothing; the default rate limit paces under the vendor's limit with no 429. (The email
adapter speaks SMTP, not HTTP: tests/adapters/test_email.py covers it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from octopus_crm.adapters.base import Adapter, DeliveryContext, IntegrationConfig
from octopus_crm.adapters.registry import ADAPTERS
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.airtable import AirtableFake
from octopus_crm_sandbox.asana import AsanaFake
from octopus_crm_sandbox.clickup import ClickUpFake
from octopus_crm_sandbox.dingtalk import DingTalkFake
from octopus_crm_sandbox.dynamics365 import DynamicsFake
from octopus_crm_sandbox.feishu import FeishuFake
from octopus_crm_sandbox.freshdesk import FreshdeskFake
from octopus_crm_sandbox.hubspot import HubSpotFake
from octopus_crm_sandbox.jira import JiraFake
from octopus_crm_sandbox.kit import FakeVendor, Fault, SandboxServer
from octopus_crm_sandbox.linear import LinearFake
from octopus_crm_sandbox.monday import MondayFake
from octopus_crm_sandbox.notion import NotionFake
from octopus_crm_sandbox.pipedrive import PipedriveFake
from octopus_crm_sandbox.salesforce import SalesforceFake
from octopus_crm_sandbox.slack import SlackFake
from octopus_crm_sandbox.trello import TrelloFake
from octopus_crm_sandbox.webhook import WebhookFake
from octopus_crm_sandbox.wecom import WeComFake
from octopus_crm_sandbox.zendesk import ZendeskFake
from octopus_crm_sandbox.zoho import ZohoFake
from tests.adapters.seed import event_of, resolved, sample_events, seed_entry
from tests.adapters.test_feishu import FEISHU_ENTRY

FAST = {"requests": 1000, "perSeconds": 1, "concurrency": 64}


def seed_configured(type_name: str) -> Callable[[FakeVendor], dict[str, Any]]:
    def config(fake: FakeVendor) -> dict[str, Any]:
        return dict(seed_entry(type_name, fake.ENV)["config"])  # type: ignore[attr-defined]

    return config


def feishu_config(fake: FakeVendor) -> dict[str, Any]:
    return dict(resolved(copy.deepcopy(FEISHU_ENTRY["config"]), fake.ENV))  # type: ignore[attr-defined]


def asana_oauth_config(fake: FakeVendor) -> dict[str, Any]:
    """The seed's Asana integration with an OAuth token, the auth type that can find tasks again."""
    config = seed_configured("asana")(fake)
    return {**config, "authType": "oauth", "credentials": {"accessToken": AsanaFake.ENV["ASANA_ACCESS_TOKEN"]}}


def notion_error(status: int, code: str) -> dict[str, Any]:
    return {"object": "error", "status": status, "code": code, "message": f"{code} (fake)"}


def webhook_config(fake: FakeVendor) -> dict[str, Any]:
    return {"authType": "none", "mappings": {"message": {"text": "{{messageContent}}", "id": "{{eventId}}"}}}


@dataclass(frozen=True)
class Vendor:
    type: str
    fake: Callable[..., FakeVendor]
    config: Callable[[FakeVendor], dict[str, Any]]
    object_type: str
    category: str
    create_path: str
    #: The fake issues tokens: a rejected one is refreshed once (else a 401 is final).
    fetched_token: bool = False
    has_url: bool = True
    finds: bool = False
    testable: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Vendor error answers on the create call → the error class the adapter must raise.
    body_errors: tuple[tuple[Fault, type[DeliveryError]], ...] = ()
    #: Bytes only a create request's body holds (GraphQL: every call goes to the same path).
    create_marker: str = ""

    def __str__(self) -> str:
        return self.type


VENDORS = [
    Vendor(
        "webhook",
        WebhookFake,
        webhook_config,
        "message",
        "技术支持",
        "/hooks/",
        testable=False,
        body_errors=((Fault(400, {"error": "bad"}), PermanentError), (Fault(403, "no"), AuthError)),
    ),
    Vendor(
        "salesforce",
        SalesforceFake,
        seed_configured("salesforce"),
        "lead",
        "销售线索",
        "/sobjects/Lead",
        fetched_token=True,
        finds=True,
        overrides={"endpoints": {"externalIdField": "Octopus_Event_Id__c"}},
        body_errors=(
            (
                Fault(400, [{"errorCode": "REQUIRED_FIELD_MISSING", "message": "m", "fields": ["LastName"]}]),
                PermanentError,
            ),
            (
                Fault(403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]),
                QuotaExhaustedError,
            ),
        ),
    ),
    Vendor(
        "hubspot",
        HubSpotFake,
        seed_configured("hubspot"),
        "contact",
        "销售线索",
        "/crm/v3/objects/contacts",
        finds=True,
        body_errors=(
            (Fault(400, {"status": "error", "message": "bad", "category": "VALIDATION_ERROR"}), PermanentError),
            (Fault(429, {"status": "error", "message": "daily", "policyName": "DAILY"}), QuotaExhaustedError),
        ),
    ),
    Vendor(
        "wecom",
        WeComFake,
        seed_configured("wework"),
        "oa_approval",
        "客户投诉",
        "/cgi-bin/oa/applyevent",
        fetched_token=True,
        has_url=False,
        body_errors=(
            (Fault(200, {"errcode": 45009, "errmsg": "api freq out of limit"}), RateLimitedError),
            (Fault(200, {"errcode": 60020, "errmsg": "not allow to access from your ip"}), AuthError),
            (Fault(200, {"errcode": -1, "errmsg": "system busy"}), RetryableError),
            (Fault(200, {"errcode": 301025, "errmsg": "bad template"}), PermanentError),
        ),
    ),
    Vendor(
        "feishu",
        FeishuFake,
        feishu_config,
        "task",
        "技术支持",
        "/task/v2/tasks",
        fetched_token=True,
        finds=True,
        body_errors=(
            (Fault(400, {"code": 99991400, "msg": "request trigger frequency limit"}), RateLimitedError),
            (Fault(400, {"code": 1470400, "msg": "invalid param"}), PermanentError),
        ),
    ),
    Vendor(
        "jira",
        JiraFake,
        seed_configured("jira"),
        "issue",
        "技术支持",
        "/rest/api/3/issue",
        finds=True,
        body_errors=(
            (Fault(400, {"errorMessages": [], "errors": {"summary": "required"}}), PermanentError),
            (Fault(403, {"errorMessages": ["no permission"]}), AuthError),
        ),
    ),
    Vendor(
        "slack",
        SlackFake,
        seed_configured("slack"),
        "message",
        "销售线索",
        "chat.postMessage",
        body_errors=(
            (Fault(200, {"ok": False, "error": "ratelimited"}), RateLimitedError),
            (Fault(200, {"ok": False, "error": "invalid_auth"}), AuthError),
            (Fault(200, {"ok": False, "error": "channel_not_found"}), PermanentError),
            (Fault(200, {"ok": False, "error": "internal_error"}), RetryableError),
        ),
    ),
    Vendor(
        "freshdesk",
        FreshdeskFake,
        seed_configured("freshdesk"),
        "ticket",
        "技术支持",
        "/api/v2/tickets",
        finds=True,
        body_errors=(
            (
                Fault(
                    400,
                    {
                        "description": "Validation failed",
                        "errors": [{"field": "email", "message": "m", "code": "invalid_value"}],
                    },
                ),
                PermanentError,
            ),
            (Fault(401, {"code": "invalid_credentials", "message": "You have to be logged in"}), AuthError),
            (Fault(403, {"code": "require_feature", "message": "The Ticket API is not on this plan"}), AuthError),
            (Fault(429, {"message": "per minute"}, headers={"Retry-After": "2"}), RateLimitedError),
            (Fault(502, "<html>bad gateway</html>"), RetryableError),
        ),
    ),
    Vendor(
        "dingtalk",
        DingTalkFake,
        seed_configured("dingtalk"),
        "task",
        "技术支持",
        "/v1.0/todo/users/",
        fetched_token=True,
        has_url=False,
        finds=True,
        body_errors=(
            (Fault(200, {"code": "staff.not.found", "message": "staff not found"}), PermanentError),
            (Fault(400, {"code": "todo.taskCreate.paramError", "message": "subject is oversize"}), PermanentError),
            (
                Fault(403, {"code": "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", "message": "qps"}),
                RateLimitedError,
            ),
            (
                Fault(403, {"code": "Forbidden.AccessDenied.ApiCountLimitForOrg", "message": "month"}),
                QuotaExhaustedError,
            ),
            (Fault(403, {"code": "Forbidden.AccessDenied.AccessTokenPermissionDenied", "message": "no"}), AuthError),
            (Fault(500, {"code": "todo.taskCreate.systemError", "message": "busy"}), RetryableError),
            (Fault(200, {"status": 1111, "wait": 5, "source": "x5", "punish": "deny"}), RateLimitedError),
            (Fault(200, {"errcode": 90018, "errmsg": "QPS"}), RateLimitedError),
            (Fault(200, {"errcode": 90020, "errmsg": "monthly quota"}), QuotaExhaustedError),
            (Fault(200, {"errcode": 88, "sub_code": "60011", "sub_msg": "no permission"}), AuthError),
            (Fault(200, {"errcode": -1, "errmsg": "系统繁忙"}), RetryableError),
        ),
    ),
    Vendor(
        "asana",
        AsanaFake,
        asana_oauth_config,
        "task",
        "技术支持",
        "/api/1.0/tasks",
        finds=True,
        body_errors=(
            (Fault(400, {"errors": [{"message": "projects: Missing input", "help": "h"}]}), PermanentError),
            (Fault(402, {"errors": [{"message": "This feature is only available to premium users."}]}), PermanentError),
            (Fault(403, {"errors": [{"message": "Forbidden"}]}), AuthError),
            (Fault(404, {"errors": [{"message": "project: Unknown object: 1"}]}), PermanentError),
            (
                Fault(500, {"errors": [{"message": "Server Error", "phrase": "6 sad squid snuggle softly"}]}),
                RetryableError,
            ),
        ),
    ),
    Vendor(
        "notion",
        NotionFake,
        seed_configured("notion"),
        "page",
        "产品反馈",
        "/v1/pages",
        finds=True,
        body_errors=(
            (Fault(400, notion_error(400, "validation_error")), PermanentError),
            (Fault(404, notion_error(404, "object_not_found")), PermanentError),
            (Fault(403, notion_error(403, "restricted_resource")), AuthError),
            (Fault(409, notion_error(409, "conflict_error")), RetryableError),
            (Fault(429, notion_error(429, "rate_limited"), headers={"Retry-After": "1"}), RateLimitedError),
            (Fault(529, notion_error(529, "service_overload")), RetryableError),
        ),
    ),
    Vendor(
        "trello",
        TrelloFake,
        seed_configured("trello"),
        "card",
        "技术支持",
        "/1/cards",
        finds=True,
        body_errors=(
            (Fault(400, "invalid value for idList"), PermanentError),
            (Fault(401, "invalid token"), AuthError),
            (Fault(404, "The requested resource was not found."), PermanentError),
            (Fault(429, {"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}), RateLimitedError),
            (Fault(429, {"error": "API_KEY_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}), RateLimitedError),
        ),
    ),
    Vendor(
        "clickup",
        ClickUpFake,
        seed_configured("clickup"),
        "task",
        "技术支持",
        "/task",
        finds=True,
        body_errors=(
            (Fault(400, {"err": "Task name invalid", "ECODE": "INPUT_005"}), PermanentError),
            (Fault(401, {"err": "Token invalid", "ECODE": "OAUTH_025"}), AuthError),
            (Fault(401, {"err": "Team not authorized", "ECODE": "OAUTH_027"}), AuthError),
            (Fault(429, {"err": "Rate limit reached", "ECODE": "APP_002"}), RateLimitedError),
            (Fault(500, {"err": "Internal error", "ECODE": "APP_001"}), RetryableError),
        ),
    ),
    Vendor(
        "airtable",
        AirtableFake,
        seed_configured("airtable"),
        "record",
        "产品反馈",
        "/v0/app",
        finds=True,
        body_errors=(
            (
                Fault(422, {"error": {"type": "UNKNOWN_FIELD_NAME", "message": 'Unknown field name: "X"'}}),
                PermanentError,
            ),
            (Fault(404, {"error": "NOT_FOUND"}), PermanentError),
            (Fault(403, {"error": {"type": "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", "message": "m"}}), AuthError),
            (
                Fault(429, {"errors": [{"error": "RATE_LIMIT_REACHED", "message": "Rate limit exceeded"}]}),
                RateLimitedError,
            ),
            (
                Fault(429, {"errors": [{"error": "PUBLIC_API_BILLING_LIMIT_EXCEEDED", "message": "monthly"}]}),
                QuotaExhaustedError,
            ),
            (Fault(503, {"error": {"type": "SERVICE_UNAVAILABLE", "message": "m"}}), RetryableError),
        ),
    ),
    Vendor(
        "dynamics365",
        DynamicsFake,
        seed_configured("dynamics365"),
        "lead",
        "销售线索",
        "/leads",
        fetched_token=True,
        finds=True,
        body_errors=(
            (Fault(400, {"error": {"code": "0x80044331", "message": "length exceeded"}}), PermanentError),
            (Fault(403, {"error": {"code": "0x80040220", "message": "missing prvCreateLead"}}), AuthError),
            (Fault(412, {"error": {"code": "0x80040237", "message": "key exists"}}), PermanentError),
            (
                Fault(429, {"error": {"code": "0x80072321", "message": "execution time"}}, {"Retry-After": "2"}),
                RateLimitedError,
            ),
            (Fault(503, {"error": {"code": "0x80040216", "message": "unexpected"}}), RetryableError),
        ),
    ),
    Vendor(
        "zoho",
        ZohoFake,
        seed_configured("zoho"),
        "lead",
        "销售线索",
        "/crm/v8/Leads",
        fetched_token=True,
        finds=True,
        body_errors=(
            (
                Fault(
                    400,
                    {
                        "data": [
                            {
                                "code": "MANDATORY_NOT_FOUND",
                                "details": {"api_name": "Last_Name"},
                                "message": "required field not found",
                                "status": "error",
                            }
                        ]
                    },
                ),
                PermanentError,
            ),
            (
                Fault(
                    202,
                    {
                        "data": [
                            {
                                "code": "INVALID_DATA",
                                "details": {"api_name": "Email"},
                                "message": "invalid data",
                                "status": "error",
                            }
                        ]
                    },
                ),
                PermanentError,
            ),
            (
                Fault(
                    207,
                    {
                        "data": [
                            {
                                "code": "INTERNAL_ERROR",
                                "details": {},
                                "message": "Internal server error occurred.",
                                "status": "error",
                            }
                        ]
                    },
                ),
                RetryableError,
            ),
            (
                Fault(403, {"code": "NO_PERMISSION", "details": {}, "message": "permission denied", "status": "error"}),
                AuthError,
            ),
            (
                Fault(
                    401,
                    {
                        "code": "OAUTH_SCOPE_MISMATCH",
                        "details": {},
                        "message": "invalid oauth scope",
                        "status": "error",
                    },
                ),
                AuthError,
            ),
            (
                Fault(
                    429, {"code": "TOO_MANY_REQUESTS", "details": {}, "message": "too many requests", "status": "error"}
                ),
                RateLimitedError,
            ),
            (
                Fault(
                    429,
                    {"code": "LIMIT_EXCEEDED", "details": {}, "message": "API credits exhausted", "status": "error"},
                ),
                QuotaExhaustedError,
            ),
        ),
    ),
    Vendor(
        "linear",
        LinearFake,
        seed_configured("linear"),
        "issue",
        "技术支持",
        "/graphql",
        finds=True,
        create_marker="issueCreate",
        body_errors=(
            (
                Fault(400, {"errors": [{"message": "Rate limit exceeded", "extensions": {"code": "RATELIMITED"}}]}),
                RateLimitedError,
            ),
            (
                Fault(400, {"errors": [{"message": "Team not found", "extensions": {"code": "INVALID_INPUT"}}]}),
                PermanentError,
            ),
            (
                Fault(
                    200, {"data": None, "errors": [{"message": "no", "extensions": {"code": "AUTHENTICATION_ERROR"}}]}
                ),
                AuthError,
            ),
            (
                Fault(
                    200,
                    {"data": None, "errors": [{"message": "boom", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]},
                ),
                RetryableError,
            ),
        ),
    ),
    Vendor(
        "monday",
        MondayFake,
        seed_configured("monday"),
        "item",
        "销售线索",
        "/v2",
        finds=True,
        create_marker="create_item",
        overrides={"dedupeColumn": "octopus_key"},
        body_errors=(
            (
                Fault(
                    200,
                    {
                        "errors": [
                            {
                                "message": "Complexity budget exhausted",
                                "extensions": {"code": "COMPLEXITY_BUDGET_EXHAUSTED", "retry_in_seconds": 1},
                            }
                        ]
                    },
                ),
                RateLimitedError,
            ),
            (
                Fault(
                    429,
                    {"errors": [{"message": "Daily limit exceeded", "extensions": {"code": "DAILY_LIMIT_EXCEEDED"}}]},
                    headers={"Retry-After": "3600"},
                ),
                QuotaExhaustedError,
            ),
            (
                Fault(
                    200,
                    {
                        "error_code": "ComplexityException",
                        "status_code": 429,
                        "error_message": "budget",
                        "errors": ["Complexity budget exhausted, reset in 3 seconds"],
                    },
                ),
                RateLimitedError,
            ),
            (
                Fault(
                    200,
                    {
                        "data": {"create_item": None},
                        "errors": [
                            {
                                "message": "invalid value",
                                "extensions": {
                                    "code": "ColumnValueException",
                                    "status_code": 200,
                                    "error_data": {"column_type": "status"},
                                },
                            }
                        ],
                    },
                ),
                PermanentError,
            ),
            (
                Fault(
                    200,
                    {
                        "errors": [
                            {
                                "message": "User unauthorized to perform action",
                                "extensions": {"code": "UserUnauthorizedException", "status_code": 403},
                            }
                        ]
                    },
                ),
                AuthError,
            ),
            (
                Fault(
                    200, {"errors": [{"message": "Oops", "extensions": {"code": "SomethingNew", "status_code": 500}}]}
                ),
                RetryableError,
            ),
        ),
    ),
    Vendor(
        "zendesk",
        ZendeskFake,
        seed_configured("zendesk"),
        "ticket",
        "客户服务",
        "/api/v2/tickets",
        finds=True,
        body_errors=(
            (
                Fault(422, {"error": "RecordInvalid", "description": "Record validation errors", "details": {}}),
                PermanentError,
            ),
            (Fault(400, {"error": "IdempotentRequestError", "description": "different request"}), PermanentError),
            (Fault(403, {"error": "Forbidden", "description": "You do not have access"}), AuthError),
            (Fault(409, {"error": "Conflict", "description": "concurrent update"}), RetryableError),
            (Fault(429, {"error": "APIRateLimitExceeded"}, headers={"ratelimit-reset": "7"}), RateLimitedError),
        ),
    ),
    Vendor(
        "pipedrive",
        PipedriveFake,
        seed_configured("pipedrive"),
        "lead",
        "销售线索",
        "/api/v1/leads",
        finds=True,
        body_errors=(
            (Fault(200, {"success": False, "error": "Person not found", "data": None}), PermanentError),
            (Fault(400, {"success": False, "error": "Validation failed", "error_info": "title"}), PermanentError),
            (Fault(410, {"success": False, "error": "Gone", "error_info": "out of support"}), PermanentError),
            (Fault(403, {"success": False, "error": "Scope and URL mismatch"}), AuthError),
            (
                Fault(429, {"success": False, "error": "Request over limit"}, headers={"Retry-After": "2"}),
                RateLimitedError,
            ),
            (
                Fault(429, {"success": False, "error": "Request over limit"}, headers={"x-daily-requests-left": "0"}),
                QuotaExhaustedError,
            ),
        ),
    ),
]
BY_TYPE = {v.type: v for v in VENDORS}


def test_every_http_vendor_in_the_registry_is_covered() -> None:
    http_types = {cls.info.type for cls in ADAPTERS.values() if cls.info.type != "email"}
    assert http_types == set(BY_TYPE)


def build(vendor: Vendor, fake: FakeVendor, **overrides: Any) -> Adapter:
    config = vendor.config(fake)
    config["endpoints"] = {**config.get("endpoints", {}), **fake.endpoints()}  # type: ignore[attr-defined]
    for key, value in {**vendor.overrides, **overrides}.items():
        config[key] = {**config.get(key, {}), **value} if key == "endpoints" else value
    return ADAPTERS[vendor.type](f"conf-{vendor.type}", IntegrationConfig.model_validate(config))


@asynccontextmanager
async def running(vendor: Vendor, fake: FakeVendor | None = None, **overrides: Any) -> AsyncIterator[tuple[Any, Any]]:
    fake = fake or vendor.fake()
    overrides.setdefault("rateLimit", FAST)
    async with SandboxServer(fake):
        adapter = build(vendor, fake, **overrides)
        await adapter.start()
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def event(vendor: Vendor, i: int = 0) -> ClassifiedMessage:
    if i == 0:
        return event_of(vendor.category)
    events = sample_events()
    return events[i % len(events)]


def ctx(vendor: Vendor, key: str = "k0") -> DeliveryContext:
    return DeliveryContext(f"evt-{key}:conf-{vendor.type}:{vendor.object_type}", integration_id=f"conf-{vendor.type}")


def creates(fake: FakeVendor, vendor: Vendor) -> list[Any]:
    return [
        r
        for r in fake.requests
        if vendor.create_path in r.path and r.method in ("POST", "PATCH") and vendor.create_marker.encode() in r.body
    ]


vendors = pytest.mark.parametrize("vendor", VENDORS, ids=str)


@vendors
async def test_create_returns_the_id_and_url(vendor: Vendor) -> None:
    async with running(vendor) as (fake, adapter):
        delivered = await adapter.create(event(vendor), vendor.object_type, ctx(vendor))
    assert delivered.external_id
    if vendor.has_url:
        assert delivered.external_url and delivered.external_url.startswith(("http://", "https://"))
    else:
        assert delivered.external_url is None
    assert len(creates(fake, vendor)) == 1


@vendors
async def test_a_rejected_token_is_refreshed_exactly_once(vendor: Vendor) -> None:
    async with running(vendor) as (fake, adapter):
        await adapter.create(event(vendor), vendor.object_type, ctx(vendor, "a"))
        if vendor.fetched_token:
            before = fake.token_requests
            fake.expire_tokens()
            delivered = await adapter.create(event(vendor, 1), vendor.object_type, ctx(vendor, "b"))
            assert delivered.external_id
            assert fake.token_requests == before + 1
        else:  # a static credential: the 401 is final, after one attempt
            fake.inject(Fault(401, "unauthorized", path_contains=vendor.create_path))
            sent = len(creates(fake, vendor))
            with pytest.raises(AuthError):
                await adapter.create(event(vendor, 1), vendor.object_type, ctx(vendor, "b"))
            assert len(creates(fake, vendor)) == sent + 1


@vendors
@pytest.mark.parametrize("retry_after", ["1", None], ids=["retry-after", "no-retry-after"])
async def test_429_pauses_the_limiter_and_wastes_no_attempt(vendor: Vendor, retry_after: str | None) -> None:
    async with running(vendor) as (fake, adapter):
        await adapter.create(event(vendor), vendor.object_type, ctx(vendor, "warm"))  # tokens, account
        headers = {"Retry-After": retry_after} if retry_after else {}
        fake.inject(Fault(429, "too many requests", headers=headers, path_contains=vendor.create_path))
        with pytest.raises(RateLimitedError):
            await adapter.create(event(vendor), vendor.object_type, ctx(vendor, "a"))
        sent = len(creates(fake, vendor))
        limiter = adapter.current_limiter()
        assert limiter is not None and limiter.paused_for > 0.5
        pause = limiter.paused_for
        next_attempt = asyncio.ensure_future(adapter.create(event(vendor, 1), vendor.object_type, ctx(vendor, "b")))
        await asyncio.sleep(0.6)
        assert len(creates(fake, vendor)) == sent  # the next attempt waits out the pause, no 429 spent
        if pause < 5:
            await asyncio.wait_for(next_attempt, 15)
            assert len(creates(fake, vendor)) == sent + 1
        else:  # a long parking (WeCom: a minute after a 429 without Retry-After)
            next_attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await next_attempt


@vendors
async def test_5xx_is_retryable(vendor: Vendor) -> None:
    async with running(vendor) as (fake, adapter):
        fake.inject(Fault(503, "upstream unavailable", path_contains=vendor.create_path))
        with pytest.raises(RetryableError) as info:
            await adapter.create(event(vendor), vendor.object_type, ctx(vendor))
    assert not isinstance(info.value, AmbiguousDeliveryError)


@vendors
async def test_a_timeout_after_sending_is_ambiguous_and_found_again(vendor: Vendor) -> None:
    async with running(vendor, timeouts={"connect": 2.0, "read": 0.5}) as (fake, adapter):
        await adapter.create(event(vendor, 1), vendor.object_type, ctx(vendor, "warm"))
        fake.inject(Fault(200, delay=1.0, after_effect=True, path_contains=vendor.create_path))
        with pytest.raises(AmbiguousDeliveryError):
            await adapter.create(event(vendor), vendor.object_type, ctx(vendor))
        found = None
        deadline = time.monotonic() + 10
        while vendor.finds and found is None and time.monotonic() < deadline:
            found = await adapter.find_existing(event(vendor), vendor.object_type, ctx(vendor))
            if found is None:
                await asyncio.sleep(0.3)  # Jira's search index lags writes
        if not vendor.finds:
            assert await adapter.find_existing(event(vendor), vendor.object_type, ctx(vendor)) is None
    if vendor.finds:
        assert found is not None and found.external_id


@pytest.mark.parametrize(
    ("vendor", "fault", "expected"),
    [pytest.param(v, f, e, id=f"{v.type}-{e.__name__}-{i}") for v in VENDORS for i, (f, e) in enumerate(v.body_errors)],
)
async def test_vendor_error_answers_map_to_the_taxonomy(
    vendor: Vendor, fault: Fault, expected: type[DeliveryError]
) -> None:
    async with running(vendor) as (fake, adapter):
        await adapter.create(event(vendor, 1), vendor.object_type, ctx(vendor, "warm"))
        fault.path_contains = vendor.create_path
        fake.inject(fault)
        with pytest.raises(DeliveryError) as info:
            await adapter.create(event(vendor), vendor.object_type, ctx(vendor))
    assert isinstance(info.value, expected), repr(info.value)


@vendors
async def test_the_connection_test_reads_and_creates_nothing(vendor: Vendor) -> None:
    async with running(vendor) as (fake, adapter):
        if not vendor.testable:
            with pytest.raises(ConfigError) as info:
                await adapter.test_connection()
            assert info.value.code == "not_testable"
        else:
            await adapter.test_connection()
    assert creates(fake, vendor) == []


@vendors
async def test_the_default_rate_limit_paces_without_429s(vendor: Vendor) -> None:
    """The adapter's documented default against a fake enforcing the vendor's limit."""
    limit = ADAPTERS[vendor.type].info.rate_limit
    rate = limit.rate
    count = max(3, min(24, math.ceil(1.5 * rate)))
    fake = vendor.fake(rate_limit=(int(limit.requests), limit.per_seconds))
    async with running(vendor, fake, rateLimit=None) as (fake, adapter):
        assert adapter.current_limiter().limit == limit
        await adapter.create(event(vendor), vendor.object_type, ctx(vendor, "warm"))  # token, account
        started = time.monotonic()
        results = await asyncio.gather(
            *(adapter.create(event(vendor, i), vendor.object_type, ctx(vendor, f"p{i}")) for i in range(count)),
            return_exceptions=True,
        )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert fake.window is not None and fake.window.rejected == 0
    # What the vendor saw: every request it counts against the limit, after the warm-up.
    stamps = [r.at for r in fake.requests if r.at >= started and "token" not in r.path]
    if rate < 100:  # a 1,000/s webhook is paced by the machine, not by its limiter
        assert (len(stamps) - 1) / (stamps[-1] - stamps[0]) >= 0.8 * rate
