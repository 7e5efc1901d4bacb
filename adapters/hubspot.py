"""HubSpot CRM v3: contacts and tickets.

- Auth: a private-app access token as ``Authorization: Bearer`` — the seed's ``authType:
  "apikey"`` with ``credentials.apiKey`` is read as that token (HubSpot retired real API keys),
  as are ``credentials.accessToken`` / ``token``. A private-app token is static: a 401 is final,
  never a refresh. ``authType: "oauth2"`` with ``clientId``, ``clientSecret`` and
  ``refreshToken`` uses ``POST /oauth/v1/token`` instead; only then does a 401 refresh once.
- Create: ``POST /crm/v3/objects/{contacts|tickets}`` with ``{"properties": {...},
  "associations": []}`` (the create schema requires ``associations``; a mapping may supply
  its own list under that key). Tickets need pipeline / stage *ids* (``hs_pipeline``,
  ``hs_pipeline_stage``); ``hs_ticket_priority`` takes LOW / MEDIUM / HIGH.
- A contact whose e-mail exists answers 409; that is the contact we wanted, so it is looked up
  (``GET /crm/v3/objects/contacts/{email}?idProperty=email``) and reported as delivered with
  ``detail["existing"] = True``. The same lookup resolves an ambiguous contact create. Tickets
  have no natural key: ``find_existing`` cannot tell.
- Errors: ``{status, message, correlationId, category}``. 429 names a ``policyName``:
  ``DAILY`` is a quota until midnight in the account's time zone, anything else (``SECONDLY``,
  ``TEN_SECONDLY_ROLLING``) is plain rate limiting. The zone is ``endpoints.timeZone`` when set,
  else the account's ``timeZone`` from ``GET /account-info/v3/details``, asked once before the
  first delivery whether or not ``portalId`` is configured (UTC only if that call fails).
- Pacing: 100 requests per 10 s (Free/Starter; set ``rateLimit`` for higher tiers). Every answer
  carries ``X-HubSpot-RateLimit-Max/-Remaining/-Interval-Milliseconds``; when ``Remaining`` hits
  0 the integration waits one request slot (``interval / max``). The window is rolling, so the
  oldest call ages out about one slot later; waiting the whole interval would halve
  throughput whenever we pace right at the limit.
- Record URL ``https://{uiDomain}/contacts/{portalId}/record/0-1/{id}`` (tickets ``0-5``).
  ``portalId`` comes from ``endpoints.portalId``, else from ``GET /account-info/v3/details``
  (asked once; also the connection test). Without it the URL is omitted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import (
    PRIORITY_UPPER,
    AdapterInfo,
    Delivered,
    DeliveryContext,
    IntegrationConfig,
)
from octopus_crm.adapters.fleet import scope_of_secret
from octopus_crm.adapters.http import Classifier, Request, Response, parse_retry_after
from octopus_crm.adapters.ratelimit import Limiter, RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings
from octopus_crm.adapters.spec import Bearer, ConnectionCheck, CreateCall, OAuth2Refresh, SpecAdapter, VendorSpec
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm.core.redaction import redact

__all__ = ["HubSpotAdapter"]

OBJECTS = {"contact": "contacts", "ticket": "tickets"}
OBJECT_TYPE_IDS = {"contact": "0-1", "ticket": "0-5"}
RETRYABLE_STATUSES = frozenset({408, 423, 477})  # 423 record locked, 477 migration in progress
_EXISTING_ID = re.compile(r"Existing ID: (\d+)")  # the 409 body's only machine-readable hint


def seconds_until_midnight(time_zone: str | None) -> float:
    """Until the next local midnight in ``time_zone`` (UTC when unknown): the daily reset."""
    try:
        zone: dt.tzinfo = ZoneInfo(time_zone) if time_zone else dt.UTC
    except (ValueError, KeyError, OSError):
        zone = dt.UTC
    now = dt.datetime.now(zone)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), zone)
    return max(60.0, (midnight - now).total_seconds())


def observe_window(headers: Mapping[str, str], limiter: Limiter | None) -> None:
    """Honour ``X-HubSpot-RateLimit-Remaining: 0``: hold the next call for one request slot."""
    if limiter is None or headers.get("X-HubSpot-RateLimit-Remaining") != "0":
        return
    try:
        interval = float(headers["X-HubSpot-RateLimit-Interval-Milliseconds"]) / 1000
        allowed = float(headers["X-HubSpot-RateLimit-Max"])
    except (KeyError, ValueError):
        return
    if allowed > 0:
        limiter.slow_down(interval / allowed)


class HubSpotCredentials(Credentials):
    apiKey: SecretStr | None = Field(default=None, description="Private-app token (the seed's apikey).")
    accessToken: SecretStr | None = Field(default=None, description="Private-app token (another spelling).")
    token: SecretStr | None = Field(default=None, description="Private-app token (another spelling).")
    clientId: str | None = Field(default=None, description="authType oauth2.")
    clientSecret: SecretStr | None = Field(default=None, description="authType oauth2.")
    refreshToken: SecretStr | None = Field(default=None, description="authType oauth2.")


class HubSpotEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="Default https://api.hubapi.com.")
    portalId: str | int | None = Field(default=None, description="The account (portal) id: record URLs, limit scope.")
    uiDomain: str | None = Field(default=None, description="e.g. app-eu1.hubspot.com (learnt when unset).")
    timeZone: str | None = Field(default=None, description="IANA name; learnt from the account when unset.")


class HubSpotSettings(VendorSettings):
    credentials: HubSpotCredentials = Field(default_factory=HubSpotCredentials)
    endpoints: HubSpotEndpoints = Field(default_factory=HubSpotEndpoints)


_PRIVATE_APP = Bearer(("apiKey", "accessToken", "token"))


def _object_body(adapter: Any, properties: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    associations = properties.pop("associations", [])  # the create schema requires the key
    return {"properties": properties, "associations": associations}


SPEC = VendorSpec(
    auth={
        "apikey": _PRIVATE_APP,  # HubSpot retired API keys: the seed's apikey is a private-app token
        "private_app": _PRIVATE_APP,
        "bearer": _PRIVATE_APP,
        "oauth2": OAuth2Refresh("/oauth/v1/token"),
    },
    default_auth="private_app",
    objects={name: CreateCall(f"/crm/v3/objects/{path}", body=_object_body) for name, path in OBJECTS.items()},
    test_call=ConnectionCheck("/account-info/v3/details"),
)


class HubSpotAdapter(SpecAdapter):
    info = AdapterInfo(
        type="hubspot",
        display_name="HubSpot",
        display_name_zh="HubSpot",
        object_types=("contact", "ticket"),
        auth_types=("apikey", "private_app", "bearer", "oauth2"),
        rate_limit=RateLimit(requests=100, perSeconds=10, concurrency=16),
        idempotency="contacts de-duplicate on email (409 → existing contact); tickets: ledger only",
        docs="https://developers.hubspot.com/docs/api-reference/latest/crm/objects",
    )
    settings_model = HubSpotSettings
    spec = SPEC
    default_base_url = "https://api.hubapi.com"
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "ticket.hs_ticket_priority": PRIORITY_UPPER,
    }

    def __init__(self, integration_id: str, config: IntegrationConfig) -> None:
        super().__init__(integration_id, config)
        self._account: dict[str, Any] | None = None
        self._account_lock: asyncio.Lock | None = None

    @property
    def oauth(self) -> bool:
        return self.config.authType == "oauth2"

    # -- wiring ------------------------------------------------------------------------------

    @property
    def limit_scope(self) -> str:
        """HubSpot counts per account: ``endpoints.portalId`` when set, else the app's credential."""
        portal = self.config.endpoints.get("portalId")
        if portal:
            return f"hubspot:portal:{portal}"
        if self.oauth:
            return scope_of_secret("hubspot", self.config.secret("clientId") + self.config.secret("refreshToken"))
        return scope_of_secret("hubspot", self.config.secret("apiKey", "accessToken", "token"))

    def classifier(self) -> Classifier:
        def classify(resp: Response) -> DeliveryError | None:
            observe_window(resp.headers, self.current_limiter())
            return self.classify(resp)

        return classify

    def classify(self, resp: Response) -> DeliveryError | None:
        """HubSpot's ``{status, message, correlationId, category}`` errors → the taxonomy."""
        status = resp.status
        if 200 <= status < 300:
            return None
        body = resp.json()
        body = body if isinstance(body, dict) else {}
        category = str(body.get("category") or body.get("errorType") or f"http_{status}")
        message = str(body.get("message") or resp.text[:500] or f"HTTP {status}")
        if body.get("correlationId"):
            message += f" (correlationId {body['correlationId']})"
        message = redact(message)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if status == 429:
            policy = str(body.get("policyName") or "")
            if policy == "DAILY":
                wait = seconds_until_midnight(self._time_zone())
                return QuotaExhaustedError(message, code="DAILY", status=status, retry_after=wait)
            return RateLimitedError(message, code=policy or "http_429", status=status, retry_after=retry_after)
        if status == 401:
            error_type = TokenExpiredError if self.oauth else AuthError
            return error_type(message, code=category, status=status)
        if status == 403:
            return AuthError(message, code=category, status=status)
        if status in RETRYABLE_STATUSES or status >= 500:
            if retry_after is None and status == 423:
                retry_after = 2.0  # HubSpot: a locked record frees up within a couple of seconds
            return RetryableError(message, code=category, status=status, retry_after=retry_after)
        return PermanentError(message, code=category, status=status)

    # -- records -----------------------------------------------------------------------------

    def build_body(
        self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext | None = None
    ) -> dict[str, Any]:
        return dict(_object_body(self, self.render(event, object_type, ctx), event, ctx or DeliveryContext("")))

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        if self._account is None and not self.config.endpoints.get("timeZone"):
            await self.account()  # the daily quota resets at the account's midnight: learn its zone
        call = self.create_call(object_type)
        body = self.request_body(call, event, object_type, ctx)
        try:
            response = await self.http.send(Request(call.method, call.path, json=body))
        except PermanentError as exc:
            email = body["properties"].get("email")
            if exc.status != 409 or object_type != "contact" or not email:
                raise
            existing = await self._contact_by_email(str(email))
            if existing is None and (match := _EXISTING_ID.search(exc.message)) is not None:
                existing = await self._delivered({"id": match.group(1)}, "contact", existing=True)
            if existing is None:
                raise
            return existing
        return await self._delivered(response.json(), object_type)

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        if object_type != "contact":
            return None
        email = self.render(event, object_type, ctx).get("email")
        return await self._contact_by_email(str(email)) if email else None

    async def _contact_by_email(self, email: str) -> Delivered | None:
        path = f"/crm/v3/objects/contacts/{quote(email, safe='@')}"
        try:
            response = await self.http.send(Request("GET", path, params={"idProperty": "email"}))
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return await self._delivered(response.json(), "contact", existing=True)

    async def _delivered(self, body: Any, object_type: str, existing: bool = False) -> Delivered:
        if not isinstance(body, dict) or not body.get("id"):
            raise RetryableError(f"HubSpot answered without an object id: {body!r:.200}", code="bad_response")
        record_id = str(body["id"])
        detail = {"existing": True} if existing else {}
        return Delivered(record_id, await self._record_url(object_type, record_id), detail)

    # -- account -----------------------------------------------------------------------------

    async def _record_url(self, object_type: str, record_id: str) -> str | None:
        portal = self.config.endpoints.get("portalId")
        ui_domain = self.config.endpoints.get("uiDomain")
        if not portal:
            account = await self.account()
            portal, ui_domain = account.get("portalId"), ui_domain or account.get("uiDomain")
        if not portal:
            return None
        host = ui_domain or "app.hubspot.com"
        return f"https://{host}/contacts/{portal}/record/{OBJECT_TYPE_IDS[object_type]}/{record_id}"

    async def account(self, *, strict: bool = False) -> dict[str, Any]:
        """``/account-info/v3/details`` (portal id, time zone, UI domain), fetched once."""
        if self._account is not None and not strict:
            return self._account
        if self._account_lock is None:
            self._account_lock = asyncio.Lock()
        async with self._account_lock:
            if self._account is not None and not strict:
                return self._account
            try:
                response = await self.http.send(Request("GET", "/account-info/v3/details"))
                body = response.json()
                self._account = body if isinstance(body, dict) else {}
            except DeliveryError:
                self._account = {}  # the URL is a nicety: never fail a delivery over it
                if strict:
                    raise
            return self._account

    def _time_zone(self) -> str | None:
        zone = self.config.endpoints.get("timeZone") or (self._account or {}).get("timeZone")
        return str(zone) if zone else None
