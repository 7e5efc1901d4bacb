"""A Dataverse environment with its Entra ID token endpoint: leads, incidents, alternate keys.

- ``POST /{tenant}/oauth2/v2.0/token`` (client credentials, form-encoded) checks the tenant, the
  client and a ``scope`` of ``{environment}/.default``, and answers like Entra ID (``token_type``,
  ``expires_in``, ``ext_expires_in``) or with its ``{"error", "error_description": "AADSTS…"}``.
- Data calls under ``/api/data/v9.2/`` need a valid bearer token (who may call, the create
  routes, ``WhoAmI`` and JSON parsing come from the adapter's SPEC: specfake.py), else ``401``
  with ``WWW-Authenticate``.
- Bodies are validated with ``jsonschema`` against the tables' createable columns
  (``specs/dynamics_entities.json``) and answered with Dataverse's codes: unknown property
  ``0x80048d19``, too long ``0x80044331``, bad value ``0x80040203``, a bound customer that does
  not exist ``0x80040217``, an incident without a customer ``0x80040203``.
- ``POST /leads`` → ``204`` + ``OData-EntityId``; ``Prefer: return=representation`` → ``201`` +
  the row. ``PATCH /leads(octopus_idempotencykey='…')`` upserts by the alternate key, honouring
  ``If-None-Match: *`` (``412 0x80040237`` when the row exists) and ``If-Match: *`` (``404`` when
  it does not); ``GET`` by the same key reads a row (``$select``).
- Over the rate limit: ``429`` ``0x80072322`` with ``Retry-After``; data answers carry
  ``x-ms-ratelimit-burst-remaining-xrm-requests``. ``GET /WhoAmI`` is the connection test.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import jsonschema
from aiohttp import web

from octopus_crm.adapters.dynamics365 import SPEC as DYNAMICS
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["DynamicsFake"]

SCHEMA = json.loads((Path(__file__).resolve().parent / "specs" / "dynamics_entities.json").read_text("utf-8"))
TABLES = {"leads": "lead", "incidents": "incident"}
VALIDATORS = {
    table: jsonschema.Draft202012Validator({"$ref": f"#/$defs/{table}", "$defs": SCHEMA["$defs"]})
    for table in TABLES.values()
}
ACCOUNT_ID = "00000000-0000-0000-0000-000000000001"
CONTACT_ID = "00000000-0000-0000-0000-000000000002"
ROOT = "/api/data/v9.2"
_KEYED = re.compile(r"^(\w+)\((\w+)='((?:[^']|'')*)'\)$")
_BIND = re.compile(r"^/(accounts|contacts|systemusers)\(([0-9a-fA-F-]{36})\)$")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class DynamicsFake(SpecFake):
    name = "dynamics365"
    spec = DYNAMICS
    mount = ROOT
    ENV: ClassVar[dict[str, str]] = {
        "DYNAMICS_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "DYNAMICS_CLIENT_ID": "51f81489-12ee-4a9e-aaae-a2591f45987d",
        "DYNAMICS_CLIENT_SECRET": "fake~dataverse~client~secret",
    }

    def __init__(self, *, key_column: str = "octopus_idempotencykey", **kw: Any) -> None:
        kw.setdefault("token_ttl", 3599.0)
        accepted = {
            "tenantId": self.ENV["DYNAMICS_TENANT_ID"],
            "clientId": self.ENV["DYNAMICS_CLIENT_ID"],
            "clientSecret": self.ENV["DYNAMICS_CLIENT_SECRET"],
        }
        super().__init__(accepted=accepted, **kw)
        self.key_column = key_column
        self.existing = {"accounts": {ACCOUNT_ID}, "contacts": {CONTACT_ID}, "systemusers": set[str]()}
        self.scopes: list[str] = []

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": self.base_url, "loginUrl": self.base_url, "allowPrivateNetwork": True}

    def token_routes(self) -> list[web.RouteDef]:
        return [web.post("/{tenant}/oauth2/v2.0/token", self.token)]

    def extra_routes(self) -> list[web.RouteDef]:
        return [web.patch(ROOT + "/{target}", self.upsert), web.get(ROOT + "/{target}", self.read)]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/api/data/",)

    def too_many(self, wait: float) -> web.Response:
        message = "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
        return _error(429, "0x80072322", message, {"Retry-After": str(max(1, math.ceil(wait)))})

    def answer_headers(self, request: web.Request) -> dict[str, str]:
        remaining = self.window.remaining if self.window else 5999
        return {"OData-Version": "4.0", "x-ms-ratelimit-burst-remaining-xrm-requests": str(remaining)}

    def unauthorized(self, request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    # -- Entra ID ----------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != self.accepted["tenantId"]:
            return web.json_response(
                {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."}, status=400
            )
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (
            form.get("client_id") != self.accepted["clientId"]
            or form.get("client_secret") != self.accepted["clientSecret"]
        ):
            description = "AADSTS7000215: Invalid client secret provided."
            return web.json_response({"error": "invalid_client", "error_description": description}, status=401)
        scope = str(form.get("scope", ""))
        self.scopes.append(scope)
        if scope != f"{self.base_url}/.default":
            description = "AADSTS70011: The provided value for the input parameter 'scope' is not valid."
            return web.json_response({"error": "invalid_scope", "error_description": description}, status=400)
        ttl = int(self.token_ttl)
        return web.json_response(
            {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": self.issue_token("eyJ0")}
        )

    # -- Web API -----------------------------------------------------------------------------

    def whoami(self, who: str) -> Any:
        body = {
            "@odata.context": f"{self.base_url}{ROOT}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": "0ec1e5f6-7d5c-4f3e-9b8e-1b2a3c4d5e6f",
            "UserId": "3a2b1c0d-9e8f-4a7b-8c6d-5e4f3a2b1c0d",
            "OrganizationId": "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b",
        }
        return body

    def table_of(self, object_type: str) -> str:
        """The table an object type's entity set holds (``case`` is the incident table)."""
        return TABLES[self.spec.objects[object_type].path]

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        if status == 415:
            return _error(415, "0x80048d19", "Unsupported content type; use application/json.")
        table = self.table_of(object_type)
        return _error(400, "0x80048d19", f"Error identified in Payload provided by the user for Entity :'{table}s'")

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        table = self.table_of(object_type)
        if not isinstance(body, dict):
            return _error(400, "0x80048d19", "The request body must be a JSON object.")
        for problem in VALIDATORS[table].iter_errors(body):
            if problem.validator == "additionalProperties":
                extra = next(iter(set(body) - set(SCHEMA["$defs"][table]["properties"])), "?")
                message = (
                    f"Error identified in Payload provided by the user for Entity :'{table}s' ----> "
                    f"The property '{extra}' does not exist on type 'Microsoft.Dynamics.CRM.{table}'."
                )
                return _error(400, "0x80048d19", message)
            column = str(problem.path[0]) if problem.path else "body"
            if problem.validator == "maxLength":
                limit = problem.validator_value
                message = (
                    f"A validation error occurred. The length of the '{column}' attribute of the '{table}'"
                    f" entity exceeded the maximum allowed length of '{limit}'."
                )
                return _error(400, "0x80044331", message)
            return _error(400, "0x80040203", f"Invalid value for '{column}': {problem.message}")
        for name, value in body.items():
            match = _BIND.match(value) if name.endswith("@odata.bind") else None
            if match is not None and match.group(2).lower() not in self.existing[match.group(1)]:
                entity = match.group(1).removesuffix("s")
                return _error(400, "0x80040217", f"{entity} With Id = {match.group(2)} Does Not Exist")
        if table == "incident" and not any(k.startswith("customerid_") for k in body):
            return _error(400, "0x80040203", "Attribute 'customerid' cannot be NULL")
        return None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        return str(uuid.uuid4()), {"table": self.table_of(object_type), "fields": body, "key": None}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        """``204`` + ``OData-EntityId``, or the row with ``Prefer: return=representation``."""
        table = record["table"]
        headers = {"OData-EntityId": f"{self.base_url}{ROOT}/{table}s({record_id})"}
        if "return=representation" not in request.headers.get("Prefer", ""):
            return None, headers
        row = {f"{table}id": record_id, **record["fields"]}
        if select := request.query.get("$select"):
            row = {k: v for k, v in row.items() if k in select.split(",")}
        return {"@odata.context": f"{self.base_url}{ROOT}/$metadata#{table}s/$entity", **row}, headers

    def _keyed(self, target: str) -> tuple[str, str] | web.Response:
        match = _KEYED.match(target)
        if match is None or match.group(1) not in TABLES:
            return _error(404, "0x80060888", f"Resource not found for the segment '{target}'.")
        if match.group(2) != self.key_column:
            return _error(400, "0x80040203", f"The key attribute '{match.group(2)}' is not defined as an alternate key")
        return TABLES[match.group(1)], unquote(match.group(3)).replace("''", "'")

    def _find(self, table: str, key: str) -> str | None:
        return next((g for g, r in self.records.items() if r["table"] == table and r["key"] == key), None)

    async def upsert(self, request: web.Request) -> web.StreamResponse:
        """A create-only (``If-None-Match: *``) or update-only (``If-Match: *``) PATCH by alternate key."""
        if (denied := await self.admit(request)) is not None:
            return denied
        keyed = self._keyed(request.match_info["target"])
        if isinstance(keyed, web.Response):
            return keyed
        table, key = keyed
        body = await self.read_body(table, request)
        if (refusal := self.refused(table, body, request)) is not None:
            return refusal
        existing = self._find(table, key)
        if existing is not None and request.headers.get("If-None-Match") == "*":
            return _error(412, "0x80040237", "A record with matching key values already exists.")
        if existing is None and request.headers.get("If-Match") == "*":
            return _error(404, "0x80040217", f"A record with the specified key values does not exist in {table} entity")
        if existing is not None:
            self.records[existing]["fields"].update(body)
            row, headers = self.created(self.spec.objects[table], existing, self.records[existing], request)
            headers = {**self.answer_headers(request), **headers}
            return web.Response(status=204, headers=headers) if row is None else self.answer(row, 200, headers)
        guid = str(uuid.uuid4())
        self.records[guid] = {"table": table, "fields": {**body, self.key_column: key}, "key": key}
        return self.created_answer(self.spec.objects[table], guid, request)

    async def read(self, request: web.Request) -> web.StreamResponse:
        if (denied := await self.admit(request)) is not None:
            return denied
        keyed = self._keyed(request.match_info["target"])
        if isinstance(keyed, web.Response):
            return keyed
        table, key = keyed
        guid = self._find(table, key)
        if guid is None:
            return _error(404, "0x80040217", f"A record with the specified key values does not exist in {table} entity")
        row = {f"{table}id": guid, **self.records[guid]["fields"]}
        if select := request.query.get("$select"):
            row = {k: v for k, v in row.items() if k in select.split(",")}
        body = {"@odata.context": f"{self.base_url}{ROOT}/$metadata#{table}s/$entity", "@odata.etag": 'W/"1"', **row}
        return self.answer(body, headers=self.answer_headers(request))
