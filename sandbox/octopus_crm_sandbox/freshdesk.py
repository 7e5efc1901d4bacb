"""A Freshdesk fake: basic auth with an API key, ``POST /api/v2/tickets``, tag search, ``agents/me``.

The envelope (who may call, the create, search and ``agents/me`` routes) comes from the adapter's
spec (sandbox/octopus_crm_sandbox/specfake.py); what follows is Freshdesk's own.
Freshdesk publishes no machine-readable spec, so create bodies are validated with ``jsonschema``
against :data:`TICKET_SCHEMA`, written from the "Create a Ticket" section of the API reference
(developers.freshdesk.com/api/#create_ticket): known fields only, numeric ``status`` / ``priority``
/ ``source`` enums, ``tags`` and ``cc_emails`` as string lists, ``custom_fields`` an object. Then
the checks the helpdesk adds: a requester is named, a phone-only requester has a name, ``type`` is
one of the account's ticket types. Failures answer Freshdesk's ``{"description": "Validation
failed", "errors": [{field, message, code}]}``; a wrong API key its 401 ``invalid_credentials``.

Every answer carries ``X-RateLimit-Total``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Used-CurrentRequest``; over the per-minute limit it is 429 with ``Retry-After``.
``search_lag`` hides new tickets from search for a while, like Freshdesk's search index.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web
from multidict import MultiMapping

from octopus_crm.adapters.freshdesk import SEARCH_PATH
from octopus_crm.adapters.freshdesk import SPEC as FRESHDESK
from octopus_crm.adapters.spec import CreateCall, FindCall
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["TICKET_SCHEMA", "FreshdeskFake"]

_ID = {"type": "integer", "minimum": 1}
_STRINGS = {"type": "array", "items": {"type": "string"}}
TICKET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["subject"],
    "properties": {
        "name": {"type": "string", "maxLength": 255},
        "requester_id": _ID,
        "email": {"type": "string", "format": "email", "maxLength": 255},
        "facebook_id": {"type": "string"},
        "phone": {"type": "string", "maxLength": 255},
        "twitter_id": {"type": "string"},
        "unique_external_id": {"type": "string"},
        "subject": {"type": "string", "minLength": 1, "maxLength": 255},
        "type": {"type": "string"},
        "status": {"enum": [2, 3, 4, 5]},
        "priority": {"enum": [1, 2, 3, 4]},
        "description": {"type": "string"},
        "responder_id": _ID,
        "cc_emails": _STRINGS,
        "custom_fields": {"type": "object"},
        "due_by": {"type": "string"},
        "email_config_id": _ID,
        "fr_due_by": {"type": "string"},
        "group_id": _ID,
        "parent_id": _ID,
        "product_id": _ID,
        "source": {"enum": [1, 2, 3, 5, 6, 7, 9, 10]},
        "tags": _STRINGS,
        "company_id": _ID,
        "internal_agent_id": _ID,
        "internal_group_id": _ID,
        "lookup_parameter": {"enum": ["display_id", "primary_field_value"]},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(TICKET_SCHEMA, format_checker=jsonschema.FormatChecker())
REQUESTER_FIELDS = ("requester_id", "email", "phone", "twitter_id", "facebook_id", "unique_external_id")
DEFAULT_TYPES = ("Question", "Incident", "Problem", "Feature Request", "Refund")
_TAG_QUERY = re.compile(r"""^"tag:'([^']+)'"$""")
_JSON_TYPES = {"integer": "Integer", "string": "String", "array": "Array", "object": "key/value pair"}


def _field_error(error: jsonschema.ValidationError) -> dict[str, str]:
    field = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = next(iter(set(error.instance) - set(TICKET_SCHEMA["properties"])), "")
        return {"field": str(extra), "message": "Unexpected/invalid field in request", "code": "invalid_field"}
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return {"field": missing, "message": "It should be a/an String", "code": "missing_field"}
    if error.validator == "enum":
        values = ",".join(str(v) for v in error.validator_value)
        return {"field": field, "message": f"It should be one of these values: '{values}'", "code": "invalid_value"}
    if error.validator == "type":
        kind = _JSON_TYPES.get(str(error.validator_value), str(error.validator_value))
        return {"field": field, "message": f"It should be a/an {kind}", "code": "datatype_mismatch"}
    return {"field": field, "message": error.message, "code": "invalid_value"}


_INVALID_JSON = {"field": "", "message": "Request body has invalid json format", "code": "invalid_json"}


class FreshdeskFake(SpecFake):
    name = "freshdesk"
    spec = FRESHDESK
    schemas: ClassVar[Mapping[str, Any]] = {"ticket": _VALIDATOR}
    ENV: ClassVar[dict[str, str]] = {"FRESHDESK_API_KEY": "fake-freshdesk-api-key-0001"}

    def __init__(
        self,
        *,
        api_key: str = ENV["FRESHDESK_API_KEY"],
        types: tuple[str, ...] = DEFAULT_TYPES,
        search_lag: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"apiKey": api_key}, **kw)
        self.types = types
        self.search_lag = search_lag
        self._ids = itertools.count(1)
        self.created_at: dict[str, float] = {}

    def limited_paths(self) -> tuple[str, ...]:
        return ("/api/v2/",)

    # -- shapes ------------------------------------------------------------------------------

    def limit_headers(self, remaining: int | None = None) -> dict[str, str]:
        total = self.window.limit if self.window else 200
        left = self.window.remaining if self.window else total - 1
        return {
            "X-RateLimit-Total": str(total),
            "X-RateLimit-Remaining": str(left if remaining is None else remaining),
            "X-RateLimit-Used-CurrentRequest": "1",
        }

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.json_response(
            body,
            status=status,
            headers={**self.limit_headers(), **(headers or {})},
            dumps=lambda obj: orjson.dumps(obj).decode(),
        )

    def too_many(self, wait: float) -> web.Response:
        headers = {**self.limit_headers(remaining=0), "Retry-After": str(math.ceil(wait))}
        return web.json_response(
            {"code": "rate_limit_exceeded", "message": "You have exceeded the limit of requests per minute"},
            status=429,
            headers=headers,
        )

    def invalid(self, *errors: dict[str, str]) -> web.Response:
        return self.answer({"description": "Validation failed", "errors": list(errors)}, status=400)

    def unauthorized(self, request: web.Request) -> web.Response:
        body = {"code": "invalid_credentials", "message": "You have to be logged in to perform this action."}
        return self.answer(body, status=401)

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        if status == 415:
            return self.answer({"code": "invalid_content_type", "message": "Content-Type must be JSON"}, 415)
        return self.invalid(_INVALID_JSON)

    # -- tickets -----------------------------------------------------------------------------

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        """Every problem in one answer: the schema's, then the helpdesk's own."""
        if not isinstance(body, dict):
            return self.invalid(_INVALID_JSON)
        errors = [_field_error(e) for e in sorted(_VALIDATOR.iter_errors(body), key=str)]
        if not any(body.get(name) for name in REQUESTER_FIELDS):
            errors.append(
                {"field": "requester_id", "message": "Please fill at least 1 of requester_id, email, phone,"
                 " twitter_id, facebook_id, unique_external_id fields", "code": "missing_field"}
            )  # fmt: skip
        if body.get("phone") and not body.get("email") and not body.get("requester_id") and not body.get("name"):
            errors.append({"field": "name", "message": "It should be a/an String", "code": "missing_field"})
        if isinstance(body.get("type"), str) and body["type"] not in self.types:
            values = ",".join(self.types)
            errors.append(
                {"field": "type", "message": f"It should be one of these values: '{values}'", "code": "invalid_value"}
            )
        return self.invalid(*errors) if errors else None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        ticket_id = next(self._ids)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ticket = {
            "id": ticket_id,
            "subject": body["subject"],
            "description": body.get("description", ""),
            "description_text": re.sub(r"<[^>]+>", " ", str(body.get("description", ""))).strip(),
            "status": body.get("status", 2),
            "priority": body.get("priority", 1),
            "source": body.get("source", 2),
            "type": body.get("type"),
            "tags": body.get("tags", []),
            "requester_id": body.get("requester_id", 1000 + ticket_id),
            "custom_fields": body.get("custom_fields", {}),
            "created_at": now,
            "updated_at": now,
        }
        self.created_at[str(ticket_id)] = time.monotonic()
        return str(ticket_id), {**ticket, "request": body}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return _public(record), {"Location": f"{self.base_url}/api/v2/tickets/{record_id}"}

    # -- search and agents/me ----------------------------------------------------------------

    async def admit(self, request: web.Request) -> web.Response | None:
        denied = await super().admit(request)
        if denied is None and request.path == SEARCH_PATH and not _TAG_QUERY.match(request.query.get("query", "")):
            return self.invalid({"field": "query", "message": "Given query is invalid", "code": "invalid_value"})
        return denied

    def matches(self, object_type: str, record: dict[str, Any], query: Mapping[str, str]) -> bool:
        match = _TAG_QUERY.match(query.get("query", ""))
        assert match is not None  # admit refused any other query
        visible = self.created_at[str(record["id"])] <= time.monotonic() - self.search_lag
        return visible and match.group(1) in record["tags"]

    def found(self, object_type: str, record_id: str, record: dict[str, Any]) -> Any:
        return _public(record)

    def listing(self, find: FindCall, hits: list[Any], query: MultiMapping[str]) -> Any:
        return {"results": hits, "total": len(hits)}

    def whoami(self, who: str) -> Any:
        return {"id": 1, "available": True, "contact": {"name": "Octopus", "email": "bot@example.com"}}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "request"}
