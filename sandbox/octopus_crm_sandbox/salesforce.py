"""A Salesforce org: OAuth token endpoint, sObject create / upsert, limits, describe.

- ``POST /services/oauth2/token`` takes form-encoded ``password`` and ``client_credentials``
  grants and answers like Salesforce (``access_token``, ``instance_url``, no ``expires_in``), or
  ``{"error": "invalid_grant" | "invalid_client_id" | "invalid_client" | "unsupported_grant_type",
  "error_description"}`` with 400. A JSON body (the seed's axios call) is not a grant.
- Data calls need ``Authorization: Bearer``; an unknown or expired token gets ``401
  [{"errorCode": "INVALID_SESSION_ID"}]``. Tokens live ``token_ttl`` seconds.
- Bodies are checked against the standard Lead and Case fields below (plus ``custom_fields``):
  unknown field → ``INVALID_FIELD``, missing required → ``REQUIRED_FIELD_MISSING``, too long →
  ``STRING_TOO_LONG``, bad restricted picklist value → ``INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST``
  (Case.Priority is treated as restricted, as many orgs configure it), bad e-mail →
  ``INVALID_EMAIL_ADDRESS``. Field names match case-insensitively, as in Salesforce.
- ``PATCH /sobjects/{Object}/{ExternalIdField}/{value}`` upserts (201 / 200 / 300).
- Over the short-window ``rate_limit``, or past ``api_limit`` calls in total, the answer is ``403
  [{"errorCode": "REQUEST_LIMIT_EXCEEDED"}]`` (Salesforce never sends 429); every data response
  carries ``Sforce-Limit-Info: api-usage=n/limit``.

The create envelope (``POST /services/data/{version}/sobjects/{Lead|Case}/``) comes from the
adapter's spec (sandbox/octopus_crm_sandbox/specfake.py); the grants, upsert, reads and describe
are Salesforce's own routes. sObject schemas are per org (no published spec), so the field checks
below stand in for an org's describe.
"""

from __future__ import annotations

import base64
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from aiohttp import web

from octopus_crm.adapters.salesforce import SOBJECTS
from octopus_crm.adapters.salesforce import SPEC as SALESFORCE
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, Refusal, SpecFake

__all__ = ["SalesforceFake"]

_VERSION = re.compile(r"^v(\d{2,3})\.0$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ID_CHARS = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Field:
    label: str
    type: str = "string"  # string, textarea, email, phone, picklist, int, reference, id
    length: int = 255
    required: bool = False
    createable: bool = True
    values: tuple[str, ...] = ()
    restricted: bool = False
    default: str | None = None
    external_id: bool = False


_LEAD_STATUS = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)
STANDARD_FIELDS: dict[str, dict[str, Field]] = {
    "Lead": {
        "Id": Field("Lead ID", "id", 18, createable=False),
        "FirstName": Field("First Name", length=40),
        "LastName": Field("Last Name", length=80, required=True),
        "Salutation": Field("Salutation", "picklist", values=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.")),
        "Company": Field("Company", length=255, required=True),
        "Title": Field("Title", length=128),
        "Email": Field("Email", "email", 80),
        "Phone": Field("Phone", "phone", 40),
        "MobilePhone": Field("Mobile Phone", "phone", 40),
        "Website": Field("Website", "url", 255),
        "LeadSource": Field(
            "Lead Source",
            "picklist",
            values=("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"),
        ),
        "Status": Field("Lead Status", "picklist", values=_LEAD_STATUS, restricted=True, default=_LEAD_STATUS[0]),
        "Rating": Field("Rating", "picklist", values=("Hot", "Warm", "Cold"), restricted=True),
        "Industry": Field("Industry", "picklist", values=("Technology", "Retail", "Other")),
        "Description": Field("Description", "textarea", 32000),
        "City": Field("City", length=40),
        "Country": Field("Country", length=80),
        "NumberOfEmployees": Field("Employees", "int"),
        "OwnerId": Field("Owner ID", "reference", 18),
    },
    "Case": {
        "Id": Field("Case ID", "id", 18, createable=False),
        "CaseNumber": Field("Case Number", createable=False, length=30),
        "Subject": Field("Subject", length=255),
        "Description": Field("Description", "textarea", 32000),
        "Priority": Field(
            "Priority",
            "picklist",
            values=("High", "Medium", "Low"),
            restricted=True,
            default="Medium",
        ),
        "Origin": Field("Case Origin", "picklist", values=("Phone", "Email", "Web")),
        "Status": Field(
            "Status",
            "picklist",
            values=("New", "Working", "Escalated", "Closed"),
            restricted=True,
            default="New",
        ),
        "Type": Field("Type", "picklist", values=("Question", "Problem", "Feature Request")),
        "Reason": Field("Case Reason", "picklist", values=("Installation", "Performance", "Other")),
        "SuppliedName": Field("Web Name", length=80),
        "SuppliedEmail": Field("Web Email", "email", 80),
        "SuppliedPhone": Field("Web Phone", "phone", 40),
        "SuppliedCompany": Field("Web Company", length=80),
        "ContactId": Field("Contact ID", "reference", 18),
        "AccountId": Field("Account ID", "reference", 18),
        "OwnerId": Field("Owner ID", "reference", 18),
    },
}
KEY_PREFIX = {"Lead": "00Q", "Case": "500"}
EXTERNAL_ID = "Octopus_Event_Id__c"


NOT_FOUND = "The requested resource does not exist"


class Refused(Exception):
    """Salesforce's error answer: ``status`` with ``[{message, errorCode, fields}]``."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = [{"message": message, "errorCode": code, "fields": fields or []}]


Handler = Callable[[web.Request], Awaitable[web.Response]]


class SalesforceFake(SpecFake):
    name = "salesforce"
    spec = SALESFORCE
    mount = "/services/data/{version}"
    ENV: ClassVar[dict[str, str]] = {
        "SALESFORCE_CLIENT_ID": "3MVG9fake.client.id.octopus",
        "SALESFORCE_CLIENT_SECRET": "fake-client-secret-5f1c",
        "SALESFORCE_USERNAME": "integration@octopus.example",
        "SALESFORCE_PASSWORD": "fake-password-and-security-token",
    }

    def __init__(
        self,
        *,
        client_id: str = ENV["SALESFORCE_CLIENT_ID"],
        client_secret: str = ENV["SALESFORCE_CLIENT_SECRET"],
        username: str = ENV["SALESFORCE_USERNAME"],
        password: str = ENV["SALESFORCE_PASSWORD"],
        client_credentials: bool = True,
        custom_fields: dict[str, dict[str, Field]] | None = None,
        api_limit: int = 100_000,
        max_version: int = 66,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"clientId": client_id, "clientSecret": client_secret}, **kw)
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self.client_credentials = client_credentials
        self.api_limit = api_limit
        self.api_usage = 0
        self.max_version = max_version
        if custom_fields is None:
            external = Field("Octopus Event Id", external_id=True)
            custom_fields = {obj: {EXTERNAL_ID: external} for obj in STANDARD_FIELDS}
        self.fields = {obj: {**std, **custom_fields.get(obj, {})} for obj, std in STANDARD_FIELDS.items()}
        self.grants: list[str] = []
        self.rejected: list[tuple[int, Any]] = []

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": self.base_url, "allowPrivateNetwork": True}  # the adapter adds the version path

    def limited_paths(self) -> tuple[str, ...]:
        return ("/services/data/v",)

    def too_many(self, wait: float) -> web.Response:
        return self._refuse(Refused(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."))

    def token_routes(self) -> list[web.RouteDef]:
        return [web.post("/services/oauth2/token", self.token)]

    def extra_routes(self) -> list[web.RouteDef]:
        data = self.mount
        sobject = data + "/sobjects/{sobject}"
        return [
            web.get(data + "/limits", self._api(self.limits)),
            web.get(sobject + "/describe", self._api(self.describe)),
            web.get(sobject, self._api(self.basic_info)),
            web.post(sobject, self._api(self.create)),
            web.post(sobject + "/", self._api(self.create)),
            web.get(sobject + "/{record_id}", self._api(self.get_by_id)),
            web.get(sobject + "/{field}/{value}", self._api(self.get_by_external_id)),
            web.patch(sobject + "/{field}/{value}", self._api(self.upsert)),
        ]

    # -- OAuth -------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form_encoded = request.content_type == "application/x-www-form-urlencoded"
        form = await request.post() if form_encoded else {}
        grant = str(form.get("grant_type", ""))

        def oauth_error(error: str, description: str) -> web.Response:
            self.rejected.append((400, error))
            return web.json_response({"error": error, "error_description": description}, status=400)

        if grant not in ("password", "client_credentials"):
            return oauth_error("unsupported_grant_type", "grant type not supported")
        if form.get("client_id") != self.client_id:
            return oauth_error("invalid_client_id", "client identifier invalid")
        if form.get("client_secret") != self.client_secret:
            return oauth_error("invalid_client", "invalid client credentials")
        if grant == "password" and (form.get("username") != self.username or form.get("password") != self.password):
            return oauth_error("invalid_grant", "authentication failure")
        if grant == "client_credentials" and not self.client_credentials:
            return oauth_error("invalid_grant", "no client credentials user enabled")
        self.grants.append(grant)
        return web.json_response(
            {
                "access_token": self.issue_token("00Dfake!AQ"),
                "instance_url": self.base_url,
                "id": f"{self.base_url}/id/00Dfake000000001AAA/005fake000000001AAA",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
                "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
            }
        )

    # -- data API ----------------------------------------------------------------------------

    def _api(self, handler: Handler) -> Handler:
        """Version, session and allocation checks, error rendering, ``Sforce-Limit-Info``."""

        async def call(request: web.Request) -> web.Response:
            try:
                self._check(request)
                response = await handler(request)
            except Refused as refused:
                response = self._refuse(refused)
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_usage}/{self.api_limit}"
            return response

        return call

    async def admit(self, request: web.Request) -> web.Response | None:
        try:
            self._check(request)
        except Refused as refused:
            return self._refuse(refused, request)
        return None

    def answer_headers(self, request: web.Request) -> Mapping[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_usage}/{self.api_limit}"}

    async def read_body(self, object_type: str, request: web.Request) -> Any:
        try:
            return self._parse(await request.read())
        except Refused as refused:
            raise Refusal(self._refuse(refused, request)) from None

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        try:
            self.validate(SOBJECTS[object_type], body, creating=True)
        except Refused as refused:
            return self._refuse(refused, request)
        return None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        record = self._insert(SOBJECTS[object_type], body)
        return record["Id"], record

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return {"id": record_id, "success": True, "errors": []}, {}

    def _check(self, request: web.Request) -> None:
        match = _VERSION.match(request.match_info.get("version", ""))
        if not match or not 31 <= int(match.group(1)) <= self.max_version:
            raise Refused(404, "NOT_FOUND", NOT_FOUND)
        auth = request.headers.get("Authorization", "")
        if not self.token_valid(auth[7:] if auth.startswith("Bearer ") else None):
            raise Refused(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if self.api_usage >= self.api_limit:
            raise Refused(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        self.api_usage += 1
        if request.match_info.get("sobject", "Lead") not in self.fields:
            raise Refused(404, "NOT_FOUND", NOT_FOUND)

    def _refuse(self, refused: Refused, request: web.Request | None = None) -> web.Response:
        """Salesforce's error answer; a data call's (``request``) carries the usage header."""
        self.rejected.append((refused.status, refused.body[0]["errorCode"]))
        headers = self.answer_headers(request) if request is not None else None
        return web.json_response(refused.body, status=refused.status, headers=headers)

    async def limits(self, request: web.Request) -> web.Response:
        remaining = self.api_limit - self.api_usage
        return web.json_response({"DailyApiRequests": {"Max": self.api_limit, "Remaining": remaining}})

    async def basic_info(self, request: web.Request) -> web.Response:
        sobject = request.match_info["sobject"]
        describe = {"name": sobject, "createable": True, "keyPrefix": KEY_PREFIX[sobject]}
        return web.json_response({"objectDescribe": describe, "recentItems": []})

    async def describe(self, request: web.Request) -> web.Response:
        sobject = request.match_info["sobject"]
        fields = [
            {
                "name": name,
                "label": f.label,
                "type": f.type,
                "length": f.length,
                "nillable": not f.required,
                "createable": f.createable,
                "defaultedOnCreate": f.default is not None,
                "externalId": f.external_id,
                "restrictedPicklist": f.restricted,
                "picklistValues": [{"value": v, "active": True} for v in f.values],
            }
            for name, f in self.fields[sobject].items()
        ]
        return web.json_response({"name": sobject, "fields": fields})

    async def get_by_id(self, request: web.Request) -> web.Response:
        record = self.records.get(request.match_info["record_id"])
        if record is None or record["attributes"]["type"] != request.match_info["sobject"]:
            raise Refused(404, "NOT_FOUND", NOT_FOUND)
        return web.json_response(record)

    async def get_by_external_id(self, request: web.Request) -> web.Response:
        sobject, name, value = self._external_key(request)
        matches = self.find(sobject, name, value)
        if not matches:
            raise Refused(404, "NOT_FOUND", NOT_FOUND)
        if len(matches) > 1:
            return web.json_response([self._url(r) for r in matches], status=300)
        return web.json_response(matches[0])

    async def create(self, request: web.Request) -> web.Response:
        sobject = request.match_info["sobject"]
        body = self._parse(await request.read())
        self.validate(sobject, body, creating=True)
        record = self._insert(sobject, body)
        return web.json_response({"id": record["Id"], "success": True, "errors": []}, status=201)

    async def upsert(self, request: web.Request) -> web.Response:
        sobject, name, value = self._external_key(request)
        body = self._parse(await request.read())
        if any(k.lower() == name.lower() and v != value for k, v in body.items()):
            raise Refused(
                400,
                "INVALID_FIELD",
                "The value of the external ID field in the body doesn't match the value in the URL",
                [name],
            )
        matches = self.find(sobject, name, value)
        if len(matches) > 1:
            return web.json_response([self._url(r) for r in matches], status=300)
        self.validate(sobject, body, creating=not matches)
        if matches:
            record = matches[0]
            record.update(self._canonical(sobject, body))
        else:
            record = self._insert(sobject, {**body, name: value})
        answer = {"id": record["Id"], "success": True, "errors": [], "created": not matches}
        return web.json_response(answer, status=200 if matches else 201)

    # -- model -------------------------------------------------------------------------------

    def seed_record(self, sobject: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Insert a record directly (tests: duplicates that upsert must refuse with 300)."""
        return self._insert(sobject, fields)

    def find(self, sobject: str, field: str, value: str) -> list[dict[str, Any]]:
        return [r for r in self.by_type(sobject) if str(r.get(field)) == value]

    def by_type(self, sobject: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r["attributes"]["type"] == sobject]

    def _external_key(self, request: web.Request) -> tuple[str, str, str]:
        sobject, field, value = (request.match_info[k] for k in ("sobject", "field", "value"))
        for name, spec in self.fields[sobject].items():
            if name.lower() == field.lower() and (spec.external_id or name == "Id"):
                return sobject, name, value
        raise Refused(
            404,
            "NOT_FOUND",
            f"Provided external ID field does not exist or is not accessible: {field}",
        )

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None
        if not isinstance(body, dict):
            raise Refused(400, "JSON_PARSER_ERROR", "Cannot deserialize sObject from a non-object")
        return body

    def _canonical(self, sobject: str, body: dict[str, Any]) -> dict[str, Any]:
        names = {n.lower(): n for n in self.fields[sobject]}
        return {names.get(k.lower(), k): v for k, v in body.items()}

    def validate(self, sobject: str, body: dict[str, Any], *, creating: bool) -> None:
        """Salesforce's field checks; raises :class:`Refused` for the first failing rule."""
        fields = self.fields[sobject]
        unknown = [k for k in body if k.lower() not in {n.lower() for n in fields}]
        if unknown:
            message = f"No such column '{unknown[0]}' on sobject of type {sobject}"
            raise Refused(400, "INVALID_FIELD", message)
        values = self._canonical(sobject, body)
        locked = [n for n in values if not fields[n].createable]
        if locked:
            raise Refused(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(locked)}. Please check the security"
                " settings of this field and verify that it is read/write for your profile.",
                locked,
            )
        required = [n for n, f in fields.items() if f.required and f.createable]
        missing = [n for n in required if values.get(n) in (None, "") and (creating or n in values)]
        if missing:
            message = f"Required fields are missing: [{', '.join(missing)}]"
            raise Refused(400, "REQUIRED_FIELD_MISSING", message, missing)
        for name, value in values.items():
            spec = fields[name]
            if value in (None, ""):
                continue
            if not isinstance(value, (str, int, float, bool)) or (spec.type == "int" and not isinstance(value, int)):
                message = f"Cannot deserialize instance of {spec.type} from {value!r:.40}"
                raise Refused(400, "JSON_PARSER_ERROR", message, [name])
            text = str(value)
            if spec.type not in ("int", "reference", "id") and len(text) > spec.length:
                message = f"{spec.label}: data value too large: {text[:40]} (max length={spec.length})"
                raise Refused(400, "STRING_TOO_LONG", message, [name])
            if spec.type == "email" and not _EMAIL.match(text):
                message = f"{spec.label}: invalid email address: {text}"
                raise Refused(400, "INVALID_EMAIL_ADDRESS", message, [name])
            if spec.type == "picklist" and spec.restricted and text not in spec.values:
                message = f"{spec.label}: bad value for restricted picklist field: {text}"
                raise Refused(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", message, [name])

    def _insert(self, sobject: str, body: dict[str, Any]) -> dict[str, Any]:
        record_id = KEY_PREFIX[sobject] + "".join(secrets.choice(_ID_CHARS) for _ in range(15))
        values = self._canonical(sobject, body)
        for name, spec in self.fields[sobject].items():
            if spec.default is not None and values.get(name) in (None, ""):
                values[name] = spec.default
        if sobject == "Case":
            values["CaseNumber"] = f"{len(self.by_type('Case')) + 1:08d}"
        record = {"attributes": {"type": sobject, "url": ""}, "Id": record_id, **values}
        record["attributes"]["url"] = self._url(record)
        self.records[record_id] = record
        return record

    def _url(self, record: dict[str, Any]) -> str:
        sobject = record["attributes"]["type"]
        return f"/services/data/v{self.max_version}.0/sobjects/{sobject}/{record['Id']}"
