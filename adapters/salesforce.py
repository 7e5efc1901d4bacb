"""Salesforce: Lead and Case through the REST sObjects API.

- Auth: OAuth 2.0 token endpoint ``{login}/services/oauth2/token``, form-encoded. Client
  credentials is the recommended server-to-server flow; the seed's username-password flow is
  still accepted. ``credentials.grantType`` picks one; without it, a config that carries
  ``username`` and ``password`` uses the password flow (password + ``securityToken`` if given)
  and anything else uses client credentials. The login URL is ``endpoints.loginUrl``, else
  ``endpoints.baseUrl``, else ``login.salesforce.com`` (``test.salesforce.com`` with
  ``sandbox: true``); client credentials needs the org's My Domain URL.
- The token answer has no ``expires_in``: the token is cached until a ``401
  INVALID_SESSION_ID``, which refreshes it once. API calls go to the ``instance_url`` the token
  came with, under ``/services/data/vXX.X/`` (``apiVersion`` "v58.0" and "58.0" both work).
- Create: ``POST /sobjects/{Lead|Case}/``. The seed's camelCase keys become API names
  (``firstName`` → ``FirstName``; ``Custom__c`` names are kept).
- Idempotency: with ``externalIdField`` (in ``endpoints`` or top-level; a name, or one per object
  type) the record is upserted by ``PATCH /sobjects/Lead/{field}/{idempotency key}``: 201
  created, 200 updated, 300 several matches. Without it there is no native key.
- Errors: a JSON array ``[{message, errorCode, fields}]``. ``403 REQUEST_LIMIT_EXCEEDED`` is the
  org's rolling 24 h allocation (``TotalRequests``, a quota) or a concurrency limit (rate
  limited); every response carries ``Sforce-Limit-Info: api-usage=used/limit``.
- Test connection: ``GET /sobjects/{Name}`` (basic info) for each mapped object. ``/limits`` is
  cheaper but needs the "View Setup and Configuration" permission, which an integration user
  rarely has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from pydantic import Field, SecretStr

from octopus_crm.adapters.auth import Auth, Token, TokenAuth, oauth2_token
from octopus_crm.adapters.base import PRIORITY_TITLE, AdapterInfo, Delivered, DeliveryContext
from octopus_crm.adapters.http import Classifier, HttpClient, Request, Response, parse_retry_after
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings
from octopus_crm.adapters.spec import CreateCall, OAuth2ClientCredentials, SpecAdapter, VendorSpec
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

__all__ = ["SalesforceAdapter", "api_field_name", "api_version"]

DEFAULT_API_VERSION = "v60.0"
LOGIN_URL = "https://login.salesforce.com"
SANDBOX_LOGIN_URL = "https://test.salesforce.com"
SOBJECTS = {"lead": "Lead", "case": "Case"}
GRANTS = ("password", "client_credentials")

# errorCodes worth another try: row lock contention and platform hiccups.
RETRYABLE_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG"})
# The 24 h allocation is rolling: calls age out gradually and no reset time is sent.
QUOTA_RETRY_AFTER = 900.0
CONCURRENCY_RETRY_AFTER = 5.0

_VERSION = re.compile(r"^v?(\d{2,3}\.\d)$")
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


def api_version(value: Any) -> str:
    """'v58.0' or '58.0' → 'v58.0'; raises :class:`ConfigError` for anything else."""
    match = _VERSION.match(str(value or DEFAULT_API_VERSION).strip())
    if not match:
        raise ConfigError(f"endpoints.apiVersion must look like 'v58.0' (got {value!r})", code="bad_api_version")
    return f"v{match.group(1)}"


def api_field_name(key: str) -> str:
    """The seed's camelCase key → the field's API name; custom ``__c`` names pass through."""
    if "__" in key or not key[:1].islower():
        return key
    return key[0].upper() + key[1:]


def api_usage(headers: Any) -> tuple[int, int] | None:
    match = _USAGE.search(str(headers.get("Sforce-Limit-Info", "")))
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class _InstanceRequest(Request):
    """A data API call: ``path`` is joined to the token's ``instance_url`` when auth is applied."""

    path: str = ""


def classify(resp: Response) -> DeliveryError | None:
    """Salesforce's status codes and ``[{message, errorCode, fields}]`` bodies → the taxonomy."""
    status = resp.status
    if 200 <= status < 300:
        return None
    body = resp.json()
    if status == 300:
        matches = ", ".join(str(m) for m in body) if isinstance(body, list) else ""
        return PermanentError(
            f"external id matches several records ({matches}); nothing was written",
            code="MULTIPLE_CHOICES",
            status=status,
        )
    errors = [e for e in (body if isinstance(body, list) else [body]) if isinstance(e, dict)]
    code = str(errors[0].get("errorCode") or f"http_{status}") if errors else f"http_{status}"
    message = redact(
        "; ".join(_describe(e) for e in errors if e.get("message") or e.get("errorCode"))
        or resp.text[:500]
        or f"HTTP {status}"
    )
    if status == 401:
        return TokenExpiredError(message, code=code, status=status)
    if code == "REQUEST_LIMIT_EXCEEDED":
        usage = api_usage(resp.headers)
        if "TotalRequests" in message or (usage is not None and usage[0] >= usage[1]):
            return QuotaExhaustedError(message, code=code, status=status, retry_after=QUOTA_RETRY_AFTER)
        return RateLimitedError(message, code=code, status=status, retry_after=CONCURRENCY_RETRY_AFTER)
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if status == 429:
        return RateLimitedError(message, code=code, status=status, retry_after=retry_after)
    if code in RETRYABLE_CODES or status >= 500 or status == 408:
        return RetryableError(message, code=code, status=status, retry_after=retry_after)
    if status == 403:
        return AuthError(message, code=code, status=status)
    return PermanentError(message, code=code, status=status)


def _describe(error: dict[str, Any]) -> str:
    fields = error.get("fields")
    fields = fields if isinstance(fields, list) else []
    suffix = f" [{', '.join(str(f) for f in fields)}]" if fields else ""
    return f"{error.get('errorCode', 'ERROR')}: {error.get('message', '')}{suffix}"


class SalesforceCredentials(Credentials):
    clientId: str | None = Field(default=None, description="Connected app consumer key (required).")
    clientSecret: SecretStr | None = Field(default=None, description="Connected app consumer secret (required).")
    username: str | None = Field(default=None, description="Password flow only.")
    password: SecretStr | None = Field(default=None, description="Password flow only.")
    securityToken: SecretStr | None = Field(default=None, description="Appended to the password (password flow).")
    grantType: str | None = Field(default=None, description="client_credentials or password (default: by the keys).")
    sandbox: bool | str | None = Field(default=None, description="Log in at test.salesforce.com.")


class SalesforceEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="The org's My Domain URL.")
    loginUrl: Url | None = Field(default=None, description="Token endpoint host (default: baseUrl, else login/test).")
    apiVersion: str | None = Field(default=None, description="e.g. v58.0 (the seed's spelling) or 58.0.")
    sandbox: bool | str | None = Field(default=None, description="Log in at test.salesforce.com.")
    externalIdField: str | dict[str, str] | None = Field(
        default=None, description="Upsert key field: one API name, or one per object type."
    )


class SalesforceSettings(VendorSettings):
    credentials: SalesforceCredentials = Field(default_factory=SalesforceCredentials)
    endpoints: SalesforceEndpoints = Field(default_factory=SalesforceEndpoints)
    externalIdField: str | dict[str, str] | None = Field(default=None, description="As endpoints.externalIdField.")


SPEC = VendorSpec(
    # Client credentials or, with credentials.grantType / username + password, the password flow:
    # both at {login}/services/oauth2/token, chosen in make_auth.
    auth={"oauth2": OAuth2ClientCredentials("/services/oauth2/token")},
    default_auth="oauth2",
    objects={name: CreateCall(f"sobjects/{sobject}/") for name, sobject in SOBJECTS.items()},
)


class SalesforceAdapter(SpecAdapter):
    info = AdapterInfo(
        type="salesforce",
        display_name="Salesforce",
        display_name_zh="Salesforce",
        object_types=("lead", "case"),
        auth_types=("oauth2",),
        # No per-second limit is documented; the org has a rolling 24 h allocation (Enterprise:
        # 100,000 + 1,000 per licence) and 25 concurrent long requests. Stay well inside both.
        rate_limit=RateLimit(requests=25, perSeconds=1, concurrency=25),
        idempotency="external-id upsert (externalIdField) keyed on the idempotency key",
        docs="https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/",
    )
    settings_model = SalesforceSettings
    spec = SPEC
    version: str
    grant: str
    auth: TokenAuth
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "case.priority": PRIORITY_TITLE,
        "case.Priority": PRIORITY_TITLE,
        "case.origin": {"email": "Email", "web": "Web", "phone": "Phone"},
    }

    def validate_config(self) -> None:
        super().validate_config()
        self.version = api_version(self.config.endpoints.get("apiVersion"))
        self.grant = self._grant()
        if self.grant == "client_credentials" and not self._explicit_login_url():
            raise ConfigError(
                "endpoints.baseUrl (the org's My Domain URL) is required for the client credentials flow",
                code="missing_url",
            )
        for object_type in self.object_types():
            field = self.external_id_field(object_type)
            if field is not None and not _FIELD.match(field):
                raise ConfigError(f"externalIdField {field!r} is not a field API name", code="bad_field")

    def _grant(self) -> str:
        grant = self.config.secret("grantType", required=False)
        if not grant:
            has_user = self.config.secret("username", required=False)
            has_password = self.config.secret("password", required=False)
            grant = "password" if has_user and has_password else "client_credentials"
        if grant not in GRANTS:
            raise ConfigError(
                f"credentials.grantType must be one of {', '.join(GRANTS)} (got {grant!r})",
                code="bad_grant_type",
            )
        if grant == "password":
            self.config.secret("username")
            self.config.secret("password")
        return grant

    def _explicit_login_url(self) -> str:
        endpoints = self.config.endpoints
        return str(endpoints.get("loginUrl") or endpoints.get("baseUrl") or "").rstrip("/")

    @property
    def login_url(self) -> str:
        default = SANDBOX_LOGIN_URL if self.config.flag("sandbox") else LOGIN_URL
        return self._explicit_login_url() or default

    def external_id_field(self, object_type: str) -> str | None:
        setting = self.config.endpoints.get("externalIdField")
        setting = setting or self.config.extra("externalIdField")
        if isinstance(setting, dict):
            setting = setting.get(object_type)
        return str(setting) if setting else None

    # -- wiring ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.login_url

    def classifier(self) -> Classifier:
        return classify

    def make_auth(self) -> Auth:
        self.auth = TokenAuth(self._fetch_token, place=self._place)
        return self.auth

    async def _fetch_token(self, http: HttpClient) -> Token:
        form = {
            "grant_type": self.grant,
            "client_id": self.config.secret("clientId"),
            "client_secret": self.config.secret("clientSecret"),
        }
        parts: tuple[str, ...] = ()
        if self.grant == "password":
            form["username"] = self.config.secret("username")
            parts = (self.config.secret("password"), self.config.secret("securityToken", required=False))
            form["password"] = "".join(parts)
        return await oauth2_token(http, f"{self.login_url}/services/oauth2/token", form, secret_parts=parts)

    def _place(self, request: Request, token: Token) -> None:
        request.headers["Authorization"] = f"Bearer {token.value}"
        if isinstance(request, _InstanceRequest):
            instance = str(token.extra.get("instance_url") or self.login_url).rstrip("/")
            request.url = f"{instance}/services/data/{self.version}/{request.path.lstrip('/')}"

    def _call(self, method: str, path: str, json: Any = None) -> _InstanceRequest:
        return _InstanceRequest(method, "", json=json, path=path)

    # -- records -----------------------------------------------------------------------------

    def build_fields(
        self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext | None = None
    ) -> dict[str, Any]:
        return {api_field_name(k): v for k, v in self.render(event, object_type, ctx).items()}

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        sobject = SOBJECTS[object_type]
        fields = self.build_fields(event, object_type, ctx)
        ext = self.external_id_field(object_type)
        if ext is None:
            response = await self.http.send(self._call("POST", f"sobjects/{sobject}/", fields))
        else:
            body = {k: v for k, v in fields.items() if k.lower() != ext.lower()}
            path = f"sobjects/{sobject}/{ext}/{quote(ctx.idempotency_key, safe='')}"
            response = await self.http.send(self._call("PATCH", path, body))
            if response.status == 204:  # API versions before 46.0 answer an update with no body
                found = await self.find_existing(event, object_type, ctx)
                if found is not None:
                    return found
        return self._delivered(response, sobject)

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        ext = self.external_id_field(object_type)
        if ext is None:
            return None
        sobject = SOBJECTS[object_type]
        path = f"sobjects/{sobject}/{ext}/{quote(ctx.idempotency_key, safe='')}?fields=Id"
        try:
            response = await self.http.send(self._call("GET", path))
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return self._delivered(response, sobject, created=False)

    def _delivered(self, response: Response, sobject: str, created: bool | None = None) -> Delivered:
        body = response.json()
        if not isinstance(body, dict) or not (body.get("id") or body.get("Id")):
            raise RetryableError(
                f"unexpected answer to a {sobject} call: HTTP {response.status}",
                code="bad_response",
            )
        if body.get("success") is False:
            raise PermanentError(redact(str(body.get("errors"))), code="not_success")
        record_id = str(body.get("id") or body.get("Id"))
        parts = urlsplit(response.url)
        instance = f"{parts.scheme}://{parts.netloc}" if parts.netloc else self.login_url
        detail: dict[str, Any] = {"sobject": sobject}
        if created is None:
            created = bool(body.get("created", True))
        detail["created"] = created
        if (usage := api_usage(response.headers)) is not None:
            detail["apiUsage"] = {"used": usage[0], "limit": usage[1]}
        return Delivered(record_id, f"{instance}/lightning/r/{sobject}/{record_id}/view", detail)

    async def test_connection(self) -> None:
        for object_type in self.templates or self.info.object_types[:1]:
            request = self._call("GET", f"sobjects/{SOBJECTS[object_type]}")  # describe: a read
            request.paced = False
            await self.http.send(request)
