"""Shared machinery of the vendor fakes: a real HTTP server on loopback per vendor.

Each fake is a small aiohttp application that enforces its vendor's auth flow and token expiry,
validates request bodies, answers with the vendor's success and error shapes, and enforces a
configurable rate limit with 429 + ``Retry-After``. Tests, the demo and ``octopus-crm sandbox``
run the same fakes.
"""

from __future__ import annotations

import asyncio
import collections
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from octopus_crm.daemon.net import bound_port

__all__ = ["FakeVendor", "Fault", "Recorded", "SandboxServer", "SlidingWindow"]


class SlidingWindow:
    """At most ``limit`` requests in any ``per``-second window; the vendor side of rate limits."""

    def __init__(self, limit: int, per: float) -> None:
        self.limit = limit
        self.per = per
        self._hits: collections.deque[float] = collections.deque()
        self.rejected = 0
        self.accepted = 0

    def hit(self) -> float | None:
        """Count one request; return seconds to wait if it is over the limit."""
        now = time.monotonic()
        while self._hits and self._hits[0] <= now - self.per:
            self._hits.popleft()
        if len(self._hits) >= self.limit:
            self.rejected += 1
            return self._hits[0] + self.per - now
        self._hits.append(now)
        self.accepted += 1
        return None

    @property
    def remaining(self) -> int:
        """Requests still allowed in the window as of the last :meth:`hit` (rate-limit headers)."""
        return max(0, self.limit - len(self._hits))


@dataclass
class Recorded:
    """One request a fake received, as it arrived on the wire."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    """An injected failure: answer ``status`` with ``body`` (and headers) instead of working.

    ``delay`` sleeps before answering (to force client timeouts); ``after_effect`` lets the
    request take effect before the failure (a lost response: the record exists, the client
    sees an error).
    """

    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    after_effect: bool = False
    path_contains: str = ""
    body_contains: str = ""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeVendor:
    """Base of a vendor fake: records, tokens, faults, rate limit and latency."""

    name = "vendor"

    def __init__(
        self,
        *,
        rate_limit: tuple[int, float] | None = None,
        token_ttl: float = 7200.0,
        latency: float = 0.0,
    ) -> None:
        self.window = SlidingWindow(*rate_limit) if rate_limit else None
        self.token_ttl = token_ttl
        self.latency = latency
        self.records: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.faults: collections.deque[Fault] = collections.deque()
        self.tokens: dict[str, float] = {}
        self.token_requests = 0
        self.base_url = ""

    # -- tokens ------------------------------------------------------------------------------

    def issue_token(self, prefix: str = "tok", ttl: float | None = None) -> str:
        self.token_requests += 1
        token = f"{prefix}-{secrets.token_hex(12)}"
        self.tokens[token] = time.monotonic() + (self.token_ttl if ttl is None else ttl)
        return token

    def token_valid(self, token: str | None) -> bool:
        expiry = self.tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()

    def expire_tokens(self) -> None:
        """Make every issued token invalid (tests: the vendor rotated or revoked them)."""
        self.tokens.clear()

    # -- faults and limits -------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def next_fault(self, request: web.Request, body: bytes = b"") -> Fault | None:
        for fault in list(self.faults):
            if fault.path_contains in request.path and fault.body_contains.encode() in body:
                self.faults.remove(fault)
                return fault
        return None

    def rate_limited(self) -> float | None:
        return self.window.hit() if self.window else None

    def too_many(self, wait: float) -> web.Response:
        """The vendor's 429; fakes override for their own body shape."""
        return web.json_response({"error": "rate_limited"}, status=429, headers={"Retry-After": str(math.ceil(wait))})

    def new_id(self, prefix: str = "") -> str:
        return f"{prefix}{secrets.token_hex(8)}"

    # -- app ---------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def limited_paths(self) -> tuple[str, ...]:
        """Path prefixes counted against the rate limit (token endpoints usually are not)."""
        return ("/",)

    def app(self) -> web.Application:
        @web.middleware
        async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.read()
            self.requests.append(
                Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
            )
            if self.latency:
                await asyncio.sleep(self.latency)
            if any(request.path.startswith(p) for p in self.limited_paths()):
                wait = self.rate_limited()
                if wait is not None:
                    return self.too_many(wait)
            fault = self.next_fault(request, body)
            if fault is not None:
                if fault.after_effect:
                    await handler(request)
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if isinstance(fault.body, (dict, list)):
                    return web.json_response(fault.body, status=fault.status, headers=fault.headers)
                return web.Response(status=fault.status, text=str(fault.body or ""), headers=fault.headers)
            return await handler(request)

        app = web.Application(middlewares=[envelope], client_max_size=16 * 1024 * 1024)
        app.add_routes(self.routes())
        return app


class SandboxServer:
    """Runs fakes over real HTTP on 127.0.0.1, each on its own free port."""

    def __init__(self, *fakes: FakeVendor, host: str = "127.0.0.1") -> None:
        self.fakes = list(fakes)
        self.host = host
        self._runners: list[web.AppRunner] = []

    async def start(self, ports: dict[str, int] | None = None) -> dict[str, str]:
        urls = {}
        for fake in self.fakes:
            runner = web.AppRunner(fake.app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self.host, (ports or {}).get(fake.name, 0))
            await site.start()
            port = bound_port(site)
            fake.base_url = f"http://{self.host}:{port}"
            urls[fake.name] = fake.base_url
            self._runners.append(runner)
        return urls

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
