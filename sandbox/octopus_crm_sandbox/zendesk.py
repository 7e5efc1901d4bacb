"""A Zendesk Support fake: ``POST /api/v2/tickets`` with ``Idempotency-Key``, lookup by
``external_id``, ``GET /api/v2/users/me``.

The envelope (who may call, the create, lookup and ``users/me`` routes, JSON parsing, the
idempotency-key replay) comes from the adapter's spec (specfake.py): basic
``{email}/token:{apiToken}``, or an OAuth bearer token. Create bodies are validated with
``jsonschema`` against the ticket fragment in ``specs/zendesk_ticket_create.json``; unknown ticket
properties are accepted and ignored, as Zendesk does (kept in ``record["ignored"]`` so tests can see
them). Errors are Zendesk's ``{"error", "description", "details"}``; a bad credential gets
``{"error": "Couldn't authenticate you"}`` 401. An idempotency key replays the first answer for the
same body (``x-idempotency-lookup: hit``) and refuses another body under the same key. Every answer
carries ``X-Rate-Limit``/``X-Rate-Limit-Remaining`` and ``ratelimit-limit/-remaining/-reset``; the
limit answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
from aiohttp import web
from multidict import MultiMapping

from octopus_crm.adapters.spec import CreateCall, FindCall
from octopus_crm.adapters.zendesk import SPEC as ZENDESK
from octopus_crm.adapters.zendesk import TICKETS_PATH
from octopus_crm_sandbox.specfake import Created, Refusal, SpecFake

__all__ = ["ZendeskFake"]

_SPEC = json.loads((Path(__file__).resolve().parent / "specs" / "zendesk_ticket_create.json").read_text("utf-8"))
_CREATE = jsonschema.Draft202012Validator(_SPEC["schema"], format_checker=jsonschema.FormatChecker())
_KNOWN = frozenset(_SPEC["schema"]["properties"]["ticket"]["properties"])
_READ_ONLY = frozenset(_SPEC["readOnly"])
_IDEMPOTENCY_TTL = 2 * 3600.0


class ZendeskFake(SpecFake):
    name = "zendesk"
    spec = ZENDESK
    ENV: ClassVar[dict[str, str]] = {
        "ZENDESK_EMAIL": "octopus-bot@example.com",
        "ZENDESK_API_TOKEN": "zd-fake-api-token-6wiIBWbGkBMo1mRDMuVwkw1EPsNkeUj95PIz2akv",
    }

    def __init__(
        self,
        *,
        email: str = ENV["ZENDESK_EMAIL"],
        api_token: str = ENV["ZENDESK_API_TOKEN"],
        access_token: str = "zd-oauth-fake-access-token",
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"email": email, "apiToken": api_token, "accessToken": access_token}, **kw)
        self._ids = itertools.count(35436)
        self._user_ids = itertools.count(9001)
        self.users: dict[str, int] = {}  # requester e-mail → user id

    @property
    def replayed(self) -> int:
        """Creates answered from an idempotency key's first answer."""
        return self.replays

    def limited_paths(self) -> tuple[str, ...]:
        return ("/api/v2/",)

    # -- shapes ------------------------------------------------------------------------------

    def limit_headers(self) -> dict[str, str]:
        limit = self.window.limit if self.window else 700
        remaining = self.window.remaining if self.window else limit
        per = int(self.window.per) if self.window else 60
        return {
            "X-Rate-Limit": str(limit),
            "X-Rate-Limit-Remaining": str(remaining),
            "ratelimit-limit": str(limit),
            "ratelimit-remaining": str(remaining),
            "ratelimit-reset": str(per - int(time.time()) % per),
        }

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers={**self.limit_headers(), **(headers or {})})

    def fail(self, status: int, error: str, description: str = "", **details: str) -> web.Response:
        body: dict[str, Any] = {"error": error}
        if description:
            body["description"] = description
        if details:
            body["details"] = {name: [{"description": text, "error": "InvalidValue"}] for name, text in details.items()}
        return self.answer(body, status)

    def too_many(self, wait: float) -> web.Response:
        seconds = max(1, math.ceil(wait))
        headers = {**self.limit_headers(), "Retry-After": str(seconds), "ratelimit-reset": str(seconds)}
        headers["X-Rate-Limit-Remaining"] = headers["ratelimit-remaining"] = "0"
        body = {"error": "APIRateLimitExceeded", "description": "Number of allowed API requests per minute exceeded"}
        return web.json_response(body, status=429, headers=headers)

    def unauthorized(self, request: web.Request) -> web.Response:
        return self.answer({"error": "Couldn't authenticate you"}, 401)

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        if status == 415:
            return self.fail(415, "UnsupportedMediaType", "Content-Type must be application/json")
        return self.fail(400, "InvalidJSON", "The request body is not valid JSON")

    # -- tickets -----------------------------------------------------------------------------

    def idempotency_key(self, call: CreateCall, body: Any, request: web.Request) -> str | None:
        """The key, if any; a key used with another body (within its two hours) is refused."""
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if len(key) > 255:
            raise Refusal(self.fail(400, "InvalidIdempotencyKey", "Idempotency-Key must be at most 255 characters"))
        first = self.records.get(self.by_key.get(key, ""))
        if first is not None and time.monotonic() - first["at"] >= _IDEMPOTENCY_TTL:
            del self.by_key[key]
        elif first is not None and first["sent"] != body:
            raise Refusal(
                self.fail(400, "IdempotentRequestError", "The idempotency key was used with a different request")
            )
        return key

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        problems = {"/".join(map(str, e.path)) or "body": e.message for e in _CREATE.iter_errors(body)}
        if not problems:
            problems = dict.fromkeys(sorted(_READ_ONLY & set(body["ticket"])), "read-only")
        return self.fail(422, "RecordInvalid", "Record validation errors", **problems) if problems else None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        ticket = body["ticket"]
        ticket_id = next(self._ids)
        requester = ticket.get("requester") or {}
        email = str(requester.get("email") or "")
        requester_id = ticket.get("requester_id") or (
            self.users.setdefault(email, next(self._user_ids)) if email else 1  # 1: the API user
        )
        comment = ticket["comment"]
        stored = {
            "id": ticket_id,
            "url": f"{self.base_url}/api/v2/tickets/{ticket_id}.json",
            "subject": ticket.get("subject", ""),
            "description": comment.get("body") or comment.get("html_body"),
            "priority": ticket.get("priority"),
            "type": ticket.get("type"),
            "status": ticket.get("status", "new"),
            "tags": ticket.get("tags", []),
            "requester_id": requester_id,
            "external_id": ticket.get("external_id"),
            "custom_fields": ticket.get("custom_fields", []),
        }
        record = {"ticket": stored, "body": ticket, "requester": requester, "ignored": sorted(set(ticket) - _KNOWN)}
        return str(ticket_id), {**record, "sent": body, "at": time.monotonic()}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        audit = {"id": int(record_id) * 10, "ticket_id": int(record_id), "events": [{"type": "Create"}]}
        lookup = {"x-idempotency-lookup": "miss"} if "Idempotency-Key" in request.headers else {}
        return {"ticket": record["ticket"], "audit": audit}, lookup

    def replay_answer(self, call: CreateCall, record_id: str, request: web.Request) -> web.Response:
        answer, _ = self.created(call, record_id, self.records[record_id], request)
        return self.answer(answer, 201, {"x-idempotency-lookup": "hit"})

    # -- lookup by external_id, users/me -----------------------------------------------------

    def matches(self, object_type: str, record: dict[str, Any], query: MultiMapping[str]) -> bool:
        return "external_id" not in query or record["ticket"]["external_id"] == query["external_id"]

    def found(self, object_type: str, record_id: str, record: dict[str, Any]) -> Any:
        return record["ticket"]

    def listing(self, find: FindCall, hits: list[Any], query: MultiMapping[str]) -> Any:
        return {"tickets": hits, "next_page": None, "previous_page": None, "count": len(hits)}

    def whoami(self, who: str) -> Any:
        return {"user": {"id": 1, "name": "Octopus Bot", "email": self.accepted["email"], "role": "admin"}}

    def extra_routes(self) -> list[web.RouteDef]:
        """The ``.json`` spellings Zendesk accepts for the same endpoints."""
        create = self._create_handler("ticket", ZENDESK.objects["ticket"])
        return [web.post(TICKETS_PATH + ".json", create), web.get("/api/v2/users/me.json", self._whoami)]
