"""Zoho CRM: Leads, Cases and Tasks through the records API (v8; v2 and v6 take the same shapes).

- Auth: a self-client / server-based app's long-lived refresh token, traded at the data centre's
  accounts server: ``POST {accounts}/oauth/v2/token`` (``grant_type=refresh_token``, client id and
  secret; form-encoded) → ``access_token``, ``expires_in`` (3,600 s) and ``api_domain``. Data
  centres: ``com`` (US, default), ``eu``, ``in``, ``com.cn``, ``com.au``, ``jp``, ``ca``
  (``accounts.zohocloud.ca``), ``sa``; a token from one DC is refused by another. API calls go
  to the token's ``api_domain`` (``endpoints.apiDomain`` overrides) with ``Authorization:
  Zoho-oauthtoken <token>`` — not ``Bearer``. A bad refresh token is answered ``200
  {"error": "invalid_code"}``: an auth error. At most 10 access tokens per refresh token per 10
  minutes, so tokens are cached for their lifetime and refreshed only on ``INVALID_TOKEN``.
- Create: ``POST /crm/v8/{Leads|Cases|Tasks}`` with ``{"data": [record], "trigger": [...]}``
  (``trigger`` only when configured: omitted, Zoho runs the module's workflows). Leads need
  ``Last_Name``, Cases ``Subject`` and ``Case_Origin``, Tasks ``Subject`` (layouts may add more).
- Per-record status: every answer (201, 200, 202, 207 or 400) is ``{"data": [{"code", "status",
  "message", "details"}]}``; ``status: "error"`` is a failure even inside a 2xx. Top-level errors
  are ``{"code", "status": "error", "message", "details"}``: 401 ``INVALID_TOKEN`` (refresh once),
  ``OAUTH_SCOPE_MISMATCH`` / 403 ``NO_PERMISSION`` (auth), ``INTERNAL_ERROR`` / 5xx (retry), 429.
- Idempotency: none native. With ``idempotencyField`` (a single-line field; one name, or one per
  object type) the key is written to it and the call is an upsert (``POST …/upsert``,
  ``duplicate_check_fields: [field]``): a redelivery updates the same record, and an ambiguous
  create is found again by ``GET …/search?criteria=(field:equals:key)`` (the search index may lag
  a write by a moment: ``None`` then means "can't tell yet"; a retried upsert is safe anyway). ``duplicateCheckFields``
  upserts on business fields (``Email``). A plain insert that hits a unique field answers
  ``DUPLICATE_DATA`` with the existing record's id, which is taken as the delivered record.
- Limits: API credits per rolling 24 h by edition (Free 5,000; paid editions 50,000 + 250–2,000
  per licence), 1 credit per insert/upsert call; concurrent calls per app by edition (Free 5,
  Standard 10, Professional 15, Enterprise 20, Ultimate 25) → 429 ``TOO_MANY_REQUESTS``. We pace
  at the paid editions' base 50,000 credits / 24 h with 10 in flight. A 429 that reports a spent
  credit allowance (code ``LIMIT_EXCEEDED`` / ``LIMIT_REACHED`` or a message naming credits) is a
  quota, retried after 15 minutes (the window rolls, nothing resets at a fixed time); Zoho sends
  no ``Retry-After``, so a plain 429 backs off one second unless it does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from octopus_crm.adapters.auth import Auth, Token, TokenAuth, oauth2_token
from octopus_crm.adapters.base import AdapterInfo, Delivered, DeliveryContext
from octopus_crm.adapters.http import Classifier, HttpClient, Request, Response, classify_status, parse_retry_after
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import CreateCall, OAuth2Refresh, SpecAdapter, VendorSpec, at_path
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm.core.redaction import redact

__all__ = ["ZohoAdapter", "classify", "data_centre"]

# Data centre → (accounts server, default API domain).
DATA_CENTRES = {
    "com": ("https://accounts.zoho.com", "https://www.zohoapis.com"),
    "eu": ("https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    "in": ("https://accounts.zoho.in", "https://www.zohoapis.in"),
    "com.cn": ("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    "com.au": ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    "jp": ("https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    "ca": ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    "sa": ("https://accounts.zoho.sa", "https://www.zohoapis.sa"),
}
DC_ALIASES = {"us": "com", "cn": "com.cn", "china": "com.cn", "au": "com.au"}
MODULES = {"lead": "Leads", "case": "Cases", "task": "Tasks"}
VERSIONS = ("v2", "v2.1", "v3", "v4", "v5", "v6", "v7", "v8")
TOKEN_PATH = "/oauth/v2/token"
KEY_MAX = 255  # a single-line field's maximum length
QUOTA_RETRY_AFTER = 900.0
TOKEN_WINDOW = 600.0
_RETRYABLE = frozenset({"INTERNAL_ERROR"})
_AUTH = frozenset({"OAUTH_SCOPE_MISMATCH", "NO_PERMISSION", "AUTHENTICATION_FAILURE", "INVALID_CLIENT"})
_QUOTA = frozenset({"LIMIT_EXCEEDED", "LIMIT_REACHED"})
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

PRIORITY_CASE = {"low": "Low", "medium": "Medium", "high": "High", "urgent": "High"}
PRIORITY_TASK = {"low": "Low", "medium": "Normal", "high": "High", "urgent": "Highest"}
_CHAT = ("wechat", "wework", "whatsapp", "telegram", "line", "slack", "messenger", "chat")
LEAD_SOURCE = {**dict.fromkeys(_CHAT, "Chat"), "twitter": "X (Twitter)", "facebook": "Facebook"}
CASE_ORIGIN = {"email": "Email", "phone": "Phone", "web": "Web", **dict.fromkeys(_CHAT, "Web")}


def data_centre(value: Any) -> str:
    """A data centre as written (``eu``, ``.com.cn``, ``cn``) → its key in :data:`DATA_CENTRES`."""
    name = str(value or "com").strip().lower().lstrip(".")
    name = DC_ALIASES.get(name, name)
    if name not in DATA_CENTRES:
        raise ConfigError(
            f"endpoints.dataCenter must be one of {', '.join(DATA_CENTRES)} (got {value!r})", code="bad_dc"
        )
    return name


def _record_error(item: Mapping[str, Any], status: int, retry_after: float | None) -> DeliveryError:
    code = str(item.get("code") or f"http_{status}")
    details = item.get("details")
    where = f" [{details.get('api_name')}]" if isinstance(details, dict) and details.get("api_name") else ""
    message = redact(f"{code}: {item.get('message') or ''}{where}")
    label = f"zoho_{code}"
    if code == "INVALID_TOKEN" or (status == 401 and code not in _AUTH):
        return TokenExpiredError(message, code=label, status=status)
    if status == 429 or code == "TOO_MANY_REQUESTS":
        credits = "credit" in message.lower()
        if code in _QUOTA or credits:
            return QuotaExhaustedError(message, code=label, status=status, retry_after=retry_after or QUOTA_RETRY_AFTER)
        return RateLimitedError(message, code=label, status=status, retry_after=retry_after)
    if code in _AUTH or status == 403:
        return AuthError(message, code=label, status=status)
    if code in _RETRYABLE or status >= 500:
        return RetryableError(message, code=label, status=status, retry_after=retry_after)
    return PermanentError(message, code=label, status=status)


def _duplicate_id(item: Mapping[str, Any]) -> str | None:
    """The existing record a ``DUPLICATE_DATA`` answer names (v2: ``details.id``; v8: also
    ``details.duplicate_record.id``)."""
    if item.get("code") != "DUPLICATE_DATA":
        return None
    found = at_path(item, ("details", "duplicate_record", "id")) or at_path(item, ("details", "id"))
    return str(found) if isinstance(found, (str, int)) and found else None


def classify(response: Response) -> DeliveryError | None:
    """Zoho's answers → the taxonomy: the first record's ``status`` decides, even inside a 2xx."""
    body = response.json()
    items = body.get("data") if isinstance(body, dict) else None
    item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else body
    if not isinstance(item, dict) or "code" not in item:
        return classify_status(response)
    if response.ok and item.get("status") != "error":
        return None
    if _duplicate_id(item) is not None:
        return None  # a unique field already holds this record: delivered before (ZohoAdapter._delivered)
    return _record_error(item, response.status, parse_retry_after(response.headers.get("Retry-After")))


class ZohoCredentials(Credentials):
    clientId: str | None = alias("clientId", "client_id", description="OAuth client id (required).")
    clientSecret: SecretStr | None = alias(
        "clientSecret", "client_secret", description="OAuth client secret (required)."
    )
    refreshToken: SecretStr | None = alias("refreshToken", "refresh_token", description="Refresh token (required).")


class ZohoEndpoints(Endpoints):
    dataCenter: str | None = alias("dataCenter", "dc", "domain", description="com (default), eu, in, com.cn, …")
    accountsUrl: Url | None = Field(default=None, description="Accounts server (default: by data centre).")
    apiDomain: Url | None = alias("apiDomain", "baseUrl", description="API domain (default: the token's api_domain).")
    apiVersion: str | None = Field(default=None, description="v8 (default), v2 … v7.")


class ZohoSettings(VendorSettings):
    credentials: ZohoCredentials = Field(default_factory=ZohoCredentials)
    endpoints: ZohoEndpoints = Field(default_factory=ZohoEndpoints)
    idempotencyField: str | dict[str, str] | None = Field(
        default=None, description="Field holding the idempotency key (upsert on it): a name, or one per object."
    )
    duplicateCheckFields: list[str] | dict[str, list[str]] | None = Field(
        default=None, description="Upsert on these fields (e.g. ['Email']), or per object type."
    )
    trigger: list[str] | None = Field(default=None, description="workflow, approval, blueprint; [] runs none.")


def _body(adapter: ZohoAdapter, fields: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    return adapter.records_body(fields)


SPEC = VendorSpec(
    # Token URL by data centre, API URLs by the token's api_domain: wired in ZohoAdapter.make_auth.
    auth={
        "oauth2": OAuth2Refresh(
            TOKEN_PATH,
            client_id=("clientId", "client_id"),
            client_secret=("clientSecret", "client_secret"),
            refresh_token=("refreshToken", "refresh_token"),
            scheme="Zoho-oauthtoken",
        )
    },
    default_auth="oauth2",
    objects={name: CreateCall(module, body=_body) for name, module in MODULES.items()},
)


class ZohoAdapter(SpecAdapter):
    info = AdapterInfo(
        type="zoho",
        display_name="Zoho CRM",
        display_name_zh="Zoho CRM",
        object_types=("lead", "case", "task"),
        auth_types=("oauth2",),
        rate_limit=RateLimit(requests=50000, perSeconds=86400, concurrency=10),
        aliases=("zohocrm", "zoho-crm"),
        idempotency="upsert on idempotencyField holding the idempotency key, found again by search;"
        " DUPLICATE_DATA → the existing record",
        docs="https://www.zoho.com/crm/developer/docs/api/v8/insert-records.html",
    )
    settings_model = ZohoSettings
    spec = SPEC
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "lead.Lead_Source": LEAD_SOURCE,
        "case.Priority": PRIORITY_CASE,
        "case.Case_Origin": CASE_ORIGIN,
        "task.Priority": PRIORITY_TASK,
    }

    def validate_config(self) -> None:
        super().validate_config()
        _ = self.accounts_url, self.api_version
        for object_type in self.object_types():
            field = self.idempotency_field(object_type)
            if field is not None and not _API_NAME.match(field):
                raise ConfigError(f"idempotencyField {field!r} is not a field API name", code="bad_field")

    @property
    def dc(self) -> str:
        endpoints = self.config.endpoints
        return data_centre(endpoints.get("dataCenter") or endpoints.get("dc") or endpoints.get("domain"))

    @property
    def accounts_url(self) -> str:
        return str(self.config.endpoints.get("accountsUrl") or DATA_CENTRES[self.dc][0]).rstrip("/")

    @property
    def api_version(self) -> str:
        version = str(self.config.endpoints.get("apiVersion") or "v8").strip()
        version = version if version.startswith("v") else f"v{version}"
        if version not in VERSIONS:
            raise ConfigError(f"endpoints.apiVersion must be one of {', '.join(VERSIONS)}", code="bad_api_version")
        return version

    def _configured_domain(self) -> str:
        return str(self.config.endpoints.get("apiDomain") or self.config.endpoints.get("baseUrl") or "").rstrip("/")

    @property
    def base_url(self) -> str:
        return f"{self._configured_domain() or DATA_CENTRES[self.dc][1]}/crm/{self.api_version}"

    def api_root(self, token: Token | None) -> str:
        domain = self._configured_domain() or str((token.extra if token else {}).get("api_domain") or "")
        return f"{(domain or DATA_CENTRES[self.dc][1]).rstrip('/')}/crm/{self.api_version}"

    def classifier(self) -> Classifier:
        return classify

    def make_auth(self) -> Auth:
        scheme = self.auth_scheme
        assert isinstance(scheme, OAuth2Refresh)
        url = f"{self.accounts_url}{TOKEN_PATH}"

        async def fetch(http: HttpClient) -> Token:
            try:
                return await oauth2_token(http, url, scheme.form(self.config))
            except AuthError as exc:  # ≤ 10 tokens per refresh token per 10 min, then blocked for the window
                if "too many requests" not in exc.message.lower():
                    raise
                raise RateLimitedError(exc.message, code="token_rate_limited", retry_after=TOKEN_WINDOW) from None

        def place(request: Request, token: Token) -> None:
            scheme.place(request, token)
            if not request.url.startswith(("http://", "https://")):  # data calls go to the token's DC
                request.url = f"{self.api_root(token)}/{request.url.lstrip('/')}"

        return TokenAuth(fetch, place=place)

    async def test_connection(self) -> None:
        module = MODULES[next(iter(self.templates), "lead")]  # a one-record read of a mapped module
        await self.http.send(Request("GET", module, params={"fields": "id", "per_page": "1"}, paced=False))

    # -- records -----------------------------------------------------------------------------

    def idempotency_field(self, object_type: str) -> str | None:
        setting = self.config.extra("idempotencyField")
        if isinstance(setting, dict):
            setting = setting.get(object_type)
        return str(setting) if setting else None

    def duplicate_check_fields(self, object_type: str) -> list[str]:
        setting = self.config.extra("duplicateCheckFields") or []
        if isinstance(setting, dict):
            setting = setting.get(object_type) or []
        fields = [str(f) for f in setting]
        key_field = self.idempotency_field(object_type)
        return [key_field, *(f for f in fields if f != key_field)] if key_field else fields

    def records_body(self, fields: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"data": [fields]}
        trigger = self.config.extra("trigger")
        if trigger is not None:
            body["trigger"] = list(trigger)
        return body

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        call = self.create_call(object_type)
        body = self.request_body(call, event, object_type, ctx)
        record = body["data"][0]
        if (key_field := self.idempotency_field(object_type)) is not None:
            record[key_field] = _key_value(ctx.idempotency_key)
        path = call.path
        if checks := self.duplicate_check_fields(object_type):
            path, body["duplicate_check_fields"] = f"{call.path}/upsert", checks
        response = await self.http.send(Request("POST", path, json=body))
        return self._delivered(object_type, response)

    def _delivered(self, object_type: str, response: Response) -> Delivered:
        item = at_path(response.json(), ("data", 0))
        if not isinstance(item, dict):
            raise PermanentError(f"Zoho answered HTTP {response.status} without a record", code="bad_response")
        record_id = _duplicate_id(item) or at_path(item, ("details", "id"))
        if not isinstance(record_id, (str, int)) or not record_id:
            raise PermanentError(f"Zoho answered without a record id: {str(item)[:200]}", code="bad_response")
        detail = {k: item[k] for k in ("action", "duplicate_field") if item.get(k)}
        if item.get("code") == "DUPLICATE_DATA":
            detail["duplicate"] = at_path(item, ("details", "api_name")) or True
        return Delivered(str(record_id), self.record_url(object_type, str(record_id)), detail)

    def record_url(self, object_type: str, record_id: str) -> str:
        crm = self.api_root(getattr(self.http.auth, "token", None)).split("/crm/")[0]
        crm = crm.replace("://www.zohoapis.", "://crm.zoho.") if "zohoapis." in crm else crm
        return f"{crm}/crm/tab/{MODULES[object_type]}/{record_id}"

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        key_field = self.idempotency_field(object_type)
        if key_field is None:
            return None
        value = _key_value(ctx.idempotency_key).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        params = {"criteria": f"({key_field}:equals:{value})", "fields": "id"}
        response = await self.http.send(Request("GET", f"{MODULES[object_type]}/search", params=params))
        found = at_path(response.json(), ("data", 0, "id"))  # 204: no match
        if not isinstance(found, (str, int)) or not found:
            return None
        return Delivered(str(found), self.record_url(object_type, str(found)))


def _key_value(idempotency_key: str) -> str:
    if len(idempotency_key) <= KEY_MAX:
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()
