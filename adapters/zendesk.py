"""Zendesk Support: create a ticket (``POST /api/v2/tickets``, 201 ``{"ticket": {...}, "audit": ...}``).

- Base URL ``https://{subdomain}.zendesk.com`` (``endpoints.baseUrl``, or ``endpoints.subdomain``).
- Auth: an API token as HTTP basic ``{email}/token:{apiToken}`` (``authType: "api_token"``, the
  default), or an OAuth access token as ``Authorization: Bearer`` (``authType: "oauth"``). Both
  are static: a 401 (``{"error": "Couldn't authenticate you"}``) is final.
- Body ``{"ticket": {"subject", "comment": {"body"}, "requester": {"name", "email"}, "priority",
  "type", "tags", ...}}``. A flat seed mapping is folded into that shape: ``description`` /
  ``body`` / ``content`` become the first comment; ``requesterName`` / ``requesterEmail`` the
  requester. Without a mapped requester the ticket's requester is the message's sender (name and
  e-mail), so the customer — not the API user — is who asked. Priority is urgent/high/normal/low
  (our ``medium`` → ``normal``); tags cannot hold spaces (Zendesk would split them).
- Idempotency: the ``Idempotency-Key`` header on ticket creation (Support API introduction,
  "Idempotency"): a repeat with the same key and body within the key's lifetime (two hours [2nd])
  answers the original ticket with ``x-idempotency-lookup: hit``; the same key with another body
  is refused (``IdempotentRequestError``: the ticket is then looked up and reported). Keys are at
  most 255 characters (longer ones are hashed). Beyond that window each ticket also carries
  ``external_id = octopus-<hash of key>``, found again with ``GET /api/v2/tickets?external_id=…``
  after an ambiguous create.
- The requester is whoever the e-mail names: a sender claiming an agent's address files the ticket
  as that agent. Map ``requester`` explicitly where senders' addresses are not trustworthy.
- Errors ``{"error": "RecordInvalid", "description": "...", "details": {field: [{"description"}]}}``
  (400, 422), 401, 403, 404, 409 (a concurrent write: retry), 429 + ``Retry-After``.
- Limits per account per minute by plan (Team 200, Growth/Professional 400, Enterprise 700,
  High Volume 2,500); answers carry ``X-Rate-Limit`` / ``X-Rate-Limit-Remaining`` and on
  ticketing endpoints ``ratelimit-limit/-remaining/-reset``. We pace at the Team plan's 200/min
  unless ``plan`` names another (or ``rateLimit`` is set), and hold at ``ratelimit-remaining: 0``
  until the reset.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, Delivered, DeliveryContext
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
    LimitHeaders,
    SpecAdapter,
    VendorSpec,
    dedupe_marker,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError, PermanentError

__all__ = ["PLAN_LIMITS", "PRIORITY_ZENDESK", "ZendeskAdapter", "external_marker", "idempotency_header_value"]

TICKETS_PATH = "/api/v2/tickets"
PRIORITY_ZENDESK = {"low": "low", "medium": "normal", "normal": "normal", "high": "high", "urgent": "urgent"}
# Requests per minute per account by plan (rate-limits page); ``plan`` picks one, ``rateLimit`` overrides.
PLAN_LIMITS = {"team": 200, "growth": 400, "professional": 400, "enterprise": 700, "enterprise_plus": 2500}
_COMMENT_KEYS = ("comment", "description", "body", "content")
_SUBDOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def idempotency_header_value(key: str) -> str:
    """The delivery key as Zendesk takes it: at most 255 characters."""
    return key if len(key) <= 255 else "octopus-" + hashlib.sha256(key.encode()).hexdigest()


def external_marker(key: str) -> str:
    return dedupe_marker(key, 24)


def _tags(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    tags = ["_".join(str(item).split()) for item in items]
    return list(dict.fromkeys(tag for tag in tags if tag))


def _error_message(response: Response) -> str:
    body = response.json()
    if not isinstance(body, dict):
        return response.text[:500]
    error: Any = body.get("error")
    description: Any = body.get("description")
    if isinstance(error, dict):  # some endpoints nest {"title", "message"}
        error, description = error.get("title"), error.get("message")
    parts = [str(p) for p in (error, description) if p]
    details = body.get("details")
    if isinstance(details, dict):
        for name, problems in details.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                text = problem.get("description") if isinstance(problem, dict) else problem
                parts.append(f"{name}: {text}")
    return "; ".join(parts) or f"HTTP {response.status}"


class ZendeskCredentials(Credentials):
    email: str | None = alias("email", "username", description="Agent e-mail (api_token auth).")
    apiToken: SecretStr | None = alias("apiToken", "api_token", "token", description="API token (api_token auth).")
    accessToken: SecretStr | None = alias("accessToken", "oauthToken", description="OAuth access token (oauth).")


class ZendeskEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="https://<subdomain>.zendesk.com")
    subdomain: str | None = Field(default=None, description="Instead of baseUrl: the account's subdomain.")


class ZendeskSettings(VendorSettings):
    credentials: ZendeskCredentials = Field(default_factory=ZendeskCredentials)
    endpoints: ZendeskEndpoints = Field(default_factory=ZendeskEndpoints)
    externalIdMarker: bool = Field(default=True, description="Set external_id to find tickets after a timeout.")
    plan: Literal["team", "growth", "professional", "enterprise", "enterprise_plus"] | None = Field(
        default=None, description="Pace at this plan's per-minute limit (default: team, 200/min)."
    )


def _ticket_body(
    adapter: ZendeskAdapter, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext
) -> Any:
    return {"ticket": adapter.ticket(rendered, event, ctx)}


def _find_params(adapter: ZendeskAdapter, ctx: DeliveryContext) -> dict[str, str]:
    return {"external_id": external_marker(ctx.idempotency_key)}


def _agent_url(adapter: ZendeskAdapter, ticket_id: str, body: Any) -> str:
    return f"{adapter.base_url}/agent/tickets/{ticket_id}"


SPEC = VendorSpec(
    auth={
        "api_token": Basic(("email", "username"), ("apiToken", "api_token", "token"), user_suffix="/token"),
        "oauth": Bearer(("accessToken", "oauthToken")),
    },
    default_auth="api_token",
    objects={
        "ticket": CreateCall(
            TICKETS_PATH,
            body=_ticket_body,
            idempotency_header="Idempotency-Key",
            idempotency_value=idempotency_header_value,
            id_at=("ticket", "id"),
            what="a ticket id",
            url=_agent_url,
        )
    },
    find={
        "ticket": FindCall(
            TICKETS_PATH,
            params=_find_params,
            items_at=("tickets",),
            enabled=lambda adapter: adapter.marks,
            read=CreateCall(TICKETS_PATH, what="a ticket id", url=_agent_url),
        )
    },
    errors=Errors(message=_error_message, status={409: "retryable"}, retry_after_headers=("ratelimit-reset",)),
    test_call=ConnectionCheck("/api/v2/users/me"),
    headers={"Accept": "application/json"},
    limit_headers=LimitHeaders("ratelimit-remaining", "ratelimit-reset"),
)


class ZendeskAdapter(SpecAdapter):
    info = AdapterInfo(
        type="zendesk",
        display_name="Zendesk Support",
        display_name_zh="Zendesk 工单",
        object_types=("ticket",),
        auth_types=("api_token", "oauth"),
        rate_limit=RateLimit(requests=200, perSeconds=60, concurrency=10),
        idempotency="native Idempotency-Key on ticket create; external_id marker found again after a timeout",
        docs="https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#create-ticket",
    )
    settings_model = ZendeskSettings
    spec = SPEC
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"ticket.priority": PRIORITY_ZENDESK}

    def validate_config(self) -> None:
        subdomain = self.config.endpoints.get("subdomain")
        if subdomain is not None and not _SUBDOMAIN.match(str(subdomain)):
            raise ConfigError("endpoints.subdomain must be the account's subdomain (e.g. acme)", code="bad_url")
        if not self.base_url:
            raise ConfigError("endpoints.baseUrl (https://<subdomain>.zendesk.com) is required", code="missing_url")
        super().validate_config()

    @property
    def base_url(self) -> str:
        url = self.config.endpoints.get("baseUrl")
        subdomain = self.config.endpoints.get("subdomain")
        if not url and subdomain:
            url = f"https://{subdomain}.zendesk.com"
        return str(url or "").rstrip("/")

    @property
    def rate_limit(self) -> RateLimit:
        plan = self.config.extra("plan")
        if self.config.rateLimit is None and plan in PLAN_LIMITS:
            return self.info.rate_limit.model_copy(update={"requests": PLAN_LIMITS[plan]})
        return super().rate_limit

    @property
    def limit_scope(self) -> str:
        """Zendesk counts per account: every integration on one subdomain shares the budget."""
        return f"zendesk:{self.base_url.lower()}"

    @property
    def marks(self) -> bool:
        mapping = self.config.mappings.get("ticket")
        mapped = isinstance(mapping, dict) and "external_id" in mapping
        return bool(self.config.extra("externalIdMarker", True)) and not mapped

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        try:
            return await super().create(event, object_type, ctx)
        except PermanentError as exc:
            # The key was used with another body (the mapping changed between attempts): the
            # ticket exists, so report it rather than dead-letter a delivery that happened.
            if "IdempotentRequestError" not in exc.message:
                raise
            found = await self.find_existing(event, object_type, ctx)
            if found is None:
                raise
            return Delivered(found.external_id, found.external_url, {**found.detail, "existing": True})

    def ticket(self, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> dict[str, Any]:
        """A rendered mapping (flat seed keys or Zendesk's own) as a Create Ticket ``ticket`` object."""
        nested = rendered.get("ticket")
        ticket = dict(nested) if isinstance(nested, dict) else dict(rendered)
        if ticket.get("requester") in ({}, "", None):
            ticket.pop("requester", None)  # a mapped requester whose fields rendered empty
        comment = next((ticket.pop(k) for k in _COMMENT_KEYS if k in ticket and ticket[k] not in (None, "")), None)
        for k in _COMMENT_KEYS:
            ticket.pop(k, None)
        if comment is not None:
            ticket["comment"] = comment if isinstance(comment, dict) else {"body": str(comment)}
        name, email = ticket.pop("requesterName", None), ticket.pop("requesterEmail", None)
        if "requester" not in ticket and "requester_id" not in ticket:
            requester = {"name": name or event.sender.name, "email": email or event.sender.email}
            requester = {k: v for k, v in requester.items() if v}
            if requester:
                requester.setdefault("name", str(requester.get("email", "")).split("@")[0])
                ticket["requester"] = requester
        if "tags" in ticket:
            ticket["tags"] = _tags(ticket["tags"])
        if isinstance(ticket.get("subject"), str):
            ticket["subject"] = " ".join(ticket["subject"].split())
        if self.marks:
            ticket["external_id"] = external_marker(ctx.idempotency_key)
        return {k: v for k, v in ticket.items() if v is not None}
