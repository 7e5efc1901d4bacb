"""A Pipedrive fake: v2 persons/deals/activities, v1 leads, person search, lists by person.

Who may call (the ``x-api-token`` header or an OAuth bearer token) and the token route come from the
adapter's spec (specfake.py's SpecEnvelope); the routes are the fake's own, as its ``store`` (kind →
id → record, read by the tests) would shadow SpecFake's ``store`` hook. Create bodies are validated
with ``jsonschema`` against the fragments in ``specs/pipedrive_create.json``; a lead must name an
existing person or organisation; leads and v2 bodies must be JSON. Errors are ``{"success": false,
"error", "error_info", "data": null}``; the retired v1 person/deal/activity creates answer 410.
Answers carry ``x-ratelimit-limit/ -remaining/-reset`` (the burst window) and, on POST,
``x-daily-requests-left``; a spent burst window answers 429 with ``Retry-After``, a spent
``daily_budget`` 429 with ``x-daily-requests-left: 0``. ``search_lag`` hides new persons from search
for a while.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.pipedrive import SPEC as PIPEDRIVE
from octopus_crm_sandbox.specfake import SpecEnvelope

__all__ = ["PipedriveFake"]

_SCHEMAS = json.loads((Path(__file__).resolve().parent / "specs" / "pipedrive_create.json").read_text("utf-8"))
_VALIDATORS = {name: jsonschema.Draft202012Validator(_SCHEMAS[name]) for name in ("person", "deal", "activity", "lead")}
_OUT_OF_SUPPORT = (
    "This endpoint is out of support since 2026-08-01. Use the API v2 equivalent: "
    "https://developers.pipedrive.com/changelog/post/deprecated-apiv1-endpoints-become-out-of-support"
)


class PipedriveFake(SpecEnvelope):
    name = "pipedrive"
    spec = PIPEDRIVE
    ENV: ClassVar[dict[str, str]] = {"PIPEDRIVE_API_TOKEN": "659c9fddb16335e48cc67114694b52074e812e03"}

    def __init__(
        self,
        *,
        api_token: str = ENV["PIPEDRIVE_API_TOKEN"],
        access_token: str = "pd-oauth-fake-access-token",
        client_id: str = "pd-fake-client-id",
        client_secret: str = "pd-fake-client-secret",
        refresh_token: str = "pd-fake-refresh-token",
        daily_budget: int | None = None,
        search_lag: float = 0.0,
        **kw: Any,
    ) -> None:
        accepted = {
            "apiToken": api_token,
            "accessToken": access_token,
            "clientId": client_id,
            "clientSecret": client_secret,
            "refreshToken": refresh_token,
        }
        super().__init__(accepted=accepted, **kw)
        self.daily_budget = daily_budget
        self.search_lag = search_lag
        self.spent = 0
        self._ids = itertools.count(101)
        self.store: dict[str, dict[str, dict[str, Any]]] = {"person": {}, "deal": {}, "activity": {}, "lead": {}}
        self.created_at: dict[str, float] = {}

    def endpoints(self) -> dict[str, Any]:
        return {**super().endpoints(), "oauthUrl": self.base_url}

    def routes(self) -> list[web.RouteDef]:
        return [
            *self.token_routes(),
            web.post("/api/v2/persons", self.creator("person")),
            web.post("/api/v2/deals", self.creator("deal")),
            web.post("/api/v2/activities", self.creator("activity")),
            web.post("/api/v1/leads", self.creator("lead")),
            web.get("/api/v2/persons/search", self.search_persons),
            web.get("/api/v1/leads", self.lister("lead")),
            web.get("/api/v2/deals", self.lister("deal")),
            web.get("/api/v1/users/me", self.me),
            *(web.post(f"/api/v1/{name}", self.retired) for name in ("persons", "deals", "activities")),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/api/",)

    # -- shapes ------------------------------------------------------------------------------

    def limit_headers(self, method: str) -> dict[str, str]:
        limit = self.window.limit if self.window else 80
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(self.window.remaining if self.window else limit),
            "x-ratelimit-reset": str(math.ceil(self.window.per) if self.window else 2),
        }
        if method in ("POST", "PUT") and self.daily_budget is not None:
            headers["x-daily-requests-left"] = str(max(0, self.daily_budget - self.spent))
        return headers

    def ok(self, request: web.Request, data: Any, status: int = 200, **extra: Any) -> web.Response:
        body = {"success": True, "data": data, **extra}
        return web.json_response(body, status=status, headers=self.limit_headers(request.method))

    def fail(self, request: web.Request, status: int, error: str, info: str = "") -> web.Response:
        body = {"success": False, "error": error, "error_info": info or "Please check developers.pipedrive.com"}
        return web.json_response({**body, "data": None}, status=status, headers=self.limit_headers(request.method))

    def too_many(self, wait: float) -> web.Response:
        seconds = max(1, math.ceil(wait))
        headers = {"Retry-After": str(seconds), "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(seconds)}
        headers["x-ratelimit-limit"] = str(self.window.limit if self.window else 0)
        body = {"success": False, "error": "Request over limit", "errorCode": 429, "data": None}
        return web.json_response(body, status=429, headers=headers)

    def unauthorized(self, request: web.Request) -> web.Response:
        return self.fail(request, 401, "You need to be authorized to make this request.")

    # -- handlers ----------------------------------------------------------------------------

    def creator(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if self.caller(request) is None:
                return self.unauthorized(request)
            if self.daily_budget is not None and self.spent >= self.daily_budget:
                headers = {**self.limit_headers("POST"), "x-daily-requests-left": "0"}
                body = {"success": False, "error": "Daily API request budget exceeded", "data": None}
                return web.json_response(body, status=429, headers=headers)
            if request.content_type != "application/json":
                return self.fail(request, 415, "Unsupported content type", "POST bodies must be application/json")
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                return self.fail(request, 400, "Invalid JSON body")
            problems = [
                f"{'/'.join(map(str, e.path)) or kind}: {e.message}" for e in _VALIDATORS[kind].iter_errors(body)
            ]
            if problems:
                return self.fail(request, 400, f"Validation failed: {'; '.join(problems)}")
            for ref, target in (("person_id", "person"), ("deal_id", "deal")):
                if ref in body and str(body[ref]) not in self.store[target]:
                    return self.fail(request, 404, f"{target.capitalize()} not found", f"{ref} {body[ref]}")
            self.spent += 1
            record_id: int | str = str(uuid.uuid4()) if kind == "lead" else next(self._ids)
            record = {"id": record_id, **body, "add_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if kind in ("lead", "deal"):
                record["origin"] = "API"
            self.store[kind][str(record_id)] = record
            self.records[f"{kind}:{record_id}"] = record
            self.created_at[f"{kind}:{record_id}"] = time.monotonic()
            return self.ok(request, record, 201 if kind == "lead" else 200)

        return handler

    async def retired(self, request: web.Request) -> web.Response:
        if self.caller(request) is None:
            return self.unauthorized(request)
        return self.fail(request, 410, "Gone", _OUT_OF_SUPPORT)

    async def search_persons(self, request: web.Request) -> web.Response:
        if self.caller(request) is None:
            return self.unauthorized(request)
        term = request.query.get("term", "").strip().lower()
        fields = request.query.get("fields", "email")
        if len(term) < 2:
            return self.fail(request, 400, "term must be at least 2 characters")
        visible_before = time.monotonic() - self.search_lag
        items = []
        for key, person in self.store["person"].items():
            if self.created_at[f"person:{key}"] > visible_before:
                continue
            values = [
                c.get("value", "").lower() for f in ("emails", "phones") if f[:-1] in fields for c in person.get(f, [])
            ]
            if "name" in fields:
                values.append(str(person.get("name", "")).lower())
            if term in values:
                items.append(
                    {"result_score": 1.0, "item": {"id": person["id"], "type": "person", "name": person["name"]}}
                )
        limit = int(request.query.get("limit", "100"))
        return self.ok(request, {"items": items[:limit]}, additional_data={"next_cursor": None})

    def lister(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if self.caller(request) is None:
                return self.unauthorized(request)
            person = request.query.get("person_id")
            items = [r for r in self.store[kind].values() if person is None or str(r.get("person_id")) == person]
            return self.ok(request, items[: int(request.query.get("limit", "100"))])

        return handler

    async def me(self, request: web.Request) -> web.Response:
        if self.caller(request) is None:
            return self.unauthorized(request)
        return self.ok(request, {"id": 1, "name": "Octopus Bot", "email": "octopus-bot@example.com", "company_id": 7})
