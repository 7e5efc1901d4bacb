"""A Zendesk Support fake: ``POST /api/v2/tickets`` with ``Idempotency-Key``, lookup by
``external_id``, ``GET /api/v2/users/me``.

Who may call comes from the adapter's spec (envelope.py): basic ``{email}/token:{apiToken}``, or
an OAuth bearer token. Create bodies are validated with ``jsonschema`` against the ticket fragment
in ``specs/zendesk_ticket_create.json``; unknown ticket properties are accepted and ignored, as
Zendesk does (kept in ``record["ignored"]`` so tests can see them). Errors are Zendesk's
``{"error", "description", "details"}``; a bad credential gets ``{"error": "Couldn't
authenticate you"}`` 401. An idempotency key replays the first answer for the same body
(``x-idempotency-lookup: hit``) and refuses another body under the same key. Every answer carries
``X-Rate-Limit``/``X-Rate-Limit-Remaining`` and ``ratelimit-limit/-remaining/-reset``; the limit
answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.zendesk import SPEC as ZENDESK
from octopus_crm_sandbox.envelope import caller
from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["ZendeskFake"]

_SPEC = json.loads((Path(__file__).resolve().parent / "specs" / "zendesk_ticket_create.json").read_text("utf-8"))
_CREATE = jsonschema.Draft202012Validator(_SPEC["schema"], format_checker=jsonschema.FormatChecker())
_KNOWN = frozenset(_SPEC["schema"]["properties"]["ticket"]["properties"])
_READ_ONLY = frozenset(_SPEC["readOnly"])
_IDEMPOTENCY_TTL = 2 * 3600.0


class ZendeskFake(FakeVendor):
    name = "zendesk"
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
        super().__init__(**kw)
        self.accepted = {"email": email, "apiToken": api_token, "accessToken": access_token}
        self._ids = itertools.count(35436)
        self._user_ids = itertools.count(9001)
        self.users: dict[str, int] = {}  # requester e-mail → user id
        self.replays: dict[str, tuple[bytes, float, dict[str, Any]]] = {}  # key → (body, at, answer)
        self.replayed = 0

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": self.base_url, "allowPrivateNetwork": True}  # the fakes listen on loopback

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v2/tickets", self.create_ticket),
            web.post("/api/v2/tickets.json", self.create_ticket),
            web.get("/api/v2/tickets", self.list_tickets),
            web.get("/api/v2/users/me", self.me),
            web.get("/api/v2/users/me.json", self.me),
        ]

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

    def answer(self, body: Any, status: int = 200, **headers: str) -> web.Response:
        return web.json_response(body, status=status, headers={**self.limit_headers(), **headers})

    def error(self, status: int, error: str, description: str = "", **details: str) -> web.Response:
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

    def authenticated(self, request: web.Request) -> str | None:
        if request.headers.get("Authorization", "").startswith("Bearer "):
            return caller(ZENDESK.auth["oauth"], request, self.accepted, self)
        return caller(ZENDESK.auth["api_token"], request, self.accepted, self)

    def unauthorized(self) -> web.Response:
        return self.answer({"error": "Couldn't authenticate you"}, 401)

    # -- handlers ----------------------------------------------------------------------------

    async def create_ticket(self, request: web.Request) -> web.Response:
        if self.authenticated(request) is None:
            return self.unauthorized()
        raw = await request.read()
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            if len(key) > 255:
                return self.error(400, "InvalidIdempotencyKey", "Idempotency-Key must be at most 255 characters")
            seen = self.replays.get(key)
            if seen is not None and time.monotonic() - seen[1] < _IDEMPOTENCY_TTL:
                if seen[0] != raw:
                    return self.error(
                        400, "IdempotentRequestError", "The idempotency key was used with a different request"
                    )
                self.replayed += 1
                return self.answer(seen[2], 201, **{"x-idempotency-lookup": "hit"})
        if request.content_type != "application/json":
            return self.error(415, "UnsupportedMediaType", "Content-Type must be application/json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.error(400, "InvalidJSON", "The request body is not valid JSON")
        problems = {"/".join(map(str, e.path)) or "body": e.message for e in _CREATE.iter_errors(body)}
        if problems:
            return self.error(422, "RecordInvalid", "Record validation errors", **problems)
        ticket = body["ticket"]
        read_only = sorted(_READ_ONLY & set(ticket))
        if read_only:
            return self.error(422, "RecordInvalid", "Record validation errors", **dict.fromkeys(read_only, "read-only"))
        answer = self.store(ticket)
        if key is not None:
            self.replays[key] = (raw, time.monotonic(), answer)
        return self.answer(answer, 201, **({"x-idempotency-lookup": "miss"} if key is not None else {}))

    def store(self, ticket: dict[str, Any]) -> dict[str, Any]:
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
        self.records[str(ticket_id)] = {
            "ticket": stored,
            "body": ticket,
            "requester": requester,
            "ignored": sorted(set(ticket) - _KNOWN),
        }
        audit = {"id": ticket_id * 10, "ticket_id": ticket_id, "events": [{"type": "Create"}]}
        return {"ticket": stored, "audit": audit}

    async def list_tickets(self, request: web.Request) -> web.Response:
        if self.authenticated(request) is None:
            return self.unauthorized()
        external_id = request.query.get("external_id")
        tickets = [r["ticket"] for r in self.records.values()]
        if external_id is not None:
            tickets = [t for t in tickets if t["external_id"] == external_id]
        return self.answer({"tickets": tickets, "next_page": None, "previous_page": None, "count": len(tickets)})

    async def me(self, request: web.Request) -> web.Response:
        who = self.authenticated(request)
        if who is None:
            return self.unauthorized()
        email = self.accepted["email"]
        return self.answer({"user": {"id": 1, "name": "Octopus Bot", "email": email, "role": "admin"}})
