"""The admin HTTP server: ``/metrics``, ``/healthz``, ``/readyz`` and the seed's admin API.

Read-only by design: the configuration is a file (GitOps), so the API lists, tests and reports but
never rewrites it. Nothing here echoes a credential: integrations are served without their
``credentials`` block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.base import Adapter
from adapters.errors import DeliveryError
from adapters.registry import describe
from daemon import metrics
from daemon.config import CrmConfig
from daemon.consumer import Health
from daemon.dispatch import Dispatcher
from daemon.net import bound_port
from daemon.redaction import redact_value

__all__ = ["AdminServer"]


class AdminServer:
    def __init__(
        self,
        *,
        health: Health,
        also_alive: tuple[Health, ...] = (),
        config: CrmConfig | None = None,
        adapters: Mapping[str, Adapter] | None = None,
        dispatcher: Dispatcher | None = None,
        host: str = "0.0.0.0",
        port: int = 9464,
    ) -> None:
        self.health = health
        self.also_alive = also_alive
        self.config = config
        self.adapters = adapters or {}
        self.dispatcher = dispatcher
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/api/crm/supported", self.supported),
                web.get("/api/crm/integrations", self.integrations),
                web.post("/api/crm/test-connection", self.test_connection),
                web.get("/api/crm/sync-status/{integration_id}", self.sync_status),
            ]
        )
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = bound_port(site)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        for health in (self.health, *self.also_alive):
            ok, reason = health.alive()
            if not ok:
                return web.json_response({"status": "unhealthy", "reason": reason}, status=503)
        return web.json_response({"status": "ok", "reason": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok, reason = self.health.ready()
        return web.json_response(
            {"status": "ready" if ok else "not ready", "reason": reason}, status=200 if ok else 503
        )

    async def supported(self, request: web.Request) -> web.Response:
        return web.json_response(describe())

    def _public(self, integration_id: str) -> dict[str, Any]:
        assert self.config is not None
        integration = self.config.integration(integration_id)
        data = integration.model_dump(mode="json", by_alias=True, exclude={"config": {"credentials"}})
        data["config"]["credentials"] = sorted(integration.config.credentials)
        redacted: dict[str, Any] = redact_value(data)  # headers and URLs may carry secrets too
        return redacted

    async def integrations(self, request: web.Request) -> web.Response:
        if self.config is None:
            return web.json_response([])
        return web.json_response([self._public(i.id) for i in self.config.crmIntegrations])

    async def test_connection(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"success": False, "error": "body must be JSON"}, status=400)
        integration_id = body.get("integrationId") or body.get("id") if isinstance(body, dict) else None
        adapter = self.adapters.get(str(integration_id))
        if adapter is None:
            return web.json_response({"success": False, "error": f"unknown integration {integration_id!r}"}, status=404)
        try:
            await adapter.test_connection()
        except DeliveryError as exc:
            return web.json_response({"success": False, "error": exc.as_dict()}, status=200)
        return web.json_response({"success": True, "integrationId": integration_id})

    async def sync_status(self, request: web.Request) -> web.Response:
        integration_id = request.match_info["integration_id"]
        if self.config is None or integration_id not in self.adapters:
            return web.json_response({"error": f"unknown integration {integration_id!r}"}, status=404)
        outcomes: dict[str, float] = {}
        for sample in next(iter(metrics.OUTCOMES.collect())).samples:
            if sample.name.endswith("_total") and sample.labels.get("integration") == integration_id:
                outcomes[sample.labels["status"]] = sample.value
        breaker = self.dispatcher.breakers.get(integration_id) if self.dispatcher else None
        return web.json_response(
            {
                "integrationId": integration_id,
                "circuit": breaker.state.name.lower() if breaker else "unknown",
                "outcomes": outcomes,
            }
        )
