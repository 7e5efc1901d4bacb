"""The admin HTTP servers: ``/metrics``, ``/healthz``, ``/readyz`` for probes and scraping, and
the seed's admin API (``/api/*``) on a port of its own.

The probe port is open (kubelet and Prometheus need no credentials). The API requires
``Authorization: Bearer <token>`` (compared in constant time); without a configured token it
listens on 127.0.0.1 only and answers only requests addressed to a loopback host (a DNS-rebinding
page cannot reach it). It takes JSON bodies only (415 otherwise), so a cross-site form or
``text/plain`` post cannot fire it.

The configuration stays a file (GitOps): ``configure`` validates a new version exactly as
``validate-config`` does and writes it atomically (:mod:`octopus_crm.daemon.config_versions`; 409 where the
file is read-only), and every replica's watcher loads it (:mod:`octopus_crm.daemon.reload`). Nothing here
echoes a credential: integrations are served with credential and header names only, and every
answer is scrubbed. ``test-connection`` makes the vendor's cheapest authenticated read (never a
create) for a configured integration or a candidate ``{type, config}``, outside the delivery
limiter, at most a few per minute per integration. ``/admin`` serves the console page (static
files, no data; its calls carry the token like any other client).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import structlog
from aiohttp import web
from aiolimiter import AsyncLimiter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from octopus_crm.adapters.base import Adapter
from octopus_crm.adapters.registry import describe
from octopus_crm.core.errors import ConfigError, DeliveryError
from octopus_crm.core.redaction import redact_value, register_secret
from octopus_crm.daemon import metrics
from octopus_crm.daemon.admin_config import (
    CANDIDATE_MAX_RESPONSE_BYTES,
    BadRequest,
    candidate_adapter,
    dry_run,
    prepare_configure,
)
from octopus_crm.daemon.admin_openapi import openapi
from octopus_crm.daemon.config import ConfigFileError, CrmConfig, read_raw
from octopus_crm.daemon.config_versions import MASK, ConfigWriter, ConfigWriteRefused
from octopus_crm.daemon.consumer import Health
from octopus_crm.daemon.dispatch import Dispatcher
from octopus_crm.daemon.net import bound_port
from octopus_crm.daemon.operator_errors import OperatorError
from octopus_crm.daemon.reload import ConfigReloader
from octopus_crm.daemon.sync_status import sync_status

__all__ = ["AdminServer"]

log = structlog.get_logger("octopus.admin")

_STATIC_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css", "json": "application/json"}
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
        config_path: str | None = None,
        config_overlay_path: str | None = None,
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
        self.version = "unknown"
        self.reloader: ConfigReloader | None = None
        self.writer = ConfigWriter(config_path, config_overlay_path) if config_path else None
        self._configuring = asyncio.Lock()  # one read-modify-write of the file at a time

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
                web.post("/api/crm/configure", self.configure),
                web.get("/api/crm/sync-status/{integration_id}", self.sync_status),
                web.get("/api/openapi.json", self.openapi),
                web.get("/admin", self.console),
                web.get("/admin/", self.console),
                web.get("/admin/{name}", self.console_file),
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
        try:
            await site.start()
        except OSError as exc:
            raise OperatorError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another process holds the port; "
                "choose another with OCTOPUS_CRM_METRICS_PORT / OCTOPUS_CRM_ADMIN_PORT"
            ) from None
        return bound_port(site) if port == 0 else port

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        page = request.method in ("GET", "HEAD") and (request.path == "/admin" or request.path.startswith("/admin/"))
        if self.token is not None and page:
            pass  # the page's files hold no data; the page sends the token with each API call
        elif self.token is not None:
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
        headers = {"X-Config-Version": self.version}
        if self.config is None:
            return _answer([], headers=headers)
        return _answer(
            [{**self._public(i.id), "configVersion": self.version} for i in self.config.crmIntegrations],
            headers=headers,
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return _answer(openapi())

    async def console(self, request: web.Request) -> web.StreamResponse:
        return await self._static("index.html")

    async def console_file(self, request: web.Request) -> web.StreamResponse:
        return await self._static(request.match_info["name"])

    async def _static(self, name: str) -> web.StreamResponse:
        kind = _STATIC_TYPES.get(name.rpartition(".")[2])
        folder = resources.files("octopus_crm.daemon").joinpath("static/admin")
        if kind is None or "/" in name or name.startswith(".") or not folder.joinpath(name).is_file():
            return _answer({"error": "Not Found"}, status=404)
        return web.Response(
            body=folder.joinpath(name).read_bytes(),
            content_type=kind,
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest([("", "body must be JSON")]) from None
        if not isinstance(body, dict):
            raise BadRequest([("", "body must be a JSON object")])
        return body

    def _limited(self, key: str) -> web.Response | None:
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
        return None

    async def test_connection(self, request: web.Request) -> web.Response:
        """``{integrationId}`` tests the running adapter; the seed's ``{type, config}`` tests a
        candidate (validated like the file, short timeouts, capped answer) and discards it."""
        try:
            body = await self._json_body(request)
            candidate = "type" in body
            if candidate:
                raw = self._raw_or_none() if "id" in body else None
                adapter = candidate_adapter(body, raw=raw)
                key = f"candidate:{body.get('id') or body['type']}"
            else:
                integration_id = body.get("integrationId") or body.get("id")
                found = self.adapters.get(str(integration_id))
                if found is None:
                    return _answer({"success": False, "error": f"unknown integration {integration_id!r}"}, status=404)
                adapter, key = found, str(integration_id)
        except BadRequest as exc:
            error = {"class": "config", "code": "invalid_config", "message": str(exc)[:1000]}
            return _answer({"success": False, "error": error, "errors": exc.as_list()}, status=400)
        limited = self._limited(key)
        if limited is not None:
            if candidate:
                await adapter.aclose()
            return limited
        await self._test_limiters[key].acquire()  # has capacity: returns at once
        self._test_running.add(key)
        shown = {} if candidate else {"integrationId": key}
        started = time.monotonic()
        try:
            if candidate:
                await adapter.start()
                http = getattr(adapter, "http", None)
                if http is not None:
                    http.max_response_bytes = CANDIDATE_MAX_RESPONSE_BYTES
            await asyncio.wait_for(adapter.test_connection(), _TEST_TIMEOUT_S)
        except ConfigError as exc:
            latency = _ms(started)
            if exc.code != "not_testable":
                return _answer(
                    {"success": False, "tested": True, **shown, "latencyMs": latency, "error": exc.as_dict()}
                )
            return _answer({"success": False, "tested": False, **shown, "reason": exc.message})
        except DeliveryError as exc:
            return _answer(
                {"success": False, "tested": True, **shown, "latencyMs": _ms(started), "error": exc.as_dict()}
            )
        except TimeoutError:
            error = {"class": "retryable", "code": "timeout", "message": f"no answer within {_TEST_TIMEOUT_S:g}s"}
            return _answer({"success": False, "tested": True, **shown, "latencyMs": _ms(started), "error": error})
        finally:
            self._test_running.discard(key)
            if candidate:
                await adapter.aclose()
        return _answer({"success": True, "tested": True, **shown, "latencyMs": _ms(started)})

    def _raw_or_none(self) -> dict[str, Any] | None:
        if self.writer is None:
            return None
        try:
            return read_raw(self.writer.path)
        except ConfigFileError:
            return None

    async def configure(self, request: web.Request) -> web.Response:
        """The seed's ``{type, config, enabled}`` (plus ``id``, ``name``, ``rules``): validated as
        validate-config does; ``dryRun`` routes sample (or given) events through it; otherwise
        written as a new version of the file and loaded on this replica at once."""
        if self.writer is None:
            reason = "this daemon was started without a configuration file to write"
            return _answer({"success": False, "reason": reason, "error": reason}, status=409)
        async with self._configuring:
            return await self._configure(request, self.writer)

    async def _configure(self, request: web.Request, writer: ConfigWriter) -> web.Response:
        try:
            body = await self._json_body(request)
            dry = body.get("dryRun", False)
            if not isinstance(dry, bool):
                raise BadRequest([("dryRun", "must be true or false")])
            prepared = await asyncio.to_thread(prepare_configure, body, writer)
            if dry:
                results = dry_run(prepared.config, body.get("events"))
                reached = any(
                    step["integrationId"] == prepared.integration_id
                    for result in results
                    for route in result["routes"]
                    for step in route["chain"]
                )
                return _answer(
                    {
                        "success": True,
                        "dryRun": True,
                        "integrationId": prepared.integration_id,
                        "created": prepared.created,
                        "reached": reached,  # false: the strategy sends none of these events to it
                        "results": results,
                    }
                )
        except BadRequest as exc:
            message = "; ".join(f"{p or '<root>'}: {m}" for p, m in exc.errors)[:2000]
            return _answer({"success": False, "error": message, "errors": exc.as_list()}, status=exc.status)
        try:
            version = await asyncio.to_thread(writer.write, prepared.tree, prepared.secret_files)
        except ConfigWriteRefused as exc:
            return _answer({"success": False, "reason": exc.reason, "error": exc.reason}, status=409)
        applied = False
        if self.reloader is not None:
            result = await self.reloader.check()
            applied = result.applied or self.version == version
        log.info("configuration written", integration=prepared.integration_id, version=version, applied=applied)
        integration = prepared.config.integration(prepared.integration_id)
        public = redact_value(
            integration.model_dump(mode="json", by_alias=True, exclude={"config": {"credentials", "headers"}})
        )
        # Write-only: the names come back, each value as "***" (set after scrubbing, which would
        # otherwise turn a secret-named key's "***" into "[REDACTED]").
        public["config"]["credentials"] = dict.fromkeys(integration.config.credentials, MASK)
        public["config"]["headers"] = dict.fromkeys(integration.config.extra("headers") or {}, MASK)
        answer = {
            "success": True,
            "dryRun": False,
            "integrationId": prepared.integration_id,
            "created": prepared.created,
            "version": version,
            "applied": applied,
        }
        return web.json_response({**redact_value(answer), "integration": public})

    async def sync_status(self, request: web.Request) -> web.Response:
        integration_id = request.match_info["integration_id"]
        if self.config is None:
            return _answer({"error": f"unknown integration {integration_id!r}"}, status=404)
        try:
            integration = self.config.integration(integration_id)
        except KeyError:
            return _answer({"error": f"unknown integration {integration_id!r}"}, status=404)
        breaker = self.dispatcher.breakers.get(integration_id) if self.dispatcher else None
        status = sync_status(integration_id, self.adapters.get(integration_id), breaker, enabled=integration.enabled)
        return _answer({**status, "configVersion": self.version})


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
