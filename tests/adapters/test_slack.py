"""Slack adapter (chat.postMessage and incoming webhooks) against the Slack fake over loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from octopus_crm.adapters.base import DeliveryContext
from octopus_crm.adapters.http import Request
from octopus_crm.adapters.slack import WEB_API_CODES, SlackAdapter
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.slack import SPEC_ERRORS, SlackFake
from tests.adapters.seed import seed_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EVENTS = [
    ClassifiedMessage.model_validate_json(line)
    for line in (EXAMPLES / "events.sample.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]
SERVICE = next(e for e in EVENTS if e.classification.category == "客户服务")


FAST = {"requests": 1000}  # tests that are not about pacing


def webhook_overrides(url: str) -> dict[str, Any]:
    return {
        "authType": "webhook",
        "credentials": {"webhookUrl": url},
        "mappings": {"message": {"text": "[{{priority}}] {{senderName}}: {{messageContent}}"}},
        "rateLimit": FAST,
    }


@asynccontextmanager
async def running(fake: SlackFake | None = None, **overrides: Any) -> AsyncIterator[tuple[SlackFake, SlackAdapter]]:
    fake = fake or SlackFake()
    async with SandboxServer(fake):
        adapter = SlackAdapter(*seed_config("slack", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1/support-slack/message") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="support-slack")


def expected_text(event: ClassifiedMessage) -> str:
    c = event.classification
    return f"[{c.priority}] {c.category} · {event.sender.name}: {event.content}"


async def test_seed_message_is_posted_from_the_seed_mapping() -> None:
    async with running() as (fake, slack):
        delivered = await slack.create(SERVICE, "message", ctx())
        record = fake.messages[-1]
        assert record["channel"] == "C0SUPPORT1"
        assert record["text"] == expected_text(SERVICE)
        assert delivered.external_id == f"C0SUPPORT1:{record['ts']}"
        assert delivered.external_url == (f"https://slack.com/archives/C0SUPPORT1/p{record['ts'].replace('.', '')}")
        sent = fake.requests[-1]
        assert sent.headers["Authorization"] == f"Bearer {fake.ENV['SLACK_BOT_TOKEN']}"
        assert sent.headers["Content-Type"] == "application/json; charset=utf-8"
        assert json.loads(sent.body)["channel"] == "#customer-support"


async def test_text_arrives_byte_for_byte_and_markup_is_made_inert() -> None:
    content = 'Ping {{senderEmail}} said "refund now"\nsecond line 😀'
    event = SERVICE.model_copy(update={"content": content})
    workspace = {"workspaceUrl": "https://acme.slack.com"}
    async with running(endpoints=workspace, rateLimit=FAST) as (fake, slack):
        delivered = await slack.create(event, "message", ctx())
        assert fake.messages[-1]["text"] == expected_text(event)
        assert "😀".encode() in fake.requests[-1].body
        assert delivered.external_url is not None
        assert delivered.external_url.startswith("https://acme.slack.com/archives/C0SUPPORT1/p")
        hostile = SERVICE.model_copy(update={"content": "<!channel> Tom & Jerry <b>x</b>"})
        await slack.create(hostile, "message", ctx("k2"))
        assert fake.messages[-1]["text"].endswith("&lt;!channel&gt; Tom &amp; Jerry &lt;b&gt;x&lt;/b&gt;")


async def test_fake_rejects_what_slack_rejects() -> None:
    async with running(rateLimit=FAST) as (fake, slack):
        cases: list[tuple[dict[str, Any], str]] = [
            ({"channel": "#nope", "text": "x"}, "channel_not_found"),
            ({"channel": "#old-support", "text": "x"}, "is_archived"),
            ({"channel": "C0PRIVATE1", "text": "x"}, "not_in_channel"),
            ({"channel": "C0SUPPORT1"}, "no_text"),
            ({"channel": "C0SUPPORT1", "text": "x" * 40_001}, "msg_too_long"),
            ({"text": "x"}, "invalid_arguments"),
            ({"channel": "C0SUPPORT1", "text": 5}, "invalid_arguments"),
            ({"channel": "C0SUPPORT1", "blocks": [{"text": "no type"}]}, "invalid_blocks"),
        ]
        for body, code in cases:
            with pytest.raises(PermanentError) as info:
                await slack.http.send(Request("POST", "chat.postMessage", json=body))
            assert info.value.code == f"error_{code}" and info.value.status == 200
        with pytest.raises(PermanentError, match=r"missing required field|'channel' is a required"):
            await slack.http.send(Request("POST", "chat.postMessage", json={"text": "x"}))
        # Form bodies are accepted too, with the channel id form and the token as a field.
        form = {"channel": "C0SUPPORT1", "text": "form 😀", "token": fake.ENV["SLACK_BOT_TOKEN"]}
        url = f"{fake.base_url}/api/chat.postMessage"
        async with aiohttp.ClientSession() as session, session.post(url, data=form) as resp:
            answer = await resp.json()
        assert answer["ok"] is True and answer["channel"] == "C0SUPPORT1"
        assert fake.messages[-1]["text"] == "form 😀"


async def test_ok_false_codes_map_to_the_taxonomy() -> None:
    expected: dict[str, type[DeliveryError]] = {
        "invalid_auth": AuthError,
        "not_authed": AuthError,
        "token_revoked": AuthError,
        "account_inactive": AuthError,
        "missing_scope": AuthError,
        "ratelimited": RateLimitedError,
        "rate_limited": RateLimitedError,
        "channel_not_found": PermanentError,
        "not_in_channel": PermanentError,
        "is_archived": PermanentError,
        "msg_too_long": PermanentError,
        "no_text": PermanentError,
        "internal_error": RetryableError,
        "fatal_error": RetryableError,
        "service_unavailable": RetryableError,
        "request_timeout": RetryableError,
    }
    async with running(rateLimit=FAST) as (fake, slack):
        for code, error_type in expected.items():
            body: dict[str, Any] = {"ok": False, "error": code}
            if code == "missing_scope":
                body |= {"needed": "chat:write", "provided": "channels:read"}
            headers = {"Retry-After": "0"}  # keep the limiter from pausing between cases
            fake.inject(Fault(200, body, headers, path_contains="chat.postMessage"))
            with pytest.raises(DeliveryError) as info:
                await slack.create(SERVICE, "message", ctx())
            assert type(info.value) is error_type, code
            assert info.value.message.startswith(code) and info.value.code == f"error_{code}"
            if code == "missing_scope":
                assert "needed scope: chat:write" in info.value.message
    # The spec's chat.postMessage enum: auth and rate codes are classified, the rest permanent.
    spec_auth = {"not_authed", "invalid_auth", "account_inactive"}
    assert spec_auth <= WEB_API_CODES.auth and "rate_limited" in WEB_API_CODES.rate_limited
    classified = WEB_API_CODES.auth | WEB_API_CODES.rate_limited | WEB_API_CODES.retryable
    assert not (SPEC_ERRORS - spec_auth - {"rate_limited"}) & classified


async def test_real_token_and_channel_failures() -> None:
    async with running(credentials={"token": "xoxb-wrong"}) as (fake, slack):
        with pytest.raises(AuthError) as info:
            await slack.create(SERVICE, "message", ctx())
        assert info.value.code == "error_invalid_auth" and "xoxb-wrong" not in str(info.value)
        assert not isinstance(info.value, TokenExpiredError) and len(fake.requests) == 1
        with pytest.raises(AuthError):
            await slack.test_connection()
    async with running(rateLimit=FAST) as (fake, slack):
        await slack.test_connection()
        fake.revoke(fake.ENV["SLACK_BOT_TOKEN"])
        with pytest.raises(AuthError, match="token_revoked"):
            await slack.create(SERVICE, "message", ctx())
    mapping = {"message": {"channel": "#old-support", "text": "{{messageContent}}"}}
    async with running(mappings=mapping) as (_, slack):
        with pytest.raises(PermanentError, match="is_archived"):
            await slack.create(SERVICE, "message", ctx())


async def test_http_429_is_rate_limited_with_retry_after() -> None:
    async with running(SlackFake(rate_limit=(1, 30.0))) as (_, slack):
        await slack.create(SERVICE, "message", ctx("a"))
        with pytest.raises(RateLimitedError) as info:
            await slack.create(SERVICE, "message", ctx("b"))
        assert info.value.status == 429 and info.value.retry_after is not None
        assert info.value.retry_after >= 29


async def test_incoming_webhook_flavour() -> None:
    fake = SlackFake(webhooks={SlackFake.WEBHOOK_PATH: "C0SUPPORT1", "/services/T000/B0OLD/YYYY": "C0ARCHIVE1"})
    async with SandboxServer(fake):
        slack = SlackAdapter(*seed_config("slack", fake, **webhook_overrides(fake.webhook_url)))
        try:
            with pytest.raises(ConfigError) as untestable:  # no read call: says so, posts nothing
                await slack.test_connection()
            assert untestable.value.code == "not_testable"
            assert fake.messages == [] and not [r for r in fake.requests if "/services/" in r.path]
            delivered = await slack.create(SERVICE, "message", ctx())
            assert delivered.external_id == ctx().idempotency_key and delivered.external_url is None
            assert fake.messages[-1]["text"] == (
                f"[{SERVICE.classification.priority}] {SERVICE.sender.name}: {SERVICE.content}"
            )
            fake.inject(Fault(500, "rollup_error", path_contains="/services/"))
            with pytest.raises(RetryableError, match="rollup_error"):
                await slack.create(SERVICE, "message", ctx())
        finally:
            await slack.aclose()
        failures: list[tuple[str, type[DeliveryError], str]] = [
            (f"{fake.base_url}/services/T000/B000/WRONG", AuthError, "webhook_invalid_token"),
            (f"{fake.base_url}/services/T999/B999/ZZZZ", AuthError, "webhook_no_service"),
            (
                f"{fake.base_url}/services/T000/B0OLD/YYYY",
                PermanentError,
                "webhook_channel_is_archived",
            ),
        ]
        for url, error_type, code in failures:
            slack = SlackAdapter(*seed_config("slack", fake, **webhook_overrides(url)))
            try:
                with pytest.raises(error_type) as info:
                    await slack.create(SERVICE, "message", ctx())
                assert type(info.value) is error_type and info.value.code == code
                assert url not in str(info.value) and "/services/" not in info.value.message
            finally:
                await slack.aclose()


async def test_test_connection_neither_spends_nor_waits_for_the_delivery_budget() -> None:
    """One delivery a minute: operators' test calls must not hold the next real message back."""
    async with running(rateLimit={"requests": 1, "perSeconds": 60}) as (fake, slack):
        for _ in range(3):
            await asyncio.wait_for(slack.test_connection(), 10)
        delivered = await asyncio.wait_for(slack.create(SERVICE, "message", ctx()), 10)
    assert delivered.external_id and len(fake.messages) == 1
    assert len([r for r in fake.requests if r.path.endswith("/auth.test")]) == 3
