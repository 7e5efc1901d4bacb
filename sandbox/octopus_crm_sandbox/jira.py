"""A Jira Cloud fake: basic auth, ``POST /rest/api/3/issue``, JQL label search, ``/myself``.

The envelope (who may call, the create, search and ``/myself`` routes) comes from the adapter's spec
(sandbox/octopus_crm_sandbox/specfake.py). What is Jira's own: create bodies are validated with
``jsonschema`` against ``IssueUpdateDetails`` from Atlassian's published OpenAPI (fragment in
``specs/jira_create_issue.json``), then checked the way a project's create screen checks them: the
project and issue type exist, the summary is one line of at most 255 characters, rich-text fields
are ADF documents, labels hold no spaces, only known fields are set. Errors are ``ErrorCollection``
bodies; a bad API token gets Jira's plain-text 401; the rate limit answers 429 with ``Retry-After``
and the ``X-RateLimit-*`` headers. ``search_lag`` hides new issues from search for a while, like
Jira's search index.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
from aiohttp import web

from octopus_crm.adapters.jira import SPEC as JIRA
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["JiraFake", "adf_to_text"]

SPEC = Path(__file__).resolve().parent / "specs" / "jira_create_issue.json"
_SCHEMAS = json.loads(SPEC.read_text(encoding="utf-8"))["components"]
_CREATE = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/IssueUpdateDetails", "components": _SCHEMAS})
_CREATED = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/CreatedIssue", "components": _SCHEMAS})

SYSTEM_FIELDS = frozenset(
    {
        "summary", "description", "project", "issuetype", "priority", "labels", "assignee",
        "reporter", "components", "duedate", "environment", "fixVersions", "versions", "parent",
    }
)  # fmt: skip
ADF_FIELDS = ("description", "environment")
_LABEL_JQL = re.compile(r'labels\s*(?:=|in)\s*\(?\s*"?([^"\s(),]+)"?', re.I)


def adf_to_text(doc: Any) -> str:
    """The inverse of the adapter's plain-text → ADF conversion (paragraphs, text, hardBreak)."""
    blocks = []
    for paragraph in doc.get("content", []):
        parts = []
        for node in paragraph.get("content", []):
            parts.append("\n" if node.get("type") == "hardBreak" else str(node.get("text", "")))
        blocks.append("".join(parts))
    return "\n\n".join(blocks)


def _adf_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict) or doc.get("type") != "doc" or doc.get("version") != 1:
        return "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
    if not isinstance(doc.get("content"), list):
        return "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
    stack = list(doc["content"])
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            return "ADF node without a type"
        if node["type"] == "text" and not (isinstance(node.get("text"), str) and node["text"]):
            return "ADF text node must have non-empty text"
        children = node.get("content", [])
        if not isinstance(children, list):
            return f"ADF node {node['type']} has non-list content"
        stack.extend(children)
    return None


class JiraFake(SpecFake):
    name = "jira"
    spec = JIRA
    schemas: ClassVar[Mapping[str, Any]] = {"issue": _CREATE}
    ENV: ClassVar[dict[str, str]] = {
        "JIRA_EMAIL": "octopus-bot@example.com",
        "JIRA_API_TOKEN": "ATATT3xFfGF0-fake-jira-token",
    }

    def __init__(
        self,
        *,
        email: str = ENV["JIRA_EMAIL"],
        api_token: str = ENV["JIRA_API_TOKEN"],
        projects: dict[str, tuple[str, ...]] | None = None,
        priorities: tuple[str, ...] = ("Highest", "High", "Medium", "Low", "Lowest"),
        required: tuple[str, ...] = (),
        custom_fields: frozenset[str] | None = None,
        search_lag: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"email": email, "apiToken": api_token}, **kw)
        self.projects = projects or {"SUP": ("Task", "Bug", "Story", "Epic", "Subtask")}
        self.project_ids = {str(10000 + i): key for i, key in enumerate(self.projects)}
        self.priorities = priorities
        self.required = required
        self.custom_fields = custom_fields
        self.search_lag = search_lag
        self._ids = itertools.count(10001)
        self._numbers = {key: itertools.count(1) for key in self.projects}
        self.created_at: dict[str, float] = {}

    def limited_paths(self) -> tuple[str, ...]:
        return ("/rest/api/",)

    # -- shapes ------------------------------------------------------------------------------

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return web.json_response({"errorMessages": list(messages), "errors": fields}, status=status)

    def too_many(self, wait: float) -> web.Response:
        seconds = max(1, math.ceil(wait))
        reset = datetime.now(UTC) + timedelta(seconds=seconds)
        headers = {
            "Retry-After": str(seconds),
            "X-RateLimit-Limit": str(self.window.limit if self.window else 0),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%MZ"),
            "RateLimit-Reason": "jira-burst-based",
        }
        return web.json_response({"errorMessages": ["Rate limit exceeded."], "errors": {}}, status=429, headers=headers)

    def unauthorized(self, request: web.Request) -> web.Response:
        return web.Response(
            status=401,
            text="Client must be authenticated to access this resource.",
            headers={"X-Seraph-LoginReason": "AUTHENTICATED_FAILED", "WWW-Authenticate": "Basic"},
        )

    # -- issues ------------------------------------------------------------------------------

    def check(self, object_type: str, body: Any) -> tuple[list[str], dict[str, str]]:
        return self.check_fields(body.get("fields") or {})

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        fields = body.get("fields") or {}
        project = self.project_key(fields["project"])
        assert project is not None
        key = f"{project}-{next(self._numbers[project])}"
        record = {"id": str(next(self._ids)), "key": key, "fields": fields, "body": body}
        if isinstance(fields.get("description"), dict):
            record["descriptionText"] = adf_to_text(fields["description"])
        self.created_at[key] = time.monotonic()
        return key, record

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        answer = {"id": record["id"], "key": record_id, "self": f"{self.base_url}/rest/api/3/issue/{record['id']}"}
        assert not list(_CREATED.iter_errors(answer))
        return answer, {}

    def project_key(self, ref: Any) -> str | None:
        if not isinstance(ref, dict):
            return None
        if "key" in ref:
            return ref["key"] if ref["key"] in self.projects else None
        return self.project_ids.get(str(ref.get("id")))

    def check_fields(self, fields: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """Messages and per-field errors the way a Jira create screen reports them."""
        messages: list[str] = []
        problems: dict[str, str] = {}
        for name in fields:
            known = name in SYSTEM_FIELDS or (
                name.startswith("customfield_") if self.custom_fields is None else name in self.custom_fields
            )
            if not known:
                problems[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
        project = self.project_key(fields.get("project"))
        if project is None:
            problems["project"] = "Specify a valid project ID or key"
        issuetype = fields.get("issuetype")
        if not isinstance(issuetype, dict) or not (issuetype.get("name") or issuetype.get("id")):
            problems["issuetype"] = "Specify an issue type"
        elif project is not None and "name" in issuetype and issuetype["name"] not in self.projects[project]:
            problems["issuetype"] = "The issue type selected is invalid."
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            problems["summary"] = "You must specify a summary of the issue."
        elif "\n" in summary or "\r" in summary:
            problems["summary"] = "The summary is invalid because it contains newline characters."
        elif len(summary) > 255:
            problems["summary"] = "Summary must be less than 255 characters."
        for name in ADF_FIELDS:
            if name in fields and (problem := _adf_problem(fields[name])):
                problems[name] = problem
        priority = fields.get("priority")
        if priority is not None and (not isinstance(priority, dict) or priority.get("name") not in self.priorities):
            problems["priority"] = f"Specify a valid priority (one of {', '.join(self.priorities)})"
        labels = fields.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            problems["labels"] = "Labels must be a list of strings"
        else:
            for label in labels:
                if any(ch.isspace() for ch in label):
                    problems["labels"] = f"The label '{label}' contains spaces which is invalid."
                elif len(label) > 255:
                    problems["labels"] = "The label must not exceed 255 characters."
        messages += [f"Field '{name}' is required" for name in self.required if name not in fields]
        return messages, problems

    # -- search, /myself and the removed search API ----------------------------------------

    def matches(self, object_type: str, record: dict[str, Any], query: Mapping[str, str]) -> bool:
        label = _LABEL_JQL.search(query.get("jql", ""))
        visible = self.created_at[record["key"]] <= time.monotonic() - self.search_lag
        return label is not None and visible and label.group(1) in (record["fields"].get("labels") or [])

    def found(self, object_type: str, record_id: str, record: dict[str, Any]) -> Any:
        return {
            "id": record["id"],
            "key": record_id,
            "self": f"{self.base_url}/rest/api/3/issue/{record['id']}",
            "fields": {"summary": record["fields"].get("summary")},
        }

    def whoami(self, who: str) -> Any:
        return {
            "accountId": "5b10ac8d82e05b22cc7d4ef5",
            "accountType": "atlassian",
            "emailAddress": who,
            "displayName": "Octopus Bot",
            "active": True,
            "timeZone": "Asia/Shanghai",
            "self": f"{self.base_url}/rest/api/3/user?accountId=5b10ac8d82e05b22cc7d4ef5",
        }

    def extra_routes(self) -> list[web.RouteDef]:
        return [web.get("/rest/api/3/search", self.search_removed)]

    async def search_removed(self, request: web.Request) -> web.Response:
        return self.error(
            410,
            [
                "The requested API has been removed. Please migrate to the /rest/api/3/search/jql "
                "API. A full migration guideline is available at "
                "https://developer.atlassian.com/changelog/#CHANGE-2046"
            ],
        )
