"""Pipedrive: persons, deals and activities on API v2, leads on API v1 (v2 has no leads).

- Base URL ``https://{company}.pipedrive.com`` (``endpoints.baseUrl`` or ``endpoints.companyDomain``;
  default ``https://api.pipedrive.com``). Auth: the API token in the ``x-api-token`` header
  (``authType: "api_token"``, default; the query parameter would put it in every logged URL), an
  OAuth access token as ``Bearer`` (``authType: "oauth"``: static, a 401 is final), or an OAuth
  app's refresh token (``authType: "oauth2"``: ``clientId``, ``clientSecret``, ``refreshToken``)
  traded at ``https://oauth.pipedrive.com/oauth/token`` with the client in HTTP basic, refreshed
  once on a 401.
- v1 ``POST /v1/persons``, ``/v1/deals``, ``/v1/activities`` are out of support since 1 Aug 2026
  (and cost twice the tokens): we use ``POST /api/v2/persons`` (``name``; ``emails``/``phones``
  as ``[{"value", "primary", "label"}]`` — a flat ``email``/``phone`` is folded into that shape),
  ``/api/v2/deals`` (``title``), ``/api/v2/activities`` (``subject``) and ``POST /api/v1/leads``
  (``title`` and ``person_id`` or ``organization_id``; ``value`` as ``{"amount", "currency"}``).
  Answers are ``{"success": true, "data": {"id": …}}``; lead ids are UUIDs.
- A lead or deal without a person or organisation gets the message's sender as its person: found
  by e-mail (``GET /api/v2/persons/search?fields=email&exact_match=true``), created only when
  absent — once per e-mail at a time (a lock), and a person this adapter just created is reused
  without asking search again (search may lag), so a retried lead never makes a second person.
- No idempotency key: leads and deals carry ``origin_id = octopus-<hash of key>`` (the one
  writable, read-only-after-create origin field, added May 2024); after an ambiguous create the
  sender's leads/deals are listed (``?person_id=``) and matched on it. Persons de-duplicate on
  e-mail. Activities: ledger only.
- Errors ``{"success": false, "error": "…", "error_info": "…"}`` with 400/401/403/404/410/422/429,
  and sometimes HTTP 200 with ``success: false`` (a permanent error here).
- Limits: token-based — a daily budget per company account (seats × plan, shared by every user
  and app), plus burst limits per rolling 2-second window (Essential: 20 requests per 2 s per API
  token, search 10; ``plan`` picks another plan's; OAuth tokens get four times as many). Answers
  carry ``x-ratelimit-limit/-remaining/-reset`` (the burst window: at remaining 0 we hold one
  slot, 2 s / limit, as the oldest call ages out) and ``x-daily-requests-left`` on POST/PUT. A 429
  with the daily budget spent (``x-daily-requests-left: 0`` or a daily/budget message) is a
  :class:`QuotaExhaustedError` until the next UTC midnight [2nd: the reset's time zone]; any
  other 429 is a short wait (``Retry-After``, else ``x-ratelimit-reset``).
- Value maps: Pipedrive has no priority or category enums on these objects (labels and channels
  are account-specific ids): configure ``valueMaps`` per account, e.g. ``deal.label_ids``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any, Literal

from pydantic import Field, SecretStr

from octopus_crm.adapters.auth import Auth
from octopus_crm.adapters.base import AdapterInfo, Delivered, DeliveryContext, IntegrationConfig
from octopus_crm.adapters.fleet import scope_of_secret
from octopus_crm.adapters.http import Request, Response, classify_status
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    ApiKeyHeader,
    Bearer,
    ConnectionCheck,
    CreateCall,
    Errors,
    LimitHeaders,
    OAuth2Refresh,
    SpecAdapter,
    VendorSpec,
    at_path,
    dedupe_marker,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
)
from octopus_crm.core.redaction import redact

__all__ = ["PipedriveAdapter", "origin_marker"]

PERSONS, DEALS, ACTIVITIES, LEADS = "/api/v2/persons", "/api/v2/deals", "/api/v2/activities", "/api/v1/leads"
SEARCH = "/api/v2/persons/search"
_COMPANY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Burst requests per 2 s per API token by plan (rate-limiting page); OAuth tokens get four times as many.
PLAN_BURST = {"essential": 20, "advanced": 40, "professional": 80, "power": 100, "enterprise": 120}
_REMEMBERED = 4096
_TOKEN_KEYS = ("apiToken", "api_token", "token", "apiKey")
_UI_PATH = {"person": "person", "deal": "deal", "lead": "leads/inbox"}


def origin_marker(key: str) -> str:
    return dedupe_marker(key, 24)


def seconds_until_utc_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    return max(60.0, (dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC) - now).total_seconds())


def _message(response: Response) -> str:
    body = response.json()
    if not isinstance(body, dict):
        return response.text[:500]
    parts = [str(body[k]) for k in ("error", "error_info") if body.get(k)]
    return "; ".join(parts) or f"HTTP {response.status}"


class _SuccessField:
    """Pipedrive's ``success`` flag (false even under HTTP 200) and its daily budget on 429."""

    def classify(self, response: Response) -> DeliveryError | None:
        error = classify_status(response, _message)
        if error is None and response.field("success") is False:
            return PermanentError(redact(_message(response)), code="success_false", status=response.status)
        if isinstance(error, RateLimitedError) and _daily_budget_spent(response):
            return QuotaExhaustedError(
                error.message, code="daily_budget", status=response.status, retry_after=seconds_until_utc_midnight()
            )
        return error


def _daily_budget_spent(response: Response) -> bool:
    if response.headers.get("x-daily-requests-left", "").strip() == "0":
        return True
    text = _message(response).lower()
    return "daily" in text or "budget" in text


def _listed(value: Any, label: str = "work") -> Any:
    if isinstance(value, str):
        return [{"value": value, "primary": True, "label": label}] if value.strip() else None
    return value


def _person_body(adapter: Any, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    body = dict(rendered)
    for flat, listed in (("email", "emails"), ("phone", "phones")):
        if flat in body:
            value = _listed(body.pop(flat))
            if value and listed not in body:
                body[listed] = value
    return {k: v for k, v in body.items() if v is not None}


def _contact(person: dict[str, Any]) -> tuple[str, str] | None:
    """What a person is found by: its first e-mail, else its first phone."""
    for field, listed in (("email", "emails"), ("phone", "phones")):
        value = at_path(person, (listed, 0, "value"))
        if isinstance(value, str) and value.strip():
            return field, value.strip()
    return None


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value.replace(",", ""))
        except ValueError:
            return value  # Pipedrive's validation names the field
    return value


def _deal_body(adapter: Any, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    body = adapter.marked(rendered, ctx)
    if "value" in body:
        body["value"] = _number(body["value"])
    return body


def _lead_body(adapter: Any, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    body = adapter.marked(rendered, ctx)
    if isinstance(body.get("value"), (int, float, str)) and not isinstance(body.get("value"), bool):
        if not body.get("currency"):
            raise ConfigError('mappings.lead: a value needs a currency (e.g. "currency": "CNY")', code="bad_template")
        body["value"] = {"amount": _number(body["value"]), "currency": str(body.pop("currency"))}
    return body


def _ui_url(object_type: str) -> Any:
    def url(adapter: Any, record_id: str, body: Any) -> str:
        return f"{adapter.ui_url}/{_UI_PATH[object_type]}/{record_id}"

    return url


def _call(path: str, object_type: str, body: Any = None) -> CreateCall:
    url = _ui_url(object_type) if object_type in _UI_PATH else None
    return CreateCall(path, body=body, id_at=("data", "id"), url=url, what=f"a {object_type} id")


SPEC = VendorSpec(
    auth={
        "api_token": ApiKeyHeader("x-api-token", _TOKEN_KEYS),
        "oauth": Bearer(("accessToken",)),
        "oauth2": OAuth2Refresh("/oauth/token", client_basic=True),
    },
    default_auth="api_token",
    objects={
        "person": _call(PERSONS, "person", _person_body),
        "deal": _call(DEALS, "deal", _deal_body),
        "lead": _call(LEADS, "lead", _lead_body),
        "activity": _call(ACTIVITIES, "activity"),
    },
    errors=Errors(body_codes=_SuccessField(), retry_after_headers=("x-ratelimit-reset",)),
    test_call=ConnectionCheck("/api/v1/users/me"),
    headers={"Accept": "application/json"},
    limit_headers=LimitHeaders(
        "x-ratelimit-remaining", "x-ratelimit-reset", rolling_window=2.0, limit="x-ratelimit-limit"
    ),
)


class PipedriveCredentials(Credentials):
    apiToken: SecretStr | None = alias("apiToken", "api_token", "token", "apiKey", description="API token.")
    accessToken: SecretStr | None = Field(default=None, description="OAuth access token (authType oauth).")
    clientId: str | None = Field(default=None, description="OAuth app's client id (authType oauth2).")
    clientSecret: SecretStr | None = Field(default=None, description="authType oauth2.")
    refreshToken: SecretStr | None = Field(default=None, description="authType oauth2.")


class PipedriveEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="https://<company>.pipedrive.com (default api.pipedrive.com)")
    companyDomain: str | None = alias("companyDomain", "company_domain", description="Instead of baseUrl.")
    oauthUrl: Url | None = Field(default=None, description="Token server (default https://oauth.pipedrive.com).")


class PipedriveSettings(VendorSettings):
    credentials: PipedriveCredentials = Field(default_factory=PipedriveCredentials)
    endpoints: PipedriveEndpoints = Field(default_factory=PipedriveEndpoints)
    personFromSender: bool = Field(default=True, description="Link leads/deals to the sender's person.")
    originMarker: bool = Field(default=True, description="origin_id on leads/deals to find them after a timeout.")
    plan: Literal["essential", "advanced", "professional", "power", "enterprise"] | None = Field(
        default=None, description="Pace at this plan's burst limit (default: essential, 20 per 2 s)."
    )


class PipedriveAdapter(SpecAdapter):
    info = AdapterInfo(
        type="pipedrive",
        display_name="Pipedrive",
        display_name_zh="Pipedrive 销售管道",
        object_types=("person", "deal", "lead", "activity"),
        auth_types=("api_token", "oauth", "oauth2"),
        rate_limit=RateLimit(requests=20, perSeconds=2, concurrency=8),
        idempotency="persons by e-mail; leads/deals origin_id marker found again via the person; activities: ledger",
        docs="https://developers.pipedrive.com/docs/api/v1/Leads#addLead",
    )
    settings_model = PipedriveSettings
    spec = SPEC
    default_base_url = "https://api.pipedrive.com"

    def __init__(self, integration_id: str, config: IntegrationConfig) -> None:
        super().__init__(integration_id, config)
        self._person_locks: dict[str, asyncio.Lock] = {}
        self._created_persons: dict[str, str] = {}  # "email:…" → id: persons search may not show yet

    def validate_config(self) -> None:
        company = self.config.endpoints.get("companyDomain", self.config.endpoints.get("company_domain"))
        if company is not None and not _COMPANY.match(str(company)):
            raise ConfigError("endpoints.companyDomain must be the company's subdomain (e.g. acme)", code="bad_url")
        super().validate_config()

    @property
    def base_url(self) -> str:
        url = self.config.endpoints.get("baseUrl")
        company = self.config.endpoints.get("companyDomain", self.config.endpoints.get("company_domain"))
        return str(url or (f"https://{company}.pipedrive.com" if company else self.default_base_url)).rstrip("/")

    @property
    def rate_limit(self) -> RateLimit:
        plan = self.config.extra("plan")
        if self.config.rateLimit is not None or (plan is None and self.auth_type == "api_token"):
            return super().rate_limit
        burst = PLAN_BURST.get(plan, PLAN_BURST["essential"]) * (1 if self.auth_type == "api_token" else 4)
        return self.info.rate_limit.model_copy(update={"requests": burst})

    @property
    def limit_scope(self) -> str:
        """Burst limits count per token: integrations sharing one share a schedule."""
        if self.auth_type == "oauth2":
            token = self.config.secret("clientId") + self.config.secret("refreshToken")
        else:
            token = self.config.secret("accessToken") if self.auth_type == "oauth" else self.config.secret(*_TOKEN_KEYS)
        return scope_of_secret("pipedrive", token)

    def make_auth(self) -> Auth | None:
        """OAuth tokens come from Pipedrive's token server, not the API host."""
        base = self.base_url
        if self.auth_type == "oauth2":
            base = str(self.config.endpoints.get("oauthUrl") or "https://oauth.pipedrive.com").rstrip("/")
        return self.auth_scheme.build(self.config, base)

    @property
    def ui_url(self) -> str:
        return "https://app.pipedrive.com" if self.base_url == self.default_base_url else self.base_url

    def marked(self, rendered: dict[str, Any], ctx: DeliveryContext) -> dict[str, Any]:
        body = {k: v for k, v in rendered.items() if v is not None}
        if self.config.extra("originMarker", True) and "origin_id" not in body:
            body["origin_id"] = origin_marker(ctx.idempotency_key)
        return body

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        call = self.create_call(object_type)
        body = self.request_body(call, event, object_type, ctx)
        if object_type == "person":
            person_id, existed = await self.person_for(_contact(body), body)
            return self.person_delivered(person_id, existed)
        if object_type in ("lead", "deal") and not any(body.get(k) for k in ("person_id", "organization_id", "org_id")):
            if self.config.extra("personFromSender", True):
                sender = event.sender
                name = sender.name or (sender.email or "").split("@")[0] or sender.id or "Unknown"
                person = _person_body(self, {"name": name, "email": sender.email, "phone": sender.phone}, event, ctx)
                body["person_id"] = int((await self.person_for(_contact(person), person))[0])
            elif object_type == "lead":
                raise ConfigError("mappings.lead needs person_id or organization_id", code="missing_mapping")
        response = await self.http.send(Request(call.method, call.path, json=body))
        return call.delivered(self, response, ctx)

    def person_delivered(self, person_id: str, existed: bool) -> Delivered:
        return Delivered(person_id, f"{self.ui_url}/person/{person_id}", {"existing": True} if existed else {})

    async def person_for(self, contact: tuple[str, str] | None, body: dict[str, Any]) -> tuple[str, bool]:
        """(id, found) of the person with ``contact`` (e-mail or phone): found, else created from
        ``body`` — one at a time per contact. Without a contact there is nothing to find it by."""
        if contact is None:
            return await self._create_person(body), False
        if len(self._person_locks) > _REMEMBERED:  # bounded: only contacts being resolved need one
            self._person_locks = {k: v for k, v in self._person_locks.items() if v.locked()}
        if len(self._created_persons) > _REMEMBERED:
            self._created_persons.clear()  # a shortcut only: search finds older persons
        key = f"{contact[0]}:{contact[1].lower()}"
        async with self._person_locks.setdefault(key, asyncio.Lock()):
            found = await self.person_by(*contact)
            if found is not None:
                return found, True
            self._created_persons[key] = person_id = await self._create_person(body)
            return person_id, False

    async def _create_person(self, body: dict[str, Any]) -> str:
        response = await self.http.send(Request("POST", PERSONS, json=body))
        return self.create_call("person").delivered(self, response, None).external_id

    async def person_by(self, field: str, value: str) -> str | None:
        known = self._created_persons.get(f"{field}:{value.lower()}")
        if known is not None:
            return known
        params = {"term": value, "fields": field, "exact_match": "true", "limit": "1"}
        response = await self.http.send(Request("GET", SEARCH, params=params))
        found = at_path(response.json(), ("data", "items", 0, "item", "id"))
        return None if found in (None, "") or isinstance(found, (dict, list, bool)) else str(found)

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        if object_type == "person":
            contact = _contact(self.request_body(self.create_call("person"), event, object_type, ctx))
            found = await self.person_by(*contact) if contact else None
            return self.person_delivered(found, True) if found else None
        if object_type not in ("lead", "deal") or not self.config.extra("originMarker", True):
            return None
        rendered = self.render(event, object_type, ctx)
        person = rendered.get("person_id")
        sender = _contact(_person_body(self, {"email": event.sender.email, "phone": event.sender.phone}, event, ctx))
        if person is None and sender is not None and self.config.extra("personFromSender", True):
            person = await self.person_by(*sender)
        if person is None:
            return None
        path = LEADS if object_type == "lead" else DEALS
        response = await self.http.send(Request("GET", path, params={"person_id": str(person), "limit": "100"}))
        marker = rendered.get("origin_id") or origin_marker(ctx.idempotency_key)
        items = at_path(response.json(), ("data",))
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("origin_id") == marker:
                return self.create_call(object_type).delivered_from(self, {"data": item}, {}, None)
        return None
