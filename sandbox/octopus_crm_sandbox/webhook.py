"""A webhook receiver: stores every delivery, answers 201 with an id.

It deduplicates on ``Idempotency-Key`` the way a careful receiver would, so a redelivered event
shows up as a replay, not as a second record; ``deliveries`` keeps arrival order for ordering
checks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from aiohttp import web

from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["WebhookFake"]


class WebhookFake(FakeVendor):
    name = "webhook"
    ENV: ClassVar[dict[str, str]] = {}

    def __init__(self, *, token: str | None = None, dedupe: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.token = token
        self.dedupe = dedupe
        self.deliveries: list[dict[str, Any]] = []
        self.by_key: dict[str, str] = {}
        self.replays = 0

    def endpoints(self) -> dict[str, Any]:
        return {"url": f"{self.base_url}/hooks/demo", "allowPrivateNetwork": True}  # the fakes listen on loopback

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/hooks/{name}", self.receive), web.get("/records", self.list_records)]

    async def receive(self, request: web.Request) -> web.Response:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        key = request.headers.get("Idempotency-Key")
        if self.dedupe and key and key in self.by_key:
            self.replays += 1
            return web.json_response({"id": self.by_key[key], "replayed": True}, status=200)
        record_id = self.new_id("wh_")
        if key:
            self.by_key.setdefault(key, record_id)
        delivery = {
            "id": record_id,
            "hook": request.match_info["name"],
            "eventId": request.headers.get("X-Octopus-Event-Id"),
            "idempotencyKey": key,
            "body": body,
        }
        self.records[record_id] = delivery
        self.deliveries.append(delivery)
        return web.json_response({"id": record_id, "url": f"{self.base_url}/records#{record_id}"}, status=201)

    async def list_records(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.deliveries), "records": self.deliveries[-100:]})
