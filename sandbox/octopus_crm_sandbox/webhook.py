"""A webhook receiver: stores every delivery, answers 201 with an id.

It deduplicates on ``Idempotency-Key`` the way a careful receiver would, so a redelivered event
shows up as a replay, not as a second record; ``deliveries`` keeps arrival order for ordering
checks. The create route, the key's header and the answer's id and URL come from the adapter's
spec (sandbox/octopus_crm_sandbox/specfake.py); the route is ``/hooks/{name}``, the configured URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
from aiohttp import web

from octopus_crm.adapters.spec import CreateCall
from octopus_crm.adapters.webhook import SPEC as WEBHOOK
from octopus_crm_sandbox.specfake import Created, Refusal, SpecFake

__all__ = ["WebhookFake"]


class WebhookFake(SpecFake):
    name = "webhook"
    spec = WEBHOOK
    ENV: ClassVar[dict[str, str]] = {}

    def __init__(self, *, token: str | None = None, dedupe: bool = True, **kw: Any) -> None:
        super().__init__(accepted={"token": token} if token else {}, **kw)
        self.token = token
        self.dedupe = dedupe
        self.deliveries: list[dict[str, Any]] = []

    def endpoints(self) -> dict[str, Any]:
        return {"url": f"{self.base_url}/hooks/demo", "allowPrivateNetwork": True}  # the fakes listen on loopback

    def create_path(self, object_type: str, call: CreateCall) -> str:
        return "/hooks/{name}"

    def extra_routes(self) -> list[web.RouteDef]:
        return [web.get("/records", self.list_records)]

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return web.json_response({"error": "; ".join(messages)}, status=status)

    async def admit(self, request: web.Request) -> web.Response | None:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.error(401, ["unauthorized"])
        return None

    async def read_body(self, object_type: str, request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read())  # any content type
        except orjson.JSONDecodeError:
            raise Refusal(self.error(400, ["invalid JSON"])) from None

    def idempotency_key(self, call: CreateCall, body: Any, request: web.Request) -> str | None:
        return super().idempotency_key(call, body, request) if self.dedupe else None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        record_id = self.new_id("wh_")
        delivery = {
            "id": record_id,
            "hook": request.match_info["name"],
            "eventId": request.headers.get("X-Octopus-Event-Id"),
            "idempotencyKey": request.headers.get("Idempotency-Key"),
            "body": body,
        }
        self.deliveries.append(delivery)
        return record_id, delivery

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return {"id": record_id, "url": f"{self.base_url}/records#{record_id}"}, {}

    def replay_answer(self, call: CreateCall, record_id: str, request: web.Request) -> web.Response:
        return web.json_response({"id": record_id, "replayed": True}, status=200)

    async def list_records(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.deliveries), "records": self.deliveries[-100:]})
