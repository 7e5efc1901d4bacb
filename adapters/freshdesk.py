"""Freshdesk: create a ticket with API v2 (``POST /api/v2/tickets``, 201 with the ticket, ``id``).

Auth is HTTP basic with the account's API key as the user name and a dummy password (Freshdesk
documents that any password goes with an API key; we send ``X``). The base URL is
``https://<domain>.freshdesk.com``; ``endpoints.domain`` (``acme`` or ``acme.freshdesk.com``) is
accepted instead of ``endpoints.baseUrl``. Agents open a ticket at ``<base>/a/tickets/<id>``.

A ticket needs a requester (one of ``requester_id``, ``email``, ``phone`` (with ``name``),
``twitter_id``, ``facebook_id``, ``unique_external_id``) and a ``subject``; ``description`` is
HTML, so the rendered text is escaped and its line breaks kept (``<p>`` per blank-line block,
``<br>`` per newline). ``status``, ``priority`` and ``source`` are numbers: our vocabulary is mapped
(priority low/medium/high/urgent → 1–4; status open/pending/resolved/closed → 2–5; the message's
platform → source: e-mail 1, web portal 2, phone 3, every chat app 7), and a category maps onto the
default ticket ``type`` values (Question, Incident, Problem, Feature Request, Refund).

Errors: 400 ``{"description": "Validation failed", "errors": [{"field", "message", "code"}]}``
(codes ``missing_field``, ``invalid_value``, ``invalid_field``, ``datatype_mismatch`` …), 401
``invalid_credentials``, 403 ``access_denied`` / ``require_feature`` / ``account_suspended``, 404,
409, 429. Limits are per account per minute over all agents and IPs (trial 50; Growth 200 with
80 ticket creates; Pro 400/160; Enterprise 700/280); every answer carries ``X-RateLimit-Total``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Used-CurrentRequest``, and a 429 ``Retry-After``
(seconds). There is no daily quota, so every 429 is a short wait. Default pacing: 80 per minute,
the lowest paid plan's ticket-create limit.

Freshdesk has no idempotency key. Each ticket is tagged ``octopus-<16 hex of sha256(idempotency
key)>`` and :meth:`SpecAdapter.find_existing` looks it up with the search API
(``GET /api/v2/search/tickets?query="tag:'…'"``), which is served from an index that lags writes:
``None`` right after an ambiguous create means "can't tell yet".
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext
from octopus_crm.adapters.http import Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    Basic,
    ConnectionCheck,
    CreateCall,
    Errors,
    FindCall,
    SpecAdapter,
    VendorSpec,
    dedupe_marker,
)
from octopus_crm.core.errors import ConfigError, PermanentError

__all__ = ["PRIORITY", "SOURCE", "STATUS", "FreshdeskAdapter", "dedupe_tag", "text_to_html"]

TICKETS_PATH = "/api/v2/tickets"
SEARCH_PATH = "/api/v2/search/tickets"
ME_PATH = "/api/v2/agents/me"

PRIORITY = {"low": 1, "medium": 2, "high": 3, "urgent": 4}
STATUS = {"open": 2, "pending": 3, "resolved": 4, "closed": 5}
_CHAT = ("telegram", "whatsapp", "wechat", "wework", "wecom", "line", "slack", "messenger", "chat", "discord")
SOURCE = {"email": 1, "portal": 2, "web": 2, "phone": 3, **dict.fromkeys(_CHAT, 7)}
TYPE = {
    "销售线索": "Question",
    "sales": "Question",
    "产品咨询": "Question",
    "客户服务": "Question",
    "技术支持": "Incident",
    "support": "Incident",
    "客户投诉": "Problem",
    "产品反馈": "Feature Request",
    "退款": "Refund",
}
REQUESTER_FIELDS = ("requester_id", "email", "phone", "twitter_id", "facebook_id", "unique_external_id")
_NUMERIC = ("priority", "status", "source", "requester_id", "responder_id", "group_id", "company_id", "product_id")


def dedupe_tag(idempotency_key: str) -> str:
    return dedupe_marker(idempotency_key)


def text_to_html(text: str) -> str:
    """Plain text as Freshdesk HTML: escaped, a ``<p>`` per blank-line block, ``<br>`` per newline."""
    blocks = [b.strip("\n") for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    return "".join("<p>" + "<br>".join(html.escape(line) for line in b.split("\n")) + "</p>" for b in blocks)


def _error_message(response: Response) -> str:
    body = response.json()
    if not isinstance(body, dict):
        return response.text[:500]
    parts = [str(body.get("description") or body.get("message") or body.get("code") or "")]
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            parts.append(f"{error.get('field')}: {error.get('message')} ({error.get('code')})")
    return "; ".join(p for p in parts if p) or f"HTTP {response.status}"


class FreshdeskCredentials(Credentials):
    apiKey: SecretStr | None = alias("apiKey", "api_key", "apikey", description="The agent's API key (required).")


class FreshdeskEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="https://<domain>.freshdesk.com (or set domain).")
    domain: str | None = Field(default=None, description="The helpdesk's subdomain, acme or acme.freshdesk.com.")


class FreshdeskSettings(VendorSettings):
    credentials: FreshdeskCredentials = Field(default_factory=FreshdeskCredentials)
    endpoints: FreshdeskEndpoints = Field(default_factory=FreshdeskEndpoints)
    dedupeTag: bool = Field(default=True, description="Tag tickets with the idempotency key to find them again.")


def _find_params(adapter: FreshdeskAdapter, ctx: DeliveryContext) -> dict[str, str]:
    return {"query": f"\"tag:'{dedupe_tag(ctx.idempotency_key)}'\""}


SPEC = VendorSpec(
    auth={"apikey": Basic(("apiKey", "api_key", "apikey"), (), fixed_password="X")},
    default_auth="apikey",
    objects={
        "ticket": CreateCall(
            TICKETS_PATH,
            body=lambda adapter, fields, event, ctx: adapter.ticket(fields, ctx),
            what="a ticket id",
            url=lambda adapter, ticket_id, body: f"{adapter.base_url}/a/tickets/{ticket_id}",
        )
    },
    find={
        "ticket": FindCall(
            SEARCH_PATH,
            params=_find_params,
            items_at=("results",),
            enabled=lambda adapter: bool(adapter.config.extra("dedupeTag", True)),
        )
    },
    errors=Errors(message=_error_message),
    test_call=ConnectionCheck(ME_PATH),
)


class FreshdeskAdapter(SpecAdapter):
    info = AdapterInfo(
        type="freshdesk",
        display_name="Freshdesk",
        display_name_zh="Freshdesk 客服工单",
        object_types=("ticket",),
        auth_types=("apikey",),
        rate_limit=RateLimit(requests=80, perSeconds=60, concurrency=8),
        idempotency="tag octopus-<hash of key> on each ticket, found again with the search API",
        docs="https://developers.freshdesk.com/api/#create_ticket",
    )
    settings_model = FreshdeskSettings
    spec = SPEC
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "ticket.priority": PRIORITY,
        "ticket.status": STATUS,
        "ticket.source": SOURCE,
        "ticket.type": TYPE,
    }

    @property
    def base_url(self) -> str:
        domain = str(self.config.endpoints.get("domain") or "").strip().rstrip("/")
        if domain and not self.config.endpoints.get("baseUrl"):
            host = domain if "." in domain else f"{domain}.freshdesk.com"
            return f"https://{host}"
        return super().base_url

    def validate_config(self) -> None:
        if not self.base_url:
            raise ConfigError(
                "endpoints.baseUrl (https://<domain>.freshdesk.com) or endpoints.domain is required", code="missing_url"
            )
        super().validate_config()

    def ticket(self, fields: dict[str, Any], ctx: DeliveryContext) -> dict[str, Any]:
        """The rendered mapping as a create-ticket body: numeric enums, HTML description, tags."""
        body = {k: v for k, v in fields.items() if v not in (None, "")}
        for name in _NUMERIC:
            value = body.get(name)
            if isinstance(value, str) and value.strip().isdigit():  # "2" written in a mapping
                body[name] = int(value)
        if not any(body.get(name) for name in REQUESTER_FIELDS):
            raise PermanentError(
                f"ticket needs a requester: one of {', '.join(REQUESTER_FIELDS)} (the event has none)",
                code="missing_field",
            )
        if isinstance(body.get("description"), str):
            body["description"] = text_to_html(body["description"])
        tags = body.get("tags")
        items = tags.split(",") if isinstance(tags, str) else tags if isinstance(tags, list) else []
        tag_list = [str(t).strip() for t in items if t is not None and str(t).strip()]
        if self.config.extra("dedupeTag", True):
            tag_list.append(dedupe_tag(ctx.idempotency_key))
        if tag_list or "tags" in body:
            body["tags"] = list(dict.fromkeys(tag_list))
        return body
