"""Webhook fakes in their own process, with counters the benchmarks read over HTTP.

Run as ``python -m bench.fakes SPEC_JSON`` where the spec is a list of
``{"name": ..., "latency": s, "rate_limit": [n, seconds] | null}``. The process prints one JSON
line ``{"urls": {name: base_url}}`` once every fake listens, then serves until stdin closes or it
gets SIGTERM. Each fake answers ``GET /_bench/stats`` (not rate limited) with its counters,
deliveries per wall-clock second and the distribution of its own service time
(``?counts`` answers the counters only: a poll every 0.25 s must not sort 200,000 service times,
which cost the fakes' core up to ~15 % and slowed the measured daemon as the run went on).

The fakes are :class:`octopus_crm_sandbox.webhook.WebhookFake` (real HTTP on loopback, 429 with
``Retry-After`` over the limit, ``Idempotency-Key`` de-duplication). Only their unbounded request
logs are trimmed every half second, so a 200,000-event run does not grow the fake.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import sys
import time
from typing import Any

import orjson
from aiohttp import web

from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake

__all__ = ["BenchWebhook", "main"]


class BenchWebhook(WebhookFake):
    """A :class:`WebhookFake` that counts instead of keeping every request."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name
        self.requests_total = 0
        self.created_total = 0  # not "created": SpecFake.created() builds the create answer
        self.per_second: collections.Counter[int] = collections.Counter()
        self.rejected_per_second: collections.Counter[int] = collections.Counter()
        self.service_ms: collections.deque[float] = collections.deque(maxlen=200_000)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=200_000)  # epoch s, every request
        self.throttle: str | None = None  # the Retry-After of an injected 429 not answered yet
        self.throttled_at: float | None = None  # when it was answered

    def limited_paths(self) -> tuple[str, ...]:
        return ("/hooks/",)

    def routes(self) -> list[web.RouteDef]:
        return [
            *super().routes(),
            web.get("/_bench/stats", self.stats),
            web.post("/_bench/throttle", self.inject_throttle),
            web.get("/_bench/arrivals", self.arrivals_since),
        ]

    async def inject_throttle(self, request: web.Request) -> web.Response:
        """The next request gets a 429 with ``Retry-After: <retry_after>`` (a vendor quota signal)."""
        self.throttle = request.query.get("retry_after", "30")
        self.inject(
            Fault(
                status=429,
                body={"error": "rate_limited"},
                headers={"Retry-After": self.throttle},
                path_contains="/hooks/",
            )
        )
        return web.json_response({"ok": True})

    async def arrivals_since(self, request: web.Request) -> web.Response:
        since = float(request.query["since"])
        return web.json_response(
            {"throttled_at": self.throttled_at, "arrivals": [t for t in self.arrivals if t >= since]}
        )

    def app(self) -> web.Application:
        @web.middleware
        async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.startswith("/_bench"):
                return await handler(request)
            self.arrivals.append(time.time())
            started = time.perf_counter()
            response = await handler(request)
            if response.status == 429 and self.throttle and response.headers.get("Retry-After") == self.throttle:
                self.throttle, self.throttled_at = None, time.time()
            self.service_ms.append((time.perf_counter() - started) * 1000)
            second = int(time.time())
            if response.status == 429:
                self.rejected_per_second[second] += 1
            elif response.status < 300:
                self.per_second[second] += 1
            return response

        app = super().app()
        app.middlewares.insert(0, timing)
        return app

    def trim(self) -> None:
        self.requests_total += len(self.requests)
        self.requests.clear()
        self.created_total += len(self.deliveries)
        self.deliveries.clear()
        self.records.clear()

    async def stats(self, request: web.Request) -> web.Response:
        self.trim()
        if "counts" in request.query:  # a benchmark's poll: no sort of up to 200,000 service times
            return web.Response(
                body=orjson.dumps({"name": self.name, "requests": self.requests_total, "created": self.created_total}),
                content_type="application/json",
            )
        service = sorted(self.service_ms)
        return web.Response(
            body=orjson.dumps(
                {
                    "name": self.name,
                    "requests": self.requests_total,
                    "created": self.created_total,
                    "unique_keys": len(self.by_key),
                    "replays": self.replays,
                    "accepted": self.window.accepted if self.window else None,
                    "rejected": self.window.rejected if self.window else 0,
                    "per_second": dict(self.per_second),
                    "rejected_per_second": dict(self.rejected_per_second),
                    "service_ms": _quantiles(service),
                },
                option=orjson.OPT_NON_STR_KEYS,
            ),
            content_type="application/json",
        )


def _quantiles(ordered: list[float]) -> dict[str, float | None]:
    if not ordered:
        return {"p50": None, "p99": None, "n": 0}
    return {
        "p50": round(ordered[len(ordered) // 2], 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "n": len(ordered),
    }


async def _serve(spec: list[dict[str, Any]]) -> None:
    fakes = [
        BenchWebhook(
            item["name"],
            latency=float(item.get("latency") or 0.0),
            rate_limit=tuple(item["rate_limit"]) if item.get("rate_limit") else None,  # type: ignore[arg-type]
        )
        for item in spec
    ]
    server = SandboxServer(*fakes)
    await server.start()
    print(orjson.dumps({"urls": {f.name: f.base_url for f in fakes}}).decode(), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()  # EOF: the parent went away
        stop.set()

    async def trim() -> None:
        while True:
            await asyncio.sleep(0.5)
            for fake in fakes:
                fake.trim()

    tasks = [asyncio.create_task(watch_stdin()), asyncio.create_task(trim())]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await server.stop()


def main() -> None:
    asyncio.run(_serve(orjson.loads(sys.argv[1])))


if __name__ == "__main__":
    main()
