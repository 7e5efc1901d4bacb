"""Email over SMTP against the aiosmtpd fake on loopback: real TLS, real AUTH, real replies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.email import EmailAdapter, classify_reply, message_id_for
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    AuthError,
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm_sandbox.kit import Fault
from octopus_crm_sandbox.smtp import SmtpFake

ROOT = Path(__file__).resolve().parents[2]
SEED = json.loads((ROOT / "examples" / "crm-config.seed.json").read_text("utf-8"))
ENTRY = next(e for e in SEED["crmIntegrations"] if e["type"] == "email")
EVENTS = [
    json.loads(line)
    for line in (ROOT / "examples" / "events.sample.jsonl").read_text("utf-8").splitlines()
    if line.strip()
]


def event(i: int = 0, **changes: Any) -> ClassifiedMessage:
    data = json.loads(json.dumps(EVENTS[i]))
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return ClassifiedMessage.model_validate(data)


def adapter(fake: SmtpFake, **overrides: Any) -> EmailAdapter:
    """The seed's email integration pointed at ``fake``, credentials from ``fake.ENV``."""
    config: dict[str, Any] = json.loads(json.dumps(ENTRY["config"]))
    config["endpoints"] = fake.endpoints()
    config["credentials"] = {
        "username": fake.ENV["SMTP_USER"],
        "password": fake.ENV["SMTP_PASSWORD"],
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return EmailAdapter(ENTRY["id"], IntegrationConfig.model_validate(config))


def ctx(key: str = "evt-1:support-email:email") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key)


@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[SmtpFake]:
    async with SmtpFake() as server:
        yield server


# -- the seed's mapping, end to end ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_seed_mapping_delivers_over_tls(mode: str) -> None:
    async with SmtpFake(mode=mode) as fake:  # type: ignore[arg-type]
        email = adapter(fake)
        assert email.endpoints.implicit_tls is (mode == "implicit")
        ev = event(0)
        delivered = await email.create(ev, "email", ctx())

        assert delivered.external_id == message_id_for(ctx().idempotency_key)
        assert delivered.external_url is None
        record = fake.records[delivered.external_id]
        assert record["tls"] is True
        assert record["authenticatedAs"] == fake.ENV["SMTP_USER"]
        assert record["from"] == "octopus@company.com"
        assert record["to"] == "support@company.com"
        assert record["envelope"] == {
            "mailFrom": "octopus@company.com",
            "rcptTos": ["support@company.com"],
        }
        assert record["subject"] == f"客户咨询 - {ev.classification.category} (high)"
        assert record["body"] == f"{ev.sender.name} via {ev.platform}:\n\n{ev.content}\n"
        headers = record["headers"]
        assert headers["Auto-Submitted"] == "auto-generated"
        assert headers["X-Octopus-Event-Id"] == ev.eventId
        assert headers["Date"]
        assert "charset" in headers["Content-Type"] and "utf-8" in headers["Content-Type"]
        # UTF-8 travels as RFC 2047 words and base64 / quoted-printable: 7-bit clean on the wire.
        assert record["raw"].isascii()
        assert b"Subject: =?utf-8?" in record["raw"]

        await email.test_connection()


async def test_message_id_is_stable_per_delivery_and_duplicates_are_counted(
    fake: SmtpFake,
) -> None:
    email = adapter(fake)
    first = await email.create(event(0), "email", ctx("k-1"))
    again = await email.create(event(0), "email", ctx("k-1"))
    other = await email.create(event(0), "email", ctx("k-2"))
    assert first.external_id == again.external_id != other.external_id
    as_message = await email.create(event(0), "message", ctx("k-3"))  # the other object type name
    assert fake.records[as_message.external_id]["to"] == "support@company.com"
    assert first.external_id.startswith("<") and first.external_id.endswith("@octopus-crm-sync>")
    assert fake.records[first.external_id]["copies"] == 2
    assert len(fake.messages) == 4


async def test_utf8_subject_and_body_arrive_exactly(fake: SmtpFake) -> None:
    content = "Hi {{senderEmail}} — \"quoted\" 'single'\nline 2 😀\n\n第三行 <b>not html</b> ✅"
    category = '投诉 "紧急" 🚀 {{senderEmail}} and a long tail to force header folding ' * 2
    ev = event(
        1,
        content=content,
        sender={"name": 'Zoë "Z" 王', "email": "zoe@example.com"},
        classification={"category": category.strip()},
    )
    delivered = await adapter(fake).create(ev, "email", ctx())
    record = fake.records[delivered.external_id]
    assert record["subject"] == f"客户咨询 - {category.strip()} (urgent)"
    assert record["body"] == f'Zoë "Z" 王 via whatsapp:\n\n{content}\n'
    assert record["raw"].isascii()


async def test_subject_line_breaks_become_spaces_and_html_is_an_alternative(
    fake: SmtpFake,
) -> None:
    email = adapter(
        fake,
        mappings={
            "email": {
                "from": "Octopus 客服 <octopus@company.com>",
                "to": ["support@company.com", "{{senderEmail}}"],
                "cc": "lead@company.com",
                "bcc": ["audit@company.com", "审计 <audit@例子.公司>"],
                "replyTo": "{{senderEmail}}",
                "subject": "{{messageContent}}",
                "body": "{{messageContent}}",
                "html": "<p>{{messageContent}}</p>",
            }
        },
    )
    ev = event(0, content="line one\nline two")
    delivered = await email.create(ev, "email", ctx())
    record = fake.records[delivered.external_id]
    assert record["subject"] == "line one line two"
    assert record["body"] == "line one\nline two\n"
    assert record["html"] == "<p>line one\nline two</p>\n"
    assert record["from"] == "Octopus 客服 <octopus@company.com>"
    assert record["replyTo"] == ev.sender.email
    assert record["envelope"]["rcptTos"] == [
        "support@company.com",
        ev.sender.email,
        "lead@company.com",
        "audit@company.com",
        "audit@xn--fsqu00a.xn--55qx5d",  # IDN domains travel as punycode
    ]
    assert "Bcc" not in record["headers"]


async def test_header_injection_through_an_address_is_refused(fake: SmtpFake) -> None:
    email = adapter(fake, mappings={"email": {"from": "o@company.com", "to": "{{senderEmail}}"}})
    ev = event(0, sender={"email": "a@example.com\r\nBcc: evil@example.com"})
    with pytest.raises(PermanentError) as info:
        await email.create(ev, "email", ctx())
    assert info.value.code == "bad_address"
    assert fake.messages == []
    ev = event(0, sender={"email": "用户@example.com"})  # would need SMTPUTF8
    with pytest.raises(PermanentError, match="not an email address"):
        await email.create(ev, "email", ctx())


async def test_a_template_value_cannot_add_envelope_recipients(fake: SmtpFake) -> None:
    mapping = {
        "from": "o@company.com",
        "to": "support@company.com",
        "cc": "{{senderName}} <{{senderEmail}}>",
        "subject": "s",
        "body": "b",
    }
    email = adapter(fake, mappings={"email": mapping})
    honest = await email.create(event(0, sender={"email": "eve@example.com"}), "email", ctx("k-honest"))
    assert fake.records[honest.external_id]["envelope"]["rcptTos"] == ["support@company.com", "eve@example.com"]

    hostile = [
        event(0, sender={"email": "eve@example.com, attacker@evil.example"}),
        event(0, sender={"name": "Eve <attacker@evil.example>,", "email": "eve@example.com"}),
    ]
    for ev in hostile:
        with pytest.raises(PermanentError) as info:
            await email.create(ev, "email", ctx("k-hostile"))
        assert info.value.code == "address_count"
        assert "cc: rendered to 2 addresses where the mapping allows 0 to 1" in info.value.message
    assert len(fake.messages) == 1
    assert all("attacker@evil.example" not in m["envelope"]["rcptTos"] for m in fake.records.values())


async def test_a_message_blown_up_by_the_template_is_refused_before_smtp(fake: SmtpFake) -> None:
    mapping = {"from": "o@company.com", "to": "support@company.com", "body": "{{messageContent}}" * 100}
    email = adapter(fake, mappings={"email": mapping})
    with pytest.raises(PermanentError) as info:
        await email.create(event(0, content="x" * 400_000), "email", ctx())
    assert info.value.code == "body_too_large"
    assert "bytes, over the 1,048,576-byte limit" in info.value.message
    assert fake.messages == []


# -- errors ------------------------------------------------------------------------------------


async def test_bad_credentials_are_an_auth_error_without_the_password(fake: SmtpFake) -> None:
    email = adapter(fake, credentials={"username": fake.ENV["SMTP_USER"], "password": "wrong-pw"})
    with pytest.raises(AuthError) as info:
        await email.create(event(0), "email", ctx())
    assert info.value.code == "smtp_535"
    assert "wrong-pw" not in str(info.value) and "wrong-pw" not in repr(info.value)
    assert fake.auth_failures >= 1 and fake.messages == []
    with pytest.raises(AuthError):
        await email.test_connection()


async def test_server_requiring_auth_without_credentials_is_an_auth_error(fake: SmtpFake) -> None:
    email = adapter(fake, authType="none", credentials={})
    with pytest.raises(AuthError) as info:
        await email.create(event(0), "email", ctx())
    assert info.value.code == "smtp_530"


@pytest.mark.parametrize("command", ["RCPT", "DATA"])
async def test_451_is_retryable(fake: SmtpFake, command: str) -> None:
    fake.inject(Fault(451, "4.3.0 Mail server temporarily rejected message", path_contains=command))
    with pytest.raises(RetryableError) as info:
        await adapter(fake).create(event(0), "email", ctx())
    assert type(info.value) is RetryableError
    assert info.value.code == "smtp_451"
    assert fake.messages == []


@pytest.mark.parametrize(
    ("command", "code", "text"),
    [
        ("RCPT", 550, "5.1.1 <support@company.com>: Recipient address rejected: User unknown"),
        ("DATA", 554, "5.7.1 Message rejected: content policy"),
        ("MAIL", 553, "5.7.1 Sender address rejected: not owned by user"),
    ],
)
async def test_5xx_is_permanent_with_the_server_text(fake: SmtpFake, command: str, code: int, text: str) -> None:
    fake.inject(Fault(code, text, path_contains=command))
    with pytest.raises(PermanentError) as info:
        await adapter(fake).create(event(0), "email", ctx())
    assert info.value.code == f"smtp_{code}"
    assert info.value.message == f"{code} {text}"
    assert fake.messages == []


async def test_one_refused_recipient_does_not_stop_the_others(fake: SmtpFake) -> None:
    mapping = {"from": "o@company.com", "to": ["a@x.com", "b@x.com"]}
    email = adapter(fake, mappings={"email": mapping})
    fake.inject(Fault(550, "5.1.1 User unknown", path_contains="RCPT"))
    delivered = await email.create(event(0), "email", ctx())
    assert delivered.detail["refused"] == {"a@x.com": "550 5.1.1 User unknown"}
    assert fake.records[delivered.external_id]["envelope"]["rcptTos"] == ["b@x.com"]


async def test_timeout_after_data_is_ambiguous_and_the_retry_keeps_the_message_id(
    fake: SmtpFake,
) -> None:
    email = adapter(fake, timeouts={"connect": 2.0, "read": 0.3})
    fake.inject(Fault(250, "2.0.0 queued", path_contains="DATA", delay=1.0, after_effect=True))
    with pytest.raises(AmbiguousDeliveryError):
        await email.create(event(0), "email", ctx())
    assert await email.find_existing(event(0), "email", ctx()) is None  # SMTP has no lookup
    delivered = await email.create(event(0), "email", ctx())
    assert fake.records[delivered.external_id]["copies"] == 2


async def test_connection_refused_is_retryable() -> None:
    async with SmtpFake() as fake:
        email = adapter(fake)
    with pytest.raises(RetryableError) as info:
        await email.create(event(0), "email", ctx())
    assert type(info.value) is RetryableError and info.value.code == "connect"


async def test_untrusted_certificate_is_a_config_error(fake: SmtpFake) -> None:
    email = adapter(fake, endpoints={"caFile": None})
    with pytest.raises(ConfigError) as info:
        await email.create(event(0), "email", ctx())
    assert info.value.code == "tls_verify"
    assert fake.auth_attempts == 0


async def test_implicit_tls_against_a_starttls_port_is_a_config_error(fake: SmtpFake) -> None:
    email = adapter(fake, endpoints={"tls": True, "starttls": False})
    with pytest.raises(ConfigError) as info:
        await email.create(event(0), "email", ctx())
    assert info.value.code == "tls_handshake"


def test_classify_reply() -> None:
    assert isinstance(classify_reply(421, "4.7.0 Too many messages, slow down"), RateLimitedError)
    assert type(classify_reply(421, "4.3.2 Service shutting down")) is RetryableError
    assert type(classify_reply(452, "4.3.1 Insufficient system storage")) is RetryableError
    quota = classify_reply(550, "5.4.5 Daily user sending quota exceeded")
    assert isinstance(quota, QuotaExhaustedError) and quota.retry_after == 3600
    for code in (530, 534, 535):
        assert isinstance(classify_reply(code, "5.7.8 nope"), AuthError)
    assert type(classify_reply(552, "5.3.4 Message size exceeds fixed limit")) is PermanentError


# -- no credentials in clear ---------------------------------------------------------------------


def test_config_without_tls_is_refused_at_load() -> None:
    config = json.loads(json.dumps(ENTRY["config"]))
    config["endpoints"] = {"host": "smtp.company.com", "port": 587, "starttls": False}
    config["credentials"] = {"username": "u", "password": "p-secret"}
    with pytest.raises(ConfigError) as info:
        EmailAdapter("e", IntegrationConfig.model_validate(config))
    assert info.value.code == "insecure_auth"
    assert "p-secret" not in str(info.value)


def test_config_errors_name_the_key() -> None:
    config = json.loads(json.dumps(ENTRY["config"]))
    config["credentials"] = {"username": "u", "password": "p"}
    bad_endpoint = {**config, "endpoints": {**config["endpoints"], "prot": 25}}
    with pytest.raises(ConfigError, match=r"endpoints\.prot"):
        EmailAdapter("e", IntegrationConfig.model_validate(bad_endpoint))
    bad_mapping = {**config, "mappings": {"email": {**config["mappings"]["email"], "tos": []}}}
    with pytest.raises(ConfigError, match=r"mappings\.email\.tos"):
        EmailAdapter("e", IntegrationConfig.model_validate(bad_mapping))
    assert EmailAdapter("e", IntegrationConfig.model_validate(config)).endpoints.use_starttls
    port_465 = {**config, "endpoints": {"host": "smtp.company.com", "port": 465, "starttls": True}}
    ep = EmailAdapter("e", IntegrationConfig.model_validate(port_465)).endpoints
    assert ep.implicit_tls and not ep.use_starttls


async def test_server_without_starttls_never_sees_credentials() -> None:
    async with SmtpFake(mode="plain") as fake:
        email = adapter(fake, endpoints={"starttls": True, "allowInsecureAuth": False})
        with pytest.raises(ConfigError) as info:
            await email.create(event(0), "email", ctx())
        assert info.value.code == "no_starttls"
        assert fake.auth_attempts == 0 and fake.messages == []


async def test_allow_insecure_auth_is_explicit_and_works_for_local_servers() -> None:
    async with SmtpFake(mode="plain") as fake:
        delivered = await adapter(fake).create(event(0), "email", ctx())
        record = fake.records[delivered.external_id]
        assert record["tls"] is False and record["authenticatedAs"] == fake.ENV["SMTP_USER"]


# -- rate limits -----------------------------------------------------------------------------------


async def test_server_rate_limit_reply_slows_the_integration_down() -> None:
    async with SmtpFake(rate_limit=(1, 10.0)) as fake:
        email = adapter(fake)
        await email.create(event(0), "email", ctx("a"))
        with pytest.raises(RateLimitedError) as info:
            await email.create(event(1), "email", ctx("b"))
        assert info.value.code == "smtp_421" and "slow down" in info.value.message
        assert email.limiter.paused_for > 20


async def test_paced_to_the_server_limit_without_421s() -> None:
    per_second = 5
    async with SmtpFake(rate_limit=(per_second, 1.0)) as fake:
        email = adapter(fake, rateLimit={"requests": per_second, "concurrency": 4})
        count = 16  # ~3 s at 5/s
        started = time.monotonic()
        await asyncio.gather(*(email.create(event(i % len(EVENTS)), "email", ctx(f"k{i}")) for i in range(count)))
        elapsed = time.monotonic() - started
        assert fake.window is not None and fake.window.rejected == 0
        assert len(fake.records) == count
        # the figure itself is bench/'s job; this only catches pacing far below the limit (a busy
        # machine stretches the run, so no tight bound here)
        assert (count - 1) / elapsed >= 0.5 * per_second
