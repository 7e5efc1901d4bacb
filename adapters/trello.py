"""Trello: create a card in a list (``POST https://api.trello.com/1/cards``, 200 with the card).

Auth is the API key and a user token as query parameters ``key`` and ``token`` (seed-style
``credentials.apiKey`` / ``token``). They are registered as secrets (redacted from any message);
the URL a response carries, and so any error text or log line, is the URL without its query.
``idList`` (24-hex id) is required: from the mapping, else the integration's ``listId``. Other
card fields: ``name``, ``desc`` (≤ 16,384 characters), ``pos`` (``top``/``bottom``/a number —
our priority maps onto it: urgent and high go on top), ``due``, ``idLabels``, ``idMembers``.

Errors: 400 plain text (``invalid value for idList``), 401 plain text (``invalid key``,
``invalid token``), 404, and 429 ``{"error": "API_TOKEN_LIMIT_EXCEEDED" |
"API_KEY_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}`` without documented rate-limit
headers. Limits: 100 requests per 10 s per token and 300 per 10 s per API key; the limiter paces
per token (several integrations sharing one key and different tokens can still meet the key's
limit), and a 429 without ``Retry-After`` waits out the 10-s window.

Trello has no idempotency key. Each card's ``desc`` ends with a marker line ``octopus-<16 hex of
sha256(idempotency key)>`` (``dedupeMarker``, default on) and :meth:`find_existing` looks for it
among the open cards of the list (``GET /1/lists/{idList}/cards``); the daemon's ledger does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext
from octopus_crm.adapters.fleet import scope_of_secret
from octopus_crm.adapters.http import Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    ApiKeyQuery,
    ConnectionCheck,
    CreateCall,
    Errors,
    FindCall,
    SpecAdapter,
    VendorSpec,
    dedupe_marker,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError

__all__ = ["TrelloAdapter"]

DESC_MAX = 16384
# Trello has no priority; a card's position in its list is what a team sees first.
POS_TRELLO = {"low": "bottom", "medium": "bottom", "high": "top", "urgent": "top"}


class TrelloCredentials(Credentials):
    apiKey: SecretStr | None = alias("apiKey", "key", "api_key", description="Trello API key (query `key`).")
    token: SecretStr | None = alias("token", "apiToken", "accessToken", description="User token (query `token`).")


class TrelloEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="Default https://api.trello.com.")


class TrelloSettings(VendorSettings):
    credentials: TrelloCredentials = Field(default_factory=TrelloCredentials)
    endpoints: TrelloEndpoints = Field(default_factory=TrelloEndpoints)
    listId: str | None = alias(
        "listId", "idList", "list_id", description="List of new cards (or `idList` in the mapping)."
    )
    dedupeMarker: bool = Field(default=True, description="End each card's desc with a marker to find it again.")


def _message(response: Response) -> str:
    body = response.json()
    if isinstance(body, dict) and ("message" in body or "error" in body):
        return f"{body.get('message') or ''} ({body.get('error') or response.status})".strip()
    return response.text[:500]


def _card_body(adapter: TrelloAdapter, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    body = {"idList": adapter.list_id, **rendered}
    if not body.get("idList"):
        raise ConfigError("trello: idList is required (mappings.card.idList or listId)", code="missing_list")
    if adapter.config.extra("dedupeMarker", True):
        marker = dedupe_marker(ctx.idempotency_key)
        desc = str(body.get("desc") or "").rstrip()
        body["desc"] = f"{desc[: DESC_MAX - len(marker) - 2]}\n\n{marker}" if desc else marker
    return body


TOKEN_KEYS = ("token", "apiToken", "accessToken")
SPEC = VendorSpec(
    auth={"key_token": ApiKeyQuery({"key": ("apiKey", "key", "api_key"), "token": TOKEN_KEYS})},
    default_auth="key_token",
    objects={"card": CreateCall("/1/cards", body=_card_body, url_at=("shortUrl",), what="a card id")},
    find={
        "card": FindCall(
            "/1/lists/{list_id}/cards",
            params=lambda adapter, ctx: {"fields": "desc,shortUrl,url"},
            items_at=(),
            enabled=lambda adapter: bool(adapter.list_id) and bool(adapter.config.extra("dedupeMarker", True)),
            match=lambda adapter, card, ctx: (
                isinstance(card, dict) and dedupe_marker(ctx.idempotency_key) in str(card.get("desc") or "")
            ),
        )
    },
    errors=Errors(message=_message, default_retry_after=10.0),
    test_call=ConnectionCheck("/1/members/me"),
    headers={"Accept": "application/json"},
)


class TrelloAdapter(SpecAdapter):
    info = AdapterInfo(
        type="trello",
        display_name="Trello",
        display_name_zh="Trello 看板",
        object_types=("card",),
        auth_types=("key_token",),
        rate_limit=RateLimit(requests=100, perSeconds=10, concurrency=10),
        idempotency="marker octopus-<hash of key> at the end of each card's desc, found again in the list",
        docs="https://developer.atlassian.com/cloud/trello/rest/api-group-cards/#api-cards-post",
    )
    settings_model = TrelloSettings
    spec = SPEC
    default_base_url = "https://api.trello.com"
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"card.pos": POS_TRELLO}

    @property
    def list_id(self) -> str:
        """The configured list, else the mapping's ``idList`` when it is written out (no template)."""
        configured = self.config.extra("listId") or self.config.extra("idList") or self.config.extra("list_id")
        if configured:
            return str(configured)
        mapping = self.config.mappings.get("card")
        written = mapping.get("idList") if isinstance(mapping, dict) else None
        return written if isinstance(written, str) and "{{" not in written else ""

    def path_vars(self) -> dict[str, str]:
        return {"list_id": self.list_id}

    @property
    def limit_scope(self) -> str:
        """Trello counts 100 requests per 10 s per token: integrations sharing a token share a pace."""
        return scope_of_secret("trello:token", self.config.secret(*TOKEN_KEYS))
