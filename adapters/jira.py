"""Jira Cloud: create an issue with REST API v3 (``POST /rest/api/3/issue``, 201 ``{id,key,self}``).

Auth is HTTP basic with the account's e-mail and an API token (seed: ``credentials.email`` /
``apiToken``); ``authType: "bearer"`` sends an OAuth 2.0 (3LO) access token instead, with
``endpoints.baseUrl`` = ``https://api.atlassian.com/ex/jira/{cloudId}`` and ``endpoints.siteUrl``
for browse links. v3 wants rich-text fields (``description``, ``environment``, textarea custom
fields listed in ``adfFields``) as Atlassian Document Format: plain text becomes one paragraph per
blank-line-separated block, single newlines become ``hardBreak`` nodes.

The seed's flat mapping (``project: "SUP"``, ``issuetype: "Task"``, ``priority: "high"`` …) is
turned into Jira's shapes (``{"key": …}``, ``{"name": …}``); a mapping that already has a
``fields`` object is sent as written. Other keys (``customfield_10050``, ``duedate``) pass through.

Errors come back as ``ErrorCollection`` (``errorMessages`` + per-field ``errors``) with 400, 401,
403, 404, 422; the vendor's messages are kept. 429 carries ``Retry-After`` (or only
``X-RateLimit-Reset``, an ISO time); some 503s carry ``Retry-After`` too.

Jira has no idempotency key. Each issue gets a label ``octopus-<16 hex of sha256(idempotency
key)>`` (labels cannot hold spaces) and :meth:`JiraAdapter.find_existing` looks it up with JQL on
``/rest/api/3/search/jql`` — the classic ``/rest/api/3/search`` was removed in 2025 (HTTP 410,
CHANGE-2046). Search is served from an index that lags writes by a few seconds, so a lookup right
after an ambiguous create can miss; ``None`` then means "can't tell yet", not "never created".

Default rate: Atlassian does not publish the burst limits that govern API-token traffic (per
tenant, endpoint and method, token bucket); its rate-limiting guide sizes one cost budget at 10
calls per second, so we pace at 10 req/s with 10 in flight and obey ``Retry-After`` beyond that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext
from octopus_crm.adapters.http import Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    Basic,
    Bearer,
    ConnectionCheck,
    CreateCall,
    Errors,
    FindCall,
    SpecAdapter,
    VendorSpec,
)
from octopus_crm.adapters.spec import dedupe_marker as dedupe_label  # Jira labels carry the kit's marker
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError

__all__ = ["JiraAdapter", "dedupe_label", "text_to_adf"]

ISSUE_PATH = "/rest/api/3/issue"
SEARCH_PATH = "/rest/api/3/search/jql"
MYSELF_PATH = "/rest/api/3/myself"
SUMMARY_MAX = 255

# Our priority vocabulary onto Jira's default priority scheme (Highest, High, Medium, Low, Lowest).
PRIORITY_JIRA = {"low": "Low", "medium": "Medium", "high": "High", "urgent": "Highest"}

# Flat seed values → Jira's object shapes: field → (attribute for a name/key, attribute for an id).
_REFERENCE = {
    "project": ("key", "id"),
    "issuetype": ("name", "id"),
    "priority": ("name", "id"),
    "parent": ("key", "id"),
    "assignee": ("id", "id"),
    "reporter": ("id", "id"),
}
_NAMED_LISTS = ("components", "fixVersions", "versions")
_RICH_TEXT = ("description", "environment")


def text_to_adf(text: str) -> dict[str, Any]:
    """Plain text as an ADF document: blank lines split paragraphs, newlines become hardBreaks."""
    paragraphs = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        content: list[dict[str, Any]] = []
        for i, line in enumerate(block.split("\n")):
            if i:
                content.append({"type": "hardBreak"})
            if line:
                content.append({"type": "text", "text": line})
        paragraphs.append({"type": "paragraph", "content": content})
    return {"type": "doc", "version": 1, "content": paragraphs}


def _reference(field: str, value: Any) -> Any:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return value
    by_name, by_id = _REFERENCE[field]
    text = str(value).strip()
    return {by_id if text.isdigit() else by_name: text}


def _summary(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = re.sub(r"\s*[\r\n]+\s*", " ", value).strip()  # Jira rejects newlines in a summary
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def _labels(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    labels = ["-".join(str(item).split()) for item in items]
    return list(dict.fromkeys(label for label in labels if label))


def _error_messages(response: Response) -> str:
    body = response.json()
    if not isinstance(body, dict) or not ("errorMessages" in body or "errors" in body):
        return response.text[:500]
    messages = [str(m) for m in body.get("errorMessages") or []]
    errors = body.get("errors")
    messages += [f"{name}: {text}" for name, text in errors.items()] if isinstance(errors, dict) else []
    return "; ".join(messages) or f"HTTP {response.status}"


class JiraCredentials(Credentials):
    email: str | None = alias("email", "username", description="Atlassian account email (basic auth).")
    apiToken: SecretStr | None = alias("apiToken", "api_token", description="API token (basic auth).")
    accessToken: SecretStr | None = alias("accessToken", "token", description="authType bearer.")


class JiraEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="https://<site>.atlassian.net (required).")
    siteUrl: Url | None = Field(default=None, description="Browse URLs' site when baseUrl is the API gateway.")


class JiraSettings(VendorSettings):
    credentials: JiraCredentials = Field(default_factory=JiraCredentials)
    endpoints: JiraEndpoints = Field(default_factory=JiraEndpoints)
    adfFields: list[str] = Field(default_factory=list, description="More fields to convert to ADF.")
    dedupeLabel: bool = Field(default=True, description="Label issues with the idempotency key to find them again.")


def _issue_body(adapter: JiraAdapter, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    return adapter.issue_body(rendered, ctx)


def _find_params(adapter: JiraAdapter, ctx: DeliveryContext) -> dict[str, str]:
    jql = f'labels = "{dedupe_label(ctx.idempotency_key)}" ORDER BY created ASC'
    return {"jql": jql, "fields": "summary", "maxResults": "1"}


SPEC = VendorSpec(
    auth={"basic": Basic(("email", "username"), ("apiToken", "api_token")), "bearer": Bearer(("accessToken", "token"))},
    default_auth="basic",
    objects={
        "issue": CreateCall(
            ISSUE_PATH,
            body=_issue_body,
            id_at=("key",),
            detail={"id": ("id",)},
            what="an issue key",
            url=lambda adapter, key, body: f"{adapter.site_url}/browse/{key}",
        )
    },
    find={
        "issue": FindCall(
            SEARCH_PATH,
            params=_find_params,
            items_at=("issues",),
            enabled=lambda adapter: bool(adapter.config.extra("dedupeLabel", True)),
        )
    },
    errors=Errors(message=_error_messages, retry_after_headers=("X-RateLimit-Reset",)),
    test_call=ConnectionCheck(MYSELF_PATH),
    headers={"Accept": "application/json"},
)


class JiraAdapter(SpecAdapter):
    info = AdapterInfo(
        type="jira",
        display_name="Jira Cloud",
        display_name_zh="Jira",
        object_types=("issue",),
        auth_types=("basic", "bearer"),
        rate_limit=RateLimit(requests=10, concurrency=10),
        idempotency="label octopus-<hash of key> on each issue, found again with JQL search",
        docs="https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-post",
    )
    settings_model = JiraSettings
    spec = SPEC
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"issue.priority": PRIORITY_JIRA}

    def validate_config(self) -> None:
        if not self.base_url:
            raise ConfigError("endpoints.baseUrl is required (https://<site>.atlassian.net)", code="missing_url")
        super().validate_config()

    @property
    def site_url(self) -> str:
        return str(self.config.endpoints.get("siteUrl") or self.base_url).rstrip("/")

    def issue_body(self, rendered: dict[str, Any], ctx: DeliveryContext) -> dict[str, Any]:
        """The rendered mapping as a createIssue body: Jira shapes, ADF text, the dedupe label."""
        nested = isinstance(rendered.get("fields"), dict)
        body = dict(rendered) if nested else {"fields": rendered}
        fields = dict(body["fields"])
        rich_text = (*_RICH_TEXT, *(self.config.extra("adfFields") or ()))
        for name, value in list(fields.items()):
            if name in _REFERENCE:
                fields[name] = _reference(name, value)
            elif name == "summary":
                fields[name] = _summary(value)
            elif name in rich_text and isinstance(value, str):
                if value.strip():
                    fields[name] = text_to_adf(value)
                else:
                    del fields[name]
            elif name in _NAMED_LISTS and isinstance(value, list):
                fields[name] = [{"name": v} if isinstance(v, str) else v for v in value]
            elif name == "labels":
                fields[name] = _labels(value)
        if self.config.extra("dedupeLabel", True):
            fields["labels"] = [*fields.get("labels", []), dedupe_label(ctx.idempotency_key)]
        body["fields"] = fields
        return body
