"""A HubSpot account: CRM v3 contacts and tickets, account info, OAuth refresh.

- Calls need ``Authorization: Bearer`` with the static private-app token (``ENV``) or an
  access token from ``POST /oauth/v1/token`` (``grant_type=refresh_token``; those expire after
  ``token_ttl``). Anything else gets HubSpot's 401 body; an expired OAuth token says so with
  ``category: EXPIRED_AUTHENTICATION``.
- ``POST /crm/v3/objects/{contacts|tickets}`` validates like HubSpot: the create schema's
  required ``properties`` and ``associations``, known property names (standard ones plus
  ``custom_properties``), read-only properties, enumeration options (``lifecyclestage``,
  ``hs_ticket_priority`` …), e-mail syntax, ticket pipeline / stage ids from ``pipelines``,
  and a duplicate contact e-mail → 409 ``Contact already exists. Existing ID: …``.
- ``GET /crm/v3/objects/{type}/{id}`` (``?idProperty=email`` for contacts) reads one back.
- Rate limits: a rolling window of ``rate_limit`` (default 100 per 10 s) reported on every
  answer as ``X-HubSpot-RateLimit-Max/-Remaining/-Interval-Milliseconds``, 429 with
  ``policyName: TEN_SECONDLY_ROLLING`` over it; ``daily_limit`` calls a day, then 429
  ``policyName: DAILY``. Daily headers are sent for private-app calls only, as HubSpot does.

The envelope (the create routes per object type, the account-info read) comes from the adapter's
spec (sandbox/octopus_crm_sandbox/specfake.py). HubSpot's OpenAPI files are not licensed for reuse,
so the property checks stay HubSpot's rules as documented, each with its error code.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from octopus_crm.adapters.hubspot import OBJECTS
from octopus_crm.adapters.hubspot import SPEC as HUBSPOT
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, Refusal, SpecFake

__all__ = ["HubSpotFake"]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_TEXT = {
    "contacts": _words(
        "email firstname lastname phone mobilephone company website jobtitle address city state"
        " zip country message hubspot_owner_id hs_language"
    ),
    "tickets": _words("subject content hs_pipeline hs_pipeline_stage hubspot_owner_id"),
}
_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "contacts": {
        "lifecyclestage": _words(
            "subscriber lead marketingqualifiedlead salesqualifiedlead opportunity customer evangelist other"
        ),
        "hs_lead_status": _words(
            "NEW OPEN IN_PROGRESS OPEN_DEAL UNQUALIFIED ATTEMPTED_TO_CONTACT CONNECTED BAD_TIMING"
        ),
    },
    "tickets": {
        "hs_ticket_priority": _words("LOW MEDIUM HIGH"),
        "hs_ticket_category": _words("PRODUCT_ISSUE BILLING_ISSUE FEATURE_REQUEST GENERAL_INQUIRY"),
        "source_type": _words("CHAT EMAIL FORM PHONE"),
    },
}
# Standard properties per object: name → allowed options (None: free text).
STANDARD_PROPERTIES: dict[str, dict[str, tuple[str, ...] | None]] = {
    kind: {**dict.fromkeys(_TEXT[kind]), **_OPTIONS[kind]} for kind in _TEXT
}
READ_ONLY = frozenset({"hs_object_id", "createdate", "lastmodifieddate", "hs_ticket_id"})
_OAUTH = web.RequestKey("hubspot_oauth", bool)  # whether the call came with an OAuth token
_SCHEMA = "SimplePublicObjectInputForCreate"
DEFAULT_PIPELINES: dict[str, tuple[str, ...]] = {
    "0": ("1", "2", "3", "4"),
    "support_pipeline": ("new", "waiting_on_contact", "waiting_on_us", "closed"),
}


class HubSpotFake(SpecFake):
    name = "hubspot"
    spec = HUBSPOT
    ENV: ClassVar[dict[str, str]] = {"HUBSPOT_TOKEN": "pat-na1-00000000-fake-4c1e-octopus"}

    def __init__(
        self,
        *,
        token: str = ENV["HUBSPOT_TOKEN"],
        client_id: str = "hubspot-fake-client-id",
        client_secret: str = "hubspot-fake-client-secret",
        refresh_token: str = "hubspot-fake-refresh-token",
        custom_properties: dict[str, set[str]] | None = None,
        pipelines: dict[str, tuple[str, ...]] | None = None,
        portal_id: int = 20260101,
        daily_limit: int = 250_000,
        time_zone: str = "Asia/Shanghai",
        rate_limit: tuple[int, float] | None = (100, 10.0),
        **kw: Any,
    ) -> None:
        accepted = {"token": token, "clientId": client_id, "clientSecret": client_secret}
        super().__init__(accepted={**accepted, "refreshToken": refresh_token}, rate_limit=rate_limit, **kw)
        self.private_token = token
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        custom = custom_properties if custom_properties is not None else {"contacts": {"lead_source"}}
        self.properties = {
            kind: {**std, **dict.fromkeys(custom.get(kind, ()))} for kind, std in STANDARD_PROPERTIES.items()
        }
        self.pipelines = dict(pipelines if pipelines is not None else DEFAULT_PIPELINES)
        self.portal_id = portal_id
        self.daily_limit = daily_limit
        self.time_zone = time_zone
        self.daily_used = 0
        self.rejected: list[tuple[int, str]] = []
        self.issued: set[str] = set()  # OAuth tokens ever issued: expired ones say so
        self._ids = itertools.count(51_000_000_001)

    def limited_paths(self) -> tuple[str, ...]:
        return ("/crm/", "/account-info/")

    def token_routes(self) -> list[web.RouteDef]:
        return [web.post("/oauth/v1/token", self.oauth_token)]

    def extra_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/crm/v3/objects/{kind}", self.unknown_kind),
            web.get("/crm/v3/objects/{kind}/{record_id}", self.read),
        ]

    # -- shapes ------------------------------------------------------------------------------

    def refuse(
        self,
        status: int,
        message: str,
        category: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> web.Response:
        body = {
            "status": "error",
            "message": message,
            "correlationId": str(uuid.uuid4()),
            "category": category,
            **extra,
        }
        if status >= 400:
            self.rejected.append((status, category))
        return web.json_response(body, status=status, headers=headers)

    def window_headers(self, oauth: bool = False) -> dict[str, str]:
        headers = {}
        if self.window is not None:
            headers = {
                "X-HubSpot-RateLimit-Max": str(self.window.limit),
                "X-HubSpot-RateLimit-Remaining": str(self.window.remaining),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window.per * 1000)),
            }
        if not oauth:
            headers["X-HubSpot-RateLimit-Daily"] = str(self.daily_limit)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, self.daily_limit - self.daily_used))
        return headers

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return self.refuse(status, "; ".join(messages), fields.get("category", "VALIDATION_ERROR"))

    def answer_headers(self, request: web.Request) -> Mapping[str, str]:
        return self.window_headers(request.get(_OAUTH, False))

    def too_many(self, wait: float) -> web.Response:
        return self.refuse(
            429,
            "You have reached your ten_secondly_rolling limit.",
            "RATE_LIMITS",
            headers=self.window_headers(),
            errorType="RATE_LIMIT",
            policyName="TEN_SECONDLY_ROLLING",
            groupName=f"publicapi:private-app-api-calls-ten-secondly:{self.portal_id}",
        )

    def invalid(self, request: web.Request, message: str, **extra: Any) -> web.Response:
        return self.refuse(400, message, "VALIDATION_ERROR", dict(self.answer_headers(request)), **extra)

    async def admit(self, request: web.Request) -> web.Response | None:
        """The bearer token (private app, or an OAuth token and whether it expired), then the daily allowance."""
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if token and token == self.private_token:
            oauth = False
        elif token in self.issued:
            if not self.token_valid(token):
                return self.refuse(
                    401,
                    "The OAuth token used to make this call expired 1 second(s) ago.",
                    "EXPIRED_AUTHENTICATION",
                )
            oauth = True
        else:
            return self.refuse(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 authentication"
                " and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION",
            )
        request[_OAUTH] = oauth
        if self.daily_used >= self.daily_limit:
            return self.refuse(
                429,
                "You have reached your daily limit.",
                "RATE_LIMITS",
                headers=self.window_headers(oauth),
                errorType="RATE_LIMIT",
                policyName="DAILY",
                groupName=f"publicapi:private-app-api-calls-daily:{self.portal_id}",
            )
        self.daily_used += 1
        return None

    # -- endpoints ---------------------------------------------------------------------------

    async def oauth_token(self, request: web.Request) -> web.Response:
        form = await request.post()

        def oauth_error(status: str, message: str) -> web.Response:
            body = {"status": status, "message": message, "correlationId": str(uuid.uuid4())}
            self.rejected.append((400, status))
            return web.json_response(body, status=400)

        if form.get("grant_type") != "refresh_token":
            return oauth_error("BAD_GRANT_TYPE", "unsupported grant_type")
        if form.get("client_id") != self.client_id:
            return oauth_error("BAD_CLIENT_ID", "missing or unknown client id")
        if form.get("client_secret") != self.client_secret:
            return oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret")
        if form.get("refresh_token") != self.refresh_token:
            return oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
        token = self.issue_token("CJfake")
        self.issued.add(token)
        return web.json_response(
            {
                "token_type": "bearer",
                "refresh_token": self.refresh_token,
                "access_token": token,
                "expires_in": int(self.token_ttl),
            }
        )

    def whoami(self, who: str) -> Any:
        offset = dt.datetime.now(ZoneInfo(self.time_zone)).utcoffset() or dt.timedelta()
        offset_ms = int(offset.total_seconds() * 1000)
        return {
            "portalId": self.portal_id,
            "accountType": "STANDARD",
            "timeZone": self.time_zone,
            "companyCurrency": "CNY",
            "additionalCurrencies": [],
            "utcOffset": f"{'-' if offset_ms < 0 else '+'}{abs(offset_ms) // 3_600_000:02d}:"
            f"{abs(offset_ms) // 60_000 % 60:02d}",
            "utcOffsetMilliseconds": offset_ms,
            "uiDomain": "app.hubspot.com",
            "dataHostingLocation": "na1",
        }

    async def unknown_kind(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        kind = request.match_info["kind"]
        return self.refuse(
            404, f"Unable to infer object type from: {kind}", "OBJECT_NOT_FOUND", dict(self.answer_headers(request))
        )

    async def read(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        headers = dict(self.answer_headers(request))
        kind, key = request.match_info["kind"], request.match_info["record_id"]
        if kind not in self.properties:
            return self.refuse(404, f"Unable to infer object type from: {kind}", "OBJECT_NOT_FOUND")
        if request.query.get("idProperty") == "email" and kind == "contacts":
            record = self.contact_by_email(key)
        else:
            record = self.records.get(key)
            record = record if record is not None and record["kind"] == kind else None
        if record is None:
            return self.refuse(
                404,
                "Object not found.  objectId are usually numeric.",
                "OBJECT_NOT_FOUND",
                headers=headers,
                context={"id": [key]},
            )
        return web.json_response(self._public(record), headers=headers)

    # -- creates -----------------------------------------------------------------------------

    async def read_body(self, object_type: str, request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise Refusal(self.invalid(request, f"Invalid input JSON on line 1: {exc}")) from None

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        kind = OBJECTS[object_type]
        missing = [k for k in ("properties", "associations") if not isinstance(body, dict) or k not in body]
        if missing:
            return self.invalid(
                request,
                f"Invalid input JSON on line 1, column 1: Cannot build {_SCHEMA}, some of required"
                f" attributes are not set [{', '.join(missing)}]",
            )
        props, associations = body["properties"], body["associations"]
        if not isinstance(props, dict) or not isinstance(associations, list):
            return self.invalid(
                request, f"Invalid input JSON: {_SCHEMA} properties must be an object and associations an array"
            )
        problems = self.validate(kind, props)
        if problems:
            return self.invalid(
                request,
                f"Property values were not valid: {orjson.dumps(problems).decode()}",
                errors=[
                    {"message": p["message"], "code": p["error"], "context": {"propertyName": [p["name"]]}}
                    for p in problems
                ],
            )
        if kind == "contacts" and props.get("email"):
            existing = self.contact_by_email(str(props["email"]))
            if existing is not None:
                message = f"Contact already exists. Existing ID: {existing['id']}"
                return self.refuse(409, message, "CONFLICT", dict(self.answer_headers(request)))
        return None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        props = {k: None if v is None else str(v) for k, v in body["properties"].items()}
        record = self._insert(OBJECTS[object_type], props)
        record["associations"] = body["associations"]
        return record["id"], record

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return self._public(record), {}

    # -- model -------------------------------------------------------------------------------

    def validate(self, kind: str, props: dict[str, Any]) -> list[dict[str, Any]]:
        known = self.properties[kind]
        problems = []

        def bad(name: str, error: str, message: str) -> None:
            problems.append(
                {
                    "isValid": False,
                    "message": message,
                    "error": error,
                    "name": name,
                    "localizedErrorMessage": message,
                }
            )

        for name, value in props.items():
            if name in READ_ONLY:
                bad(
                    name,
                    "READ_ONLY_VALUE",
                    f'"{name}" is a read only property; its value cannot be set.',
                )
            elif name not in known:
                bad(name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
            elif value is not None and not isinstance(value, (str, int, float, bool)):
                bad(name, "INVALID_PROPERTY_VALUE", f"{value!r} is not a valid value for {name}")
            elif (options := known[name]) is not None and value not in (None, "") and str(value) not in options:
                bad(
                    name,
                    "INVALID_OPTION",
                    f"{value} was not one of the allowed options: [{', '.join(options)}]",
                )
            elif name == "email" and value and not _EMAIL.match(str(value)):
                bad(name, "INVALID_EMAIL", f"Email address {value} is invalid")
        if kind == "contacts" and not any(props.get(k) for k in ("email", "firstname", "lastname")):
            bad(
                "email",
                "REQUIRED_FIELD",
                "At least one of email, firstname or lastname is required",
            )
        if kind == "tickets" and not problems:
            pipeline = str(props.get("hs_pipeline") or "0")
            stage = props.get("hs_pipeline_stage")
            if pipeline not in self.pipelines:
                bad(
                    "hs_pipeline",
                    "INVALID_OPTION",
                    f"{pipeline} was not one of the allowed options: [{', '.join(self.pipelines)}]",
                )
            elif not stage:
                bad("hs_pipeline_stage", "REQUIRED_FIELD", "hs_pipeline_stage is required")
            elif str(stage) not in self.pipelines[pipeline]:
                bad(
                    "hs_pipeline_stage",
                    "INVALID_OPTION",
                    f"{stage} was not one of the allowed options: [{', '.join(self.pipelines[pipeline])}]",
                )
            if not props.get("subject"):
                bad("subject", "REQUIRED_FIELD", "subject is required")
        return problems

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        wanted = email.lower()
        for record in self.records.values():
            if record["kind"] == "contacts" and str(record["properties"].get("email", "")).lower() == wanted:
                return record
        return None

    def by_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r["kind"] == kind]

    def _insert(self, kind: str, props: dict[str, Any]) -> dict[str, Any]:
        record_id = str(next(self._ids))
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        defaults = {"hs_pipeline": "0"} if kind == "tickets" else {}
        properties = {
            **defaults,
            **props,
            "hs_object_id": record_id,
            "createdate": now,
            "lastmodifieddate": now,
        }
        record = {
            "kind": kind,
            "id": record_id,
            "properties": properties,
            "createdAt": now,
            "updatedAt": now,
        }
        self.records[record_id] = record
        return record

    def _public(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": record["id"],
            "properties": record["properties"],
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
            "archived": False,
        }
