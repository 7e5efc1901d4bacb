"""Jira Cloud adapter against the Jira fake over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext
from octopus_crm.adapters.http import Request
from octopus_crm.adapters.jira import JiraAdapter, dedupe_label, text_to_adf
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    AuthError,
    PermanentError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm_sandbox.jira import JiraFake, adf_to_text
from octopus_crm_sandbox.kit import Fault, SandboxServer
from tests.adapters.seed import seed_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EVENTS = [
    ClassifiedMessage.model_validate_json(line)
    for line in (EXAMPLES / "events.sample.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]
TECH = next(e for e in EVENTS if e.classification.category == "技术支持")


@asynccontextmanager
async def running(fake: JiraFake | None = None, **overrides: Any) -> AsyncIterator[tuple[JiraFake, JiraAdapter]]:
    fake = fake or JiraFake()
    async with SandboxServer(fake):
        adapter = JiraAdapter(*seed_config("jira", fake, **overrides))
        try:
            yield fake, adapter
        finally:
            await adapter.aclose()


def ctx(key: str = "evt-1/tech-jira/issue") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="tech-jira")


async def test_seed_issue_is_created_from_the_seed_mapping() -> None:
    async with running() as (fake, jira):
        delivered = await jira.create(TECH, "issue", ctx())
        assert delivered.external_id == "SUP-1"
        assert delivered.external_url == f"{fake.base_url}/browse/SUP-1"
        fields = fake.records["SUP-1"]["fields"]
        assert fields["project"] == {"key": "SUP"}
        assert fields["issuetype"] == {"name": "Task"}
        assert fields["priority"] == {"name": "Highest"}  # urgent → Highest
        assert fields["summary"] == f"技术支持 - {TECH.content}"
        assert fields["description"]["type"] == "doc" and fields["description"]["version"] == 1
        assert fake.records["SUP-1"]["descriptionText"] == (
            f"{TECH.content}\n\n来源: {TECH.platform} / {TECH.sender.name}"
        )
        assert fields["labels"] == [dedupe_label(ctx().idempotency_key)]
        auth = fake.requests[-1].headers["Authorization"]
        assert auth.startswith("Basic ")


async def test_text_arrives_byte_for_byte() -> None:
    content = 'Ping {{senderEmail}} said "refund now"\nsecond line 😀\n\n\nlast'
    event = TECH.model_copy(update={"content": content})
    async with running() as (fake, jira):
        await jira.create(event, "issue", ctx())
        record = fake.records["SUP-1"]
        assert record["descriptionText"] == f"{content}\n\n来源: {TECH.platform} / {TECH.sender.name}"
        raw = fake.requests[-1].body
        assert orjson.dumps('said "refund now"')[1:-1] in raw
        assert "😀".encode() in raw and b"{{senderEmail}}" in raw
        # Jira refuses newlines in a summary: they become spaces, the rest is kept.
        assert record["fields"]["summary"] == "技术支持 - " + " ".join(content.split())


def test_adf_round_trip() -> None:
    for text in ["a", "a\nb", "a\n\nb", "a\n\n\nb", "a\n", "\nx", '😀 "q" {{x}}']:
        assert adf_to_text(text_to_adf(text)) == text


async def test_value_map_override_labels_and_custom_fields() -> None:
    mapping = {
        "project": "SUP",
        "issuetype": "Bug",
        "summary": "{{category}}",
        "description": "{{messageContent}}",
        "priority": "{{priority}}",
        "labels": ["octopus", "{{platform}}", "needs triage"],
        "customfield_10050": "{{senderEmail}}",
        "components": ["Backend"],
    }
    overrides = {
        "mappings": {"issue": mapping},
        "valueMaps": {"issue.priority": {"urgent": "High"}},
    }
    async with running(JiraFake(custom_fields=frozenset({"customfield_10050"})), **overrides) as (
        fake,
        jira,
    ):
        await jira.create(TECH, "issue", ctx())
        fields = fake.records["SUP-1"]["fields"]
        assert fields["priority"] == {"name": "High"}
        assert fields["issuetype"] == {"name": "Bug"}
        assert fields["labels"] == [
            "octopus",
            TECH.platform,
            "needs-triage",
            dedupe_label(ctx().idempotency_key),
        ]
        assert fields["customfield_10050"] == TECH.sender.email
        assert fields["components"] == [{"name": "Backend"}]


async def test_nested_fields_mapping_is_sent_as_written() -> None:
    mapping = {
        "fields": {
            "project": {"id": "10000"},
            "issuetype": {"name": "Task"},
            "summary": "{{messageContent|truncate:40}}",
            "description": "{{messageContent}}",
        }
    }
    async with running(mappings={"issue": mapping}, dedupeLabel=False) as (fake, jira):
        delivered = await jira.create(TECH, "issue", ctx())
        fields = fake.records[delivered.external_id]["fields"]
        assert fields["project"] == {"id": "10000"} and "labels" not in fields
        assert fake.records[delivered.external_id]["descriptionText"] == TECH.content


async def test_validation_errors_are_permanent_with_jira_messages() -> None:
    async with running(JiraFake(required=("duedate",))) as (_, jira):
        with pytest.raises(PermanentError) as info:
            await jira.create(TECH, "issue", ctx())
        assert info.value.status == 400 and "Field 'duedate' is required" in info.value.message
    issue = {"project": "NOPE", "issuetype": "Task", "summary": "x"}
    bad: dict[str, Any] = {"mappings": {"issue": issue}}
    async with running(**bad) as (_, jira):
        with pytest.raises(PermanentError, match="project: Specify a valid project ID or key"):
            await jira.create(TECH, "issue", ctx())
    unknown: dict[str, Any] = {
        "mappings": {"issue": {"project": "SUP", "issuetype": "Task", "summary": "x", "foo": "1"}}
    }
    async with running(**unknown) as (_, jira):
        with pytest.raises(PermanentError, match="Field 'foo' cannot be set"):
            await jira.create(TECH, "issue", ctx())
        # The fake checks bodies against IssueUpdateDetails and ADF the way Jira does.
        with pytest.raises(PermanentError, match=r"fields: .* is not of type 'object'"):
            await jira.http.send(Request("POST", "/rest/api/3/issue", json={"fields": []}))
        plain = {"project": {"key": "SUP"}, "issuetype": {"name": "Task"}, "summary": "s"}
        with pytest.raises(PermanentError, match="description: Operation value must be an Atlassian"):
            body = {"fields": {**plain, "description": "v2-style plain text"}}
            await jira.http.send(Request("POST", "/rest/api/3/issue", json=body))


async def test_status_classes() -> None:
    async with running(credentials={"email": "octopus-bot@example.com", "apiToken": "wrong"}) as (
        fake,
        jira,
    ):
        with pytest.raises(AuthError) as auth:
            await jira.create(TECH, "issue", ctx())
        assert not isinstance(auth.value, TokenExpiredError) and auth.value.status == 401
        assert "Client must be authenticated" in auth.value.message and "wrong" not in str(auth.value)
        assert len(fake.requests) == 1  # static credentials: no refresh loop
        with pytest.raises(AuthError):
            await jira.test_connection()
    async with running() as (fake, jira):
        await jira.test_connection()
        body = {"errorMessages": ["You do not have permission to create issues in this project."]}
        fake.inject(Fault(403, body))
        with pytest.raises(AuthError, match="permission to create issues"):
            await jira.create(TECH, "issue", ctx())
        fake.inject(Fault(503, {"errorMessages": ["busy"]}, {"Retry-After": "7"}))
        with pytest.raises(RetryableError) as unavailable:
            await jira.create(TECH, "issue", ctx())
        assert unavailable.value.retry_after == 7 and not isinstance(unavailable.value, RateLimitedError)
        reset = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%MZ")
        fake.inject(Fault(429, {"errorMessages": []}, {"X-RateLimit-Reset": reset}))
        with pytest.raises(RateLimitedError) as limited:
            await jira.create(TECH, "issue", ctx())
        assert limited.value.retry_after is not None and 50 < limited.value.retry_after <= 120


async def test_fake_rate_limit_answers_429_with_headers() -> None:
    async with running(JiraFake(rate_limit=(1, 30.0))) as (_, jira):
        await jira.create(TECH, "issue", ctx("a"))
        with pytest.raises(RateLimitedError) as info:
            await jira.create(TECH, "issue", ctx("b"))
        assert info.value.retry_after is not None and info.value.retry_after >= 29
        assert jira.http.limiter is not None and jira.http.limiter.paused_for > 0
        response = await jira.http.raw(Request("GET", "/rest/api/3/myself"))
        assert response.status == 429 and response.headers["X-RateLimit-Remaining"] == "0"
        assert response.headers["RateLimit-Reason"] == "jira-burst-based"
        assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Reset"} <= set(response.headers)


async def test_ambiguous_create_is_resolved_by_the_dedupe_label() -> None:
    async with running(timeouts={"read": 0.3}) as (fake, jira):
        fake.inject(Fault(delay=1.0, after_effect=True, path_contains="/issue"))
        with pytest.raises(AmbiguousDeliveryError):
            await jira.create(TECH, "issue", ctx())
        found = await jira.find_existing(TECH, "issue", ctx())
        assert found is not None and found.external_id == "SUP-1"
        assert found.external_url == f"{fake.base_url}/browse/SUP-1"
        assert await jira.find_existing(TECH, "issue", ctx("another-key")) is None
        assert "search/jql" in fake.requests[-1].path


async def test_search_lag_hides_fresh_issues() -> None:
    async with running(JiraFake(search_lag=0.5)) as (_, jira):
        await jira.create(TECH, "issue", ctx())
        assert await jira.find_existing(TECH, "issue", ctx()) is None
        await asyncio.sleep(0.6)
        assert await jira.find_existing(TECH, "issue", ctx()) is not None
