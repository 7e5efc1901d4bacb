"""The admin HTTP servers: ``/metrics``, ``/healthz``, ``/readyz`` for probes and scraping, and
the seed's admin API (``/api/*``) on a port of its own.

The probe port is open (kubelet and Prometheus need no credentials). The API requires
``Authorization: Bearer <token>`` (compared in constant time); without a configured token it
listens on 127.0.0.1 only and answers only requests addressed to a loopback host (a DNS-rebinding
page cannot reach it). It takes JSON bodies only (415 otherwise), so a cross-site form or
``text/plain`` post cannot fire it.

Read-only by design: the configuration is a file (GitOps), so the API lists, tests and reports but
never rewrites it. Nothing here echoes a credential: integrations are served with credential and
header names only, and every answer is scrubbed. ``test-connection`` makes the vendor's cheapest
authenticated read (never a create), outside the delivery limiter, at most a few per minute per
integration.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from aiolimiter import AsyncLimiter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.base import Adapter
from adapters.errors import ConfigError, DeliveryError
from adapters.registry import describe
from daemon import metrics
from daemon.config import CrmConfig
from daemon.consumer import Health
from daemon.dispatch import Dispatcher
from daemon.net import bound_port
from octopus_crm.core.redaction import redact_value, register_secret

__all__ = ["AdminServer"]

log = structlog.get_logger("octopus.admin")

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_TEST_TIMEOUT_S = 30.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answer(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """Every API answer leaves through here, scrubbed of anything that looks like a secret."""
    return web.json_response(redact_value(data), status=status, headers=headers)


def _host_name(host: str | None) -> str:
    host = (host or "").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


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
        api_host: str | None = None,
        api_port: int = 9465,
        token: str | None = None,
        test_connections_per_minute: int = 6,
    ) -> None:
        self.health = health
        self.also_alive = also_alive
        self.config = config
        self.adapters = adapters or {}
        self.dispatcher = dispatcher
        self.host = host
        self.port = port
        self.token = token or None
        if self.token is not None:
            register_secret(self.token)
        self.api_host = self._api_host(api_host)
        self.api_port = api_port
        self.test_connections_per_minute = test_connections_per_minute
        self._test_limiters: dict[str, AsyncLimiter] = {}
        self._test_running: set[str] = set()
        self._runners: list[web.AppRunner] = []

    def _api_host(self, requested: str | None) -> str:
        if self.token is not None:
            return requested or "0.0.0.0"
        if requested and _host_name(requested) not in _LOOPBACK_HOSTS:
            log.warning(
                "admin API has no token: listening on 127.0.0.1 only", requested=requested, setting="ADMIN_TOKEN"
            )
        return "127.0.0.1"

    def app(self) -> web.Application:
        """Probes and scraping: open, no credentials."""
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
            ]
        )
        return app

    def api_app(self) -> web.Application:
        """The admin API: bearer token (or loopback only), JSON only, answers scrubbed."""
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.add_routes(
            [
                web.get("/api/crm/supported", self.supported),
                web.get("/api/crm/integrations", self.integrations),
                web.post("/api/crm/test-connection", self.test_connection),
                web.get("/api/crm/sync-status/{integration_id}", self.sync_status),
            ]
        )
        return app

    async def start(self) -> None:
        self.port = await self._serve(self.app(), self.host, self.port)
        self.api_port = await self._serve(self.api_app(), self.api_host, self.api_port)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port)
        await site.start()
        return bound_port(site) if port == 0 else port

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None:
            scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), self.token.encode()):
                return _answer(
                    {"error": "unauthorized: send Authorization: Bearer <admin token>"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="octopus-crm-admin"'},
                )
        elif _host_name(request.host) not in _LOOPBACK_HOSTS:
            return _answer({"error": "the admin API without a token answers loopback requests only"}, status=403)
        if (request.method not in ("GET", "HEAD") or request.body_exists) and request.content_type != (
            "application/json"
        ):
            return _answer({"error": "the admin API accepts application/json bodies only"}, status=415)
        try:
            return await handler(request)
        except web.HTTPException as exc:  # 404/405 as JSON, like every other answer
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return _answer({"error": exc.reason}, status=exc.status, headers=allow)

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
        return _answer(describe())

    def _public(self, integration_id: str) -> dict[str, Any]:
        assert self.config is not None
        integration = self.config.integration(integration_id)
        data = integration.model_dump(mode="json", by_alias=True, exclude={"config": {"credentials"}})
        data["config"]["credentials"] = sorted(integration.config.credentials)
        headers = data["config"].get("headers")
        if isinstance(headers, dict):  # header values are secrets (Authorization, signatures)
            data["config"]["headers"] = sorted(headers)
        return data  # URLs keep their shape; _answer scrubs their userinfo and secret query values

    async def integrations(self, request: web.Request) -> web.Response:
        if self.config is None:
            return _answer([])
        return _answer([self._public(i.id) for i in self.config.crmIntegrations])

    async def test_connection(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _answer({"success": False, "error": "body must be JSON"}, status=400)
        integration_id = body.get("integrationId") or body.get("id") if isinstance(body, dict) else None
        adapter = self.adapters.get(str(integration_id))
        if adapter is None:
            return _answer({"success": False, "error": f"unknown integration {integration_id!r}"}, status=404)
        key = str(integration_id)
        limiter = self._test_limiters.setdefault(key, AsyncLimiter(self.test_connections_per_minute, 60.0))
        if key in self._test_running or not limiter.has_capacity():
            retry_after = max(1, round(60.0 / self.test_connections_per_minute))
            return _answer(
                {
                    "success": False,
                    "integrationId": key,
                    "error": f"at most {self.test_connections_per_minute} connection tests a minute per integration",
                },
                status=429,
                headers={"Retry-After": str(retry_after)},
            )
        await limiter.acquire()  # has capacity: returns at once
        self._test_running.add(key)
        try:
            await asyncio.wait_for(adapter.test_connection(), _TEST_TIMEOUT_S)
        except ConfigError as exc:
            if exc.code != "not_testable":
                return _answer({"success": False, "tested": True, "integrationId": key, "error": exc.as_dict()})
            return _answer({"success": False, "tested": False, "integrationId": key, "reason": exc.message})
        except DeliveryError as exc:
            return _answer({"success": False, "tested": True, "integrationId": key, "error": exc.as_dict()})
        except TimeoutError:
            error = {"class": "retryable", "code": "timeout", "message": f"no answer within {_TEST_TIMEOUT_S:g}s"}
            return _answer({"success": False, "tested": True, "integrationId": key, "error": error})
        finally:
            self._test_running.discard(key)
        return _answer({"success": True, "tested": True, "integrationId": key})

    async def sync_status(self, request: web.Request) -> web.Response:
        integration_id = request.match_info["integration_id"]
        if self.config is None or integration_id not in self.adapters:
            return _answer({"error": f"unknown integration {integration_id!r}"}, status=404)
        outcomes: dict[str, float] = {}
        for sample in next(iter(metrics.OUTCOMES.collect())).samples:
            if sample.name.endswith("_total") and sample.labels.get("integration") == integration_id:
                outcomes[sample.labels["status"]] = sample.value
        breaker = self.dispatcher.breakers.get(integration_id) if self.dispatcher else None
        return _answer(
            {
                "integrationId": integration_id,
                "circuit": breaker.state.name.lower() if breaker else "unknown",
                "outcomes": outcomes,
            }
        )
