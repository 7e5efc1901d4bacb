"""An Airtable fake: create and upsert records (``POST``/``PATCH /v0/{baseId}/{table}``), list
them with a ``filterByFormula`` of the form ``{Field} = "value"``, and ``GET /v0/meta/whoami``.

Who may call comes from the adapter's spec (bearer token, see envelope.py). The table has a
schema, and bodies are checked the way Airtable checks them: ``records`` holds 1–10 objects with
``fields``; an unknown field is 422 ``UNKNOWN_FIELD_NAME``; a value of the wrong type is 422
``INVALID_VALUE_FOR_COLUMN``; a select option that does not exist is 422
``INVALID_MULTIPLE_CHOICE_OPTIONS`` unless ``typecast`` is true (then the option is added);
``performUpsert.fieldsToMergeOn`` (1–3 existing fields, ``PATCH`` only) updates the one record
that matches, creates one when none does, and refuses when several do. An unknown base or table
is 403 ``INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND``, as Airtable answers a token that cannot see
it. Airtable publishes no spec in a repository; these follow its Web API reference. The rate
limit answers 429 ``{"errors": [{"error": "RATE_LIMIT_REACHED", …}]}`` (no headers) and then
refuses the base for ``penalty`` seconds (30 at Airtable).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web

from octopus_crm.adapters.airtable import SPEC as AIRTABLE
from octopus_crm_sandbox.envelope import caller
from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["AirtableFake"]

TEXT = ("singleLineText", "multilineText", "email", "url", "phoneNumber")
_FORMULA = re.compile(r'^\{((?:[^}\\]|\\.)+)\}\s*=\s*"((?:[^"\\]|\\.)*)"$')
_UNESCAPE = re.compile(r"\\(.)")


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text)


class AirtableFake(FakeVendor):
    name = "airtable"
    ENV: ClassVar[dict[str, str]] = {
        "AIRTABLE_TOKEN": "patFAKEoctopus01.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    }
    BASE_ID = "appOctopusDemo01"
    TABLE_ID = "tblTickets000001"
    TABLE_NAME = "Tickets"

    def __init__(self, *, token: str = ENV["AIRTABLE_TOKEN"], penalty: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.accepted = {"accessToken": token}
        self.penalty = penalty
        self.penalised_until = 0.0
        self.fields: dict[str, dict[str, Any]] = {
            "Name": {"type": "singleLineText"},
            "Message": {"type": "multilineText"},
            "Email": {"type": "email"},
            "Platform": {"type": "singleLineText"},
            "Category": {"type": "singleSelect", "choices": ["销售线索", "技术支持", "客户服务", "产品反馈"]},
            "Priority": {"type": "singleSelect", "choices": ["Low", "Medium", "High", "Urgent"]},
            "Octopus Key": {"type": "singleLineText"},
            "Received": {"type": "dateTime"},
        }

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": self.base_url, "allowPrivateNetwork": True}  # the fakes listen on loopback

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v0/meta/whoami", self.whoami),
            web.post("/v0/{base}/{table}", self.write),
            web.patch("/v0/{base}/{table}", self.write),
            web.get("/v0/{base}/{table}", self.list_records),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/v0/",)

    def rate_limited(self) -> float | None:
        now = time.monotonic()
        if now < self.penalised_until:
            return self.penalised_until - now
        wait = super().rate_limited()
        if wait is not None and self.penalty:
            self.penalised_until = now + self.penalty
        return wait

    # -- shapes ------------------------------------------------------------------------------

    def refuse_value(self, name: str) -> web.Response:
        return self.error(422, "INVALID_VALUE_FOR_COLUMN", f'Field "{name}" cannot accept the provided value')

    @staticmethod
    def error(status: int, kind: str, message: str) -> web.Response:
        return web.json_response({"error": {"type": kind, "message": message}}, status=status)

    def too_many(self, wait: float) -> web.Response:
        body = {"errors": [{"error": "RATE_LIMIT_REACHED", "message": "Rate limit exceeded. Please try again later"}]}
        return web.json_response(body, status=429)

    def refused(self, request: web.Request) -> web.Response | None:
        if caller(AIRTABLE.auth["pat"], request, self.accepted, self) is not None:
            return None
        return self.error(401, "AUTHENTICATION_REQUIRED", "Authentication required")

    def table_of(self, request: web.Request) -> web.Response | None:
        base, table = request.match_info["base"], request.match_info["table"]
        if base != self.BASE_ID or table not in (self.TABLE_ID, self.TABLE_NAME):
            return self.error(
                403,
                "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
                "Invalid permissions, or the requested model was not found. Check that both your user and your"
                " token have the required permissions, and that the model names and/or ids are correct.",
            )
        return None

    # -- handlers ----------------------------------------------------------------------------

    async def write(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request) or self.table_of(request)) is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self.error(422, "INVALID_REQUEST_BODY", "Could not parse request body")
        if not isinstance(body, dict):
            return self.error(422, "INVALID_REQUEST_BODY", "Request body must be an object")
        records = body.get("records")
        if not isinstance(records, list) or not 1 <= len(records) <= 10:
            return self.error(422, "INVALID_RECORDS", "records must be an array of 1 to 10 records")
        typecast = body.get("typecast", False)
        if not isinstance(typecast, bool):
            return self.error(422, "INVALID_REQUEST_UNKNOWN", "typecast must be a boolean")
        upsert = body.get("performUpsert")
        merge: list[str] = []
        if upsert is not None:
            if request.method != "PATCH":
                return self.error(422, "INVALID_REQUEST_UNKNOWN", "performUpsert is only valid with PATCH")
            asked = upsert.get("fieldsToMergeOn") if isinstance(upsert, dict) else None
            merge = asked if isinstance(asked, list) else []
            if not isinstance(asked, list) or not 1 <= len(merge) <= 3 or any(f not in self.fields for f in merge):
                return self.error(422, "INVALID_MERGE_FIELD", "fieldsToMergeOn must name 1 to 3 fields of the table")
        elif request.method == "PATCH":
            return self.error(422, "INVALID_RECORDS", "Each record to update needs an id (or use performUpsert)")
        for record in records:
            fields = record.get("fields") if isinstance(record, dict) else None
            if not isinstance(fields, dict):
                return self.error(422, "INVALID_RECORDS", "Each record needs a fields object")
            if (problem := self.check_fields(fields, typecast)) is not None:
                return problem
        created: list[str] = []
        updated: list[str] = []
        answered = []
        for record in records:
            fields = self.cast(record["fields"]) if typecast else record["fields"]
            matches = [
                r for r in self.records.values() if merge and all(r["fields"].get(f) == fields.get(f) for f in merge)
            ]
            if len(matches) > 1:
                return self.error(422, "INVALID_RECORDS", "More than one record matches the fields to merge on")
            if matches:
                matches[0]["fields"].update(fields)
                updated.append(matches[0]["id"])
                answered.append(matches[0])
                continue
            record_id = "rec" + secrets.token_hex(7)
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self.records[record_id] = {"id": record_id, "createdTime": stamp, "fields": dict(fields)}
            created.append(record_id)
            answered.append(self.records[record_id])
        out: dict[str, Any] = {"records": answered}
        if upsert is not None:
            out = {"createdRecords": created, "updatedRecords": updated, **out}
        return web.json_response(out)

    def check_fields(self, fields: dict[str, Any], typecast: bool) -> web.Response | None:
        for name, value in fields.items():
            spec = self.fields.get(name)
            if spec is None:
                return self.error(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
            if value is None:
                continue
            kind = spec["type"]
            if kind in TEXT and not isinstance(value, str) and not typecast:
                return self.refuse_value(name)
            if kind == "singleSelect":
                if not isinstance(value, str):
                    return self.refuse_value(name)
                if value not in spec["choices"] and not typecast:
                    return self.error(
                        422,
                        "INVALID_MULTIPLE_CHOICE_OPTIONS",
                        f'Insufficient permissions to create new select option ""{value}""',
                    )
            if kind == "dateTime":
                try:
                    datetime.fromisoformat(str(value).replace("Z", "+00:00"))
                except ValueError:
                    return self.refuse_value(name)
        return None

    def cast(self, fields: dict[str, Any]) -> dict[str, Any]:
        """What ``typecast`` does: strings for text, new select options added."""
        out = {}
        for name, value in fields.items():
            spec = self.fields[name]
            if spec["type"] in TEXT and value is not None and not isinstance(value, str):
                value = str(value)
            if spec["type"] == "singleSelect" and value is not None and value not in spec["choices"]:
                spec["choices"].append(value)
            out[name] = value
        return out

    async def list_records(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request) or self.table_of(request)) is not None:
            return refused
        formula = request.query.get("filterByFormula", "")
        records = list(self.records.values())
        if formula:
            match = _FORMULA.match(formula.strip())
            if match is None:
                return self.error(422, "INVALID_FILTER_BY_FORMULA", 'The fake only knows {Field} = "value"')
            field, value = _unescape(match.group(1)), _unescape(match.group(2))
            if field not in self.fields:
                return self.error(422, "INVALID_FILTER_BY_FORMULA", f"Unknown field names: {field.lower()}")
            records = [r for r in records if str(r["fields"].get(field, "")) == value]
        limit = int(request.query.get("maxRecords", "100"))
        return web.json_response({"records": records[: min(limit, 100)]})

    async def whoami(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        return web.json_response({"id": "usrOctopusBot0001", "scopes": ["data.records:read", "data.records:write"]})
