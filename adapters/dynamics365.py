"""Microsoft Dynamics 365 / Dataverse: leads and incidents (cases) through Web API v9.2.

- Auth: Microsoft Entra ID client credentials (an app registration with an *application user* in
  the environment): ``POST {loginUrl}/{tenantId}/oauth2/v2.0/token`` form-encoded with
  ``scope={orgUrl}/.default`` → ``access_token``, ``expires_in``; ``Authorization: Bearer``.
  ``endpoints.loginUrl`` defaults to ``https://login.microsoftonline.com`` (sovereign clouds, e.g.
  21Vianet's ``login.chinacloudapi.cn``, set it); ``endpoints.tokenUrl`` / ``scope`` override both.
- API root ``{orgUrl}/api/data/v9.2/`` (``endpoints.baseUrl`` is the environment URL,
  ``https://{org}.crm{n}.dynamics.com``; a URL that already ends in ``/api/data/vX.Y`` is accepted).
  Every call sends ``Accept: application/json``, ``OData-MaxVersion: 4.0``, ``OData-Version: 4.0``.
- Create: ``POST /leads`` or ``/incidents`` → ``204`` with the new row's URI in ``OData-EntityId``
  (``…/leads(<guid>)``); with ``returnRepresentation`` the call sends ``Prefer:
  return=representation`` and reads the id from the ``201`` body. An incident needs its customer
  (``customerid``, SystemRequired): the mapping's ``customerid`` (``account:<guid>``,
  ``contact:<guid>``, ``/accounts(<guid>)`` or a bare account guid) becomes
  ``customerid_account@odata.bind`` / ``customerid_contact@odata.bind``.
- Idempotency: none native. With ``alternateKey`` (a column with an alternate key on the table;
  one name, or one per object type) the row is created by ``PATCH /leads(<column>='<key>')``
  with ``If-None-Match: *`` (create only, never overwrite): a redelivery gets ``412`` and the
  existing row is read back by the same key (``GET …?$select=leadid``). Without it: the ledger.
- Errors: ``{"error": {"code": "0x8004…", "message": …}}``; the code is unrelated to the HTTP
  status (400, 401, 403 ``PrivilegeDenied``, 404, 412, 413, 429, 5xx), both are kept.
- Limits (service protection, per user per web server, 5-minute sliding window): 6,000 requests
  (``0x80072322``), 1,200 s combined execution time (``0x80072321``) and 52 concurrent requests
  (``0x80072326``), each answered with ``429`` + ``Retry-After`` (seconds). We pace at
  6,000 / 300 s with 4 in flight: 4 concurrent calls cannot spend more than 1,200 s of execution
  time in 300 s. The ``x-ms-ratelimit-*-remaining-xrm-requests`` headers are informational.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import Field, SecretStr

from octopus_crm.adapters.auth import Auth, Token, TokenAuth, oauth2_token
from octopus_crm.adapters.base import AdapterInfo, Delivered, DeliveryContext
from octopus_crm.adapters.http import Request, Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    ConnectionCheck,
    CreateCall,
    Errors,
    OAuth2ClientCredentials,
    SpecAdapter,
    VendorSpec,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError, PermanentError

__all__ = ["Dynamics365Adapter", "key_value"]

LOGIN_URL = "https://login.microsoftonline.com"
TOKEN_PATH = "/{tenantId}/oauth2/v2.0/token"
API_VERSION = "v9.2"
# "case" is the routing vocabulary's name (and Salesforce's) for the incident table.
TABLES = {"lead": "lead", "case": "incident", "incident": "incident"}
ENTITY_SETS = {name: f"{table}s" for name, table in TABLES.items()}
GUID = r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
KEY_MAX = 100  # a string column's default maximum length
ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}

_VERSION = re.compile(r"^v?(\d+\.\d+)$")
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
_CUSTOMER = re.compile(rf"^(?:(account|contact)s?:|/(account|contact)s\()?{GUID}\)?$", re.I)

# Our vocabulary onto the out-of-the-box option sets (integers on the wire).
PRIORITY_CODE = {"low": 3, "medium": 2, "high": 1, "urgent": 1}  # incident.prioritycode High/Normal/Low
LEAD_QUALITY = {"low": 3, "medium": 2, "high": 1, "urgent": 1}  # lead.leadqualitycode Hot/Warm/Cold
CASE_ORIGIN = {"phone": 1, "email": 2, "web": 3, "facebook": 2483, "twitter": 3986}
CASE_TYPE = {"question": 1, "problem": 2, "request": 3, "技术支持": 2, "客户投诉": 2, "产品咨询": 1, "客户服务": 3}
_CASE_MAPS = {"prioritycode": PRIORITY_CODE, "caseorigincode": CASE_ORIGIN, "casetypecode": CASE_TYPE}


def key_value(idempotency_key: str) -> str:
    """The alternate-key value for an idempotency key: as written, or its hash when too long."""
    if len(idempotency_key) <= KEY_MAX:
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _error_message(response: Response) -> str:
    code, message = response.field("error", "code"), response.field("error", "message")
    if not code and not message:
        return response.text[:500]
    return f"{code or 'error'}: {message or ''}".strip()


def _customer(value: Any) -> tuple[str, str]:
    """``customerid`` as written in a mapping → (navigation property, ``/entityset(guid)``)."""
    match = _CUSTOMER.match(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise PermanentError(
            "incident customerid must be account:<guid>, contact:<guid> or /accounts(<guid>)", code="bad_customer"
        )
    kind = (match.group(1) or match.group(2) or "account").lower()
    return f"customerid_{kind}@odata.bind", f"/{kind}s({match.group(3)})"


def _body(adapter: Any, fields: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    body = dict(fields)
    if "customerid" in body:
        name, target = _customer(body.pop("customerid"))
        body[name] = target
    return body


class DynamicsCredentials(Credentials):
    tenantId: str | None = alias("tenantId", "tenant_id", "tenant", description="Entra ID tenant (required).")
    clientId: str | None = alias("clientId", "client_id", "applicationId", description="App (client) id (required).")
    clientSecret: SecretStr | None = alias("clientSecret", "client_secret", description="Client secret (required).")


class DynamicsEndpoints(Endpoints):
    baseUrl: Url | None = alias(
        "baseUrl", "orgUrl", "environmentUrl", "resource", description="https://<org>.crm.dynamics.com (required)."
    )
    loginUrl: Url | None = Field(default=None, description="Entra ID authority (default login.microsoftonline.com).")
    tokenUrl: Url | None = Field(default=None, description="Full token endpoint (overrides loginUrl).")
    scope: str | None = Field(default=None, description="Token scope (default <baseUrl>/.default).")
    apiVersion: str | None = Field(default=None, description="Web API version (default v9.2).")
    alternateKey: str | dict[str, str] | None = Field(
        default=None, description="Column holding the idempotency key (alternate key): a name, or one per object."
    )
    returnRepresentation: bool = Field(default=False, description="Prefer: return=representation on create.")


class DynamicsSettings(VendorSettings):
    credentials: DynamicsCredentials = Field(default_factory=DynamicsCredentials)
    endpoints: DynamicsEndpoints = Field(default_factory=DynamicsEndpoints)
    alternateKey: str | dict[str, str] | None = Field(default=None, description="As endpoints.alternateKey.")


SPEC = VendorSpec(
    # The token URL and scope depend on the tenant and the environment: built in make_auth.
    auth={
        "oauth2": OAuth2ClientCredentials(
            TOKEN_PATH,
            client_id=("clientId", "client_id", "applicationId"),
            client_secret=("clientSecret", "client_secret"),
        )
    },
    default_auth="oauth2",
    # Creates are run by Dynamics365Adapter.create: POST, or a create-only PATCH by alternate key.
    objects={name: CreateCall(entity_set, body=_body) for name, entity_set in ENTITY_SETS.items()},
    errors=Errors(message=_error_message),
    test_call=ConnectionCheck("WhoAmI"),
    headers=ODATA_HEADERS,
)


class Dynamics365Adapter(SpecAdapter):
    info = AdapterInfo(
        type="dynamics365",
        display_name="Microsoft Dynamics 365 (Dataverse)",
        display_name_zh="微软 Dynamics 365",
        object_types=("lead", "case"),
        auth_types=("oauth2",),
        rate_limit=RateLimit(requests=6000, perSeconds=300, concurrency=4),
        aliases=("dynamics", "dataverse", "dynamics-365"),
        idempotency="create-only upsert by alternate key (alternateKey) holding the idempotency key, read back on 412",
        docs="https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-entity-web-api",
    )
    settings_model = DynamicsSettings
    spec = SPEC
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        **{f"{name}.{column}": table for name in ("case", "incident") for column, table in _CASE_MAPS.items()},
        "lead.leadqualitycode": LEAD_QUALITY,
    }

    def validate_config(self) -> None:
        super().validate_config()
        if not self.org_url:
            raise ConfigError("endpoints.baseUrl is required (https://<org>.crm.dynamics.com)", code="missing_url")
        self.config.secret("tenantId", "tenant_id", "tenant")
        _ = self.api_version
        for name in ("case", "incident"):
            mapping = self.config.mappings.get(name)
            if isinstance(mapping, dict) and not any(k.startswith("customerid") for k in mapping):
                raise ConfigError(
                    f"mappings.{name}.customerid is required (account:<guid> or contact:<guid>)", code="missing_field"
                )
        for object_type in self.object_types():
            column = self.alternate_key(object_type)
            if column is not None and not _COLUMN.match(column):
                raise ConfigError(f"alternateKey {column!r} is not a column logical name", code="bad_field")

    def object_types(self) -> tuple[str, ...]:
        return (*self.info.object_types, "incident")

    def _endpoint(self, *names: str) -> str:
        return next((str(v) for n in names if (v := self.config.endpoints.get(n))), "").rstrip("/")

    @property
    def org_url(self) -> str:
        url = self._endpoint("baseUrl", "orgUrl", "environmentUrl", "resource")
        return url.split("/api/data/", 1)[0]

    @property
    def api_version(self) -> str:
        match = _VERSION.match(self._endpoint("apiVersion") or API_VERSION)
        if match is None:
            raise ConfigError("endpoints.apiVersion must look like v9.2", code="bad_api_version")
        return f"v{match.group(1)}"

    @property
    def base_url(self) -> str:
        return f"{self.org_url}/api/data/{self.api_version}" if self.org_url else ""

    def alternate_key(self, object_type: str) -> str | None:
        setting = self.config.endpoints.get("alternateKey") or self.config.extra("alternateKey")
        if isinstance(setting, dict):
            setting = setting.get(object_type)
        return str(setting) if setting else None

    def record_url(self, object_type: str, guid: str) -> str:
        return f"{self.org_url}/main.aspx?etn={TABLES[object_type]}&id={guid}&pagetype=entityrecord"

    def make_auth(self) -> Auth:
        tenant = self.config.secret("tenantId", "tenant_id", "tenant")
        login = self._endpoint("loginUrl") or LOGIN_URL
        url = self._endpoint("tokenUrl") or login + TOKEN_PATH.format(tenantId=quote(tenant, safe=""))
        scope = self._endpoint("scope") or f"{self.org_url}/.default"
        scheme = self.auth_scheme
        assert isinstance(scheme, OAuth2ClientCredentials)

        async def fetch(http: Any) -> Token:
            return await oauth2_token(http, url, {**scheme.form(self.config), "scope": scope})

        return TokenAuth(fetch)

    def key_path(self, object_type: str, column: str, ctx: DeliveryContext) -> str:
        literal = key_value(ctx.idempotency_key).replace("'", "''")  # OData string literal
        return f"{ENTITY_SETS[object_type]}({column}='{quote(literal, safe='')}')"

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        call = self.create_call(object_type)
        body = self.request_body(call, event, object_type, ctx)
        headers: dict[str, str] = {}
        params: dict[str, str] = {}
        if self.config.flag("returnRepresentation"):
            headers["Prefer"] = "return=representation"
            params["$select"] = f"{TABLES[object_type]}id"
        column = self.alternate_key(object_type)
        if column is None:
            response = await self.http.send(Request("POST", call.path, json=body, headers=headers, params=params))
            delivered = self._delivered(object_type, response)
            if delivered is None:
                raise PermanentError(f"Dataverse answered HTTP {response.status} without a row id", code="bad_response")
            return delivered
        body.pop(column, None)  # the key in the URL sets the column
        request = Request("PATCH", self.key_path(object_type, column, ctx), json=body, params=params)
        request.headers.update({**headers, "If-None-Match": "*"})  # create only: never overwrite a row
        try:
            response = await self.http.send(request)
        except PermanentError as exc:
            if exc.status != 412:
                raise
            found = await self.find_existing(event, object_type, ctx)  # delivered before: that row
            if found is None:
                raise
            return found
        delivered = self._delivered(object_type, response)
        return delivered or await self._must_find(event, object_type, ctx)

    def _delivered(self, object_type: str, response: Response) -> Delivered | None:
        """The row in ``OData-EntityId`` (``…/leads(<guid>)``) or, with a representation, the body."""
        found = re.search(GUID + r"\)\s*$", response.headers.get("OData-EntityId", ""))
        guid = found.group(1) if found else response.field(f"{TABLES[object_type]}id")
        if not isinstance(guid, str) or not re.fullmatch(GUID, guid):
            return None
        return Delivered(guid, self.record_url(object_type, guid))

    async def _must_find(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        found = await self.find_existing(event, object_type, ctx)
        if found is None:
            raise PermanentError(
                "Dataverse accepted the upsert but the row is not found by its key", code="bad_response"
            )
        return found

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        column = self.alternate_key(object_type)
        if column is None:
            return None
        request = Request(
            "GET", self.key_path(object_type, column, ctx), params={"$select": f"{TABLES[object_type]}id"}
        )
        try:
            response = await self.http.send(request)
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return self._delivered(object_type, response)
