"""A Zoho CRM data centre: accounts server (refresh-token grant) and the v8 records API.

- ``POST /oauth/v2/token`` takes ``grant_type=refresh_token`` with client id and secret (form or
  query, as Zoho's examples send it) and answers ``{access_token, api_domain, token_type,
  expires_in}``; a wrong refresh token is ``200 {"error": "invalid_code"}``, a wrong client
  ``200 {"error": "invalid_client"}``; more than 10 tokens per refresh token in 10 minutes is
  ``400 {"error": "Access Denied", "error_description": "You have made too many requests …"}``.
  ``api_domain`` is this fake's URL, so the adapter must use it.
- API calls need ``Authorization: Zoho-oauthtoken <token>`` (the adapter's SPEC decides:
  sandbox/octopus_crm_sandbox/envelope.py); anything else is ``401 INVALID_TOKEN``.
- ``POST /crm/{v}/{Leads|Cases|Tasks}`` and ``…/upsert``: bodies are validated with
  ``jsonschema`` against ``Body_Wrapper`` of Zoho's published OpenAPI (``specs/zoho_records.json``,
  a fragment of zoho/crm-oas v8.0/record.json), then each record like a default layout: mandatory
  fields (``MANDATORY_NOT_FOUND``), e-mail format and field lengths (``INVALID_DATA``), unique
  fields (``DUPLICATE_DATA`` with the existing record). Each record's answer is checked against
  the spec's ``Success_Response`` / ``API_Exception``; the status is 201 (inserted), 200 (updated),
  207 (mixed) or 400 (all failed).
- ``GET /crm/{v}/{Module}/search?criteria=(Field:equals:value)`` and ``GET /crm/{v}/{Module}``
  answer ``{"data": [...], "info": {...}}`` or ``204`` when nothing matches.
- ``rate_limit`` answers ``429 TOO_MANY_REQUESTS``; ``credits`` (None: unlimited) is the 24 h API
  credit allowance, each API call costing one, answered ``429 LIMIT_EXCEEDED`` when spent (Zoho
  documents the allowance, not this answer's body: the code is from the spec's error enum).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.zoho import SPEC as ZOHO
from octopus_crm_sandbox.envelope import caller
from octopus_crm_sandbox.kit import FakeVendor, SlidingWindow

__all__ = ["ZohoFake"]

_SCHEMAS = json.loads((Path(__file__).resolve().parent / "specs" / "zoho_records.json").read_text("utf-8"))
_COMPONENTS = _SCHEMAS["components"]


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": _COMPONENTS})


BODY = _validator("Body_Wrapper")
SUCCESS = _validator("Success_Response")
EXCEPTION = _validator("API_Exception")
MANDATORY = {"Leads": ("Last_Name",), "Cases": ("Subject", "Case_Origin"), "Tasks": ("Subject",)}
LENGTHS = {"First_Name": 40, "Last_Name": 80, "Company": 200, "Description": 32000, "Email": 100, "Phone": 50}
SINGLE_LINE = 255
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CRITERIA = re.compile(r"^\((\w+):equals:((?:\\.|[^\\)])*)\)$")
_USER = {"name": "Octopus Bot", "id": "5725767000000411001", "email": "octopus-bot@example.com"}


def _error(status: int, code: str, message: str, **details: Any) -> web.Response:
    body = {"code": code, "details": details, "message": message, "status": "error"}
    return web.json_response(body, status=status)


class ZohoFake(FakeVendor):
    name = "zoho"
    ENV: ClassVar[dict[str, str]] = {
        "ZOHO_CLIENT_ID": "1000.FAKEZOHOCLIENT0000000000000000",
        "ZOHO_CLIENT_SECRET": "fakezohoclientsecret0000000000000000000000",
        "ZOHO_REFRESH_TOKEN": "1000.fakerefresh.fakerefreshtoken0000000000",
    }

    def __init__(
        self,
        *,
        unique_fields: dict[str, tuple[str, ...]] | None = None,
        credits: int | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("token_ttl", 3600.0)
        super().__init__(**kw)
        self.accepted = {
            "clientId": self.ENV["ZOHO_CLIENT_ID"],
            "clientSecret": self.ENV["ZOHO_CLIENT_SECRET"],
            "refreshToken": self.ENV["ZOHO_REFRESH_TOKEN"],
        }
        self.unique_fields = unique_fields or {"Leads": ("Octopus_Key",), "Cases": ("Octopus_Key",)}
        self.credits = credits
        self.token_window = SlidingWindow(10, 600)
        self._ids = itertools.count(5725767000000420001)

    def endpoints(self) -> dict[str, Any]:
        return {"accountsUrl": self.base_url, "allowPrivateNetwork": True}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/oauth/v2/token", self.token),
            web.post(r"/crm/{version:v\d+(?:\.\d)?}/{module}", self.insert),
            web.post(r"/crm/{version:v\d+(?:\.\d)?}/{module}/upsert", self.upsert),
            web.get(r"/crm/{version:v\d+(?:\.\d)?}/{module}/search", self.search),
            web.get(r"/crm/{version:v\d+(?:\.\d)?}/{module}", self.list_records),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/crm/",)

    def rate_limited(self) -> float | None:
        if self.credits is not None:
            if self.credits <= 0:
                return -1.0  # spent: answered by too_many as LIMIT_EXCEEDED
            self.credits -= 1
        return super().rate_limited()

    def too_many(self, wait: float) -> web.Response:
        if wait < 0:
            return _error(429, "LIMIT_EXCEEDED", "API credits exhausted for the rolling 24-hour window")
        response = _error(429, "TOO_MANY_REQUESTS", "too many requests")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    # -- accounts server ---------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        sent = {**request.query, **(await request.post())}
        if sent.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"})
        if (
            sent.get("client_id") != self.accepted["clientId"]
            or sent.get("client_secret") != self.accepted["clientSecret"]
        ):
            return web.json_response({"error": "invalid_client"})
        if sent.get("refresh_token") != self.accepted["refreshToken"]:
            return web.json_response({"error": "invalid_code"})
        if self.token_window.hit() is not None:
            description = "You have made too many requests continuously. Please try again after some time."
            denied = {"error_description": description, "error": "Access Denied", "status": "failure"}
            return web.json_response(denied, status=400)
        token = self.issue_token("1000")
        body: dict[str, Any] = {
            "access_token": token,
            "api_domain": self.base_url,
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        return web.json_response(body)

    # -- records -----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> web.Response | None:
        if caller(ZOHO.auth["oauth2"], request, self.accepted, self) is None:
            return _error(401, "INVALID_TOKEN", "invalid oauth token")
        if request.match_info["module"] not in MANDATORY:
            return _error(400, "INVALID_MODULE", "the module name given seems to be invalid")
        return None

    async def _records(self, request: web.Request) -> tuple[list[Any], dict[str, Any]] | web.Response:
        if (refused := self._authorized(request)) is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "INVALID_DATA", "body", expected_data_type="jsonobject")
        problems = list(BODY.iter_errors(body))
        if problems:
            where = "$." + ".".join(str(p) for p in problems[0].path) if problems[0].path else "$"
            return _error(400, "INVALID_DATA", "invalid data", json_path=where, reason=problems[0].message)
        data = body.get("data")
        if not data:
            return _error(400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", param="data")
        if len(data) > 100:
            return _error(400, "LIMIT_EXCEEDED", "Record count exceeded", limit=100)
        return data, body

    def _check(self, module: str, i: int, record: dict[str, Any]) -> dict[str, Any] | None:
        for name in MANDATORY[module]:
            if record.get(name) in (None, ""):
                details = {"api_name": name, "json_path": f"$.data[{i}].{name}"}
                return {"code": "MANDATORY_NOT_FOUND", "details": details, "message": "required field not found"}
        for name, value in record.items():
            path = f"$.data[{i}].{name}"
            if name == "Email" and value is not None and not _EMAIL.match(str(value)):
                details = {"api_name": name, "json_path": path, "expected_data_type": "email"}
                return {"code": "INVALID_DATA", "details": details, "message": "invalid data"}
            limit = LENGTHS.get(name, SINGLE_LINE)
            if isinstance(value, str) and len(value) > limit:
                too_long: dict[str, Any] = {"api_name": name, "json_path": path, "maximum_length": limit}
                return {"code": "INVALID_DATA", "details": too_long, "message": "invalid data"}
        return None

    def _match(self, module: str, fields: tuple[str, ...] | list[str], record: dict[str, Any]) -> tuple[str, str]:
        for name in fields:
            value = record.get(name)
            if value in (None, ""):
                continue
            for record_id, stored in self.records.items():
                if stored["module"] == module and stored["fields"].get(name) == value:
                    return name, record_id
        return "", ""

    def _details(self, record_id: str) -> dict[str, Any]:
        now = datetime.now(UTC).replace(microsecond=0).isoformat()
        return {"Modified_Time": now, "Modified_By": _USER, "Created_Time": now, "id": record_id, "Created_By": _USER}

    def _answer(self, items: list[dict[str, Any]], created: bool) -> web.Response:
        for item in items:
            problems = list((SUCCESS if item["status"] == "success" else EXCEPTION).iter_errors(item))
            assert not problems, problems[0].message
        failed = sum(item["status"] == "error" for item in items)
        status = 400 if failed == len(items) else 207 if failed else 201 if created else 200
        return web.json_response({"data": items}, status=status)

    def _insert(self, module: str, record: dict[str, Any]) -> dict[str, Any]:
        record_id = str(next(self._ids))
        self.records[record_id] = {"module": module, "fields": dict(record)}
        return {"code": "SUCCESS", "details": self._details(record_id), "message": "record added", "status": "success"}

    async def insert(self, request: web.Request) -> web.Response:
        parsed = await self._records(request)
        if isinstance(parsed, web.Response):
            return parsed
        module, items = request.match_info["module"], []
        for i, record in enumerate(parsed[0]):
            problem = self._check(module, i, record)
            duplicate, existing = self._match(module, self.unique_fields.get(module, ()), record)
            if problem is None and existing:
                details = {
                    "api_name": duplicate,
                    "json_path": f"$.data[{i}].{duplicate}",
                    "duplicate_record": {"id": existing, "module": {"api_name": module}, "Owner": _USER},
                }
                problem = {"code": "DUPLICATE_DATA", "details": details, "message": "duplicate data"}
            items.append({**problem, "status": "error"} if problem else self._insert(module, record))
        return self._answer(items, created=True)

    async def upsert(self, request: web.Request) -> web.Response:
        parsed = await self._records(request)
        if isinstance(parsed, web.Response):
            return parsed
        data, body = parsed
        module, items, created = request.match_info["module"], [], False
        checks = body.get("duplicate_check_fields") or list(self.unique_fields.get(module, ()))
        for i, record in enumerate(data):
            field, existing = self._match(module, checks, record)
            problem = self._check(module, i, {**self.records[existing]["fields"], **record} if existing else record)
            if problem is not None:
                items.append({**problem, "status": "error"})
            elif existing:
                self.records[existing]["fields"].update(record)
                details = self._details(existing)
                items.append(
                    {"code": "SUCCESS", "duplicate_field": field, "action": "update", "details": details,
                     "message": "record updated", "status": "success"}
                )  # fmt: skip
            else:
                created = True
                items.append({**self._insert(module, record), "action": "insert"})
        return self._answer(items, created=created)

    async def search(self, request: web.Request) -> web.Response:
        if (refused := self._authorized(request)) is not None:
            return refused
        match = _CRITERIA.match(request.query.get("criteria", ""))
        if match is None:
            return _error(400, "INVALID_QUERY", "invalid query formed", param="criteria")
        name, value = match.group(1), re.sub(r"\\(.)", r"\1", match.group(2))
        module = request.match_info["module"]
        hits = [
            {"id": record_id, name: stored["fields"].get(name)}
            for record_id, stored in self.records.items()
            if stored["module"] == module and stored["fields"].get(name) == value
        ]
        return self._page(hits)

    async def list_records(self, request: web.Request) -> web.Response:
        if (refused := self._authorized(request)) is not None:
            return refused
        module = request.match_info["module"]
        per_page = int(request.query.get("per_page", "200"))
        rows = [{"id": record_id} for record_id, stored in self.records.items() if stored["module"] == module]
        return self._page(rows[:per_page])

    @staticmethod
    def _page(rows: list[dict[str, Any]]) -> web.Response:
        if not rows:
            return web.Response(status=204)
        info = {"per_page": 200, "count": len(rows), "page": 1, "more_records": False}
        return web.json_response({"data": rows, "info": info})
