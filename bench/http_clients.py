"""Benchmark HTTP client transports for the CRM adapters' workload.

The workload is many concurrent small JSON POSTs (a ~1 KB body with CJK text) to one host, which
is what a busy integration instance does. The server is an ``aiohttp.web`` app running in a
separate process (so it does not share the client's event loop), bound to a free 127.0.0.1 port;
it reads the request body and answers ``201`` with a small JSON body to ``POST /x``.

Measured, each for ``--seconds`` at ``--concurrency`` in-flight requests, twice in alternating
order (forward, then reversed) because a 2-core machine is noisy:

1. ``httpx`` -- ``httpx.AsyncClient`` with its default transport (httpcore) and default pool
   limits (100 connections, 20 keep-alive), body via ``json=``; also ``httpx@N``, the same with
   ``Limits(max_connections=N, max_keepalive_connections=N)`` for concurrency N (what an adapter
   would configure, and what aiohttp gets);
2. ``aiohttp`` -- ``aiohttp.ClientSession`` with ``TCPConnector(limit=concurrency)``, body as
   ``orjson.dumps`` bytes via ``data=``;
3. ``httpx+aiohttp`` -- ``httpx.AsyncClient`` on ``httpx_aiohttp.AiohttpTransport`` (package
   ``httpx-aiohttp``; pool limit = concurrency; skipped cleanly when not installed);
4. ``engine`` -- our ``adapters.http.HttpClient`` (aiohttp plus error classification) via
   ``send(Request("POST", "/x", json=...))``, no limiter and no auth.

Also measured, to read the engine's number fairly: ``aiohttp@32`` -- the same as (2) but with
``TCPConnector(limit=32)``, which is the pool size ``HttpClient`` picks when it has no limiter.

Usage::

    python bench/http_clients.py [--seconds N] [--concurrency 64] [--json out.json]

Besides req/s and p50/p99 latency, each run reports the client process's CPU use (% of one core
and CPU microseconds per request): the server has its own process, so CPU us/req is the client's
cost and is less noisy than req/s on a small machine; a client near 100% CPU is client-bound.

Everything is bounded: each measurement stops issuing requests at its deadline and is cancelled
if it overruns by more than a grace period; the server process is terminated at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from aiohttp import web

# Make ``adapters`` importable when run as ``python bench/http_clients.py`` from anywhere.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from octopus_crm.adapters.http import HttpClient, Request  # noqa: E402
from octopus_crm.core.errors import DeliveryError  # noqa: E402

try:
    from httpx_aiohttp import AiohttpTransport

    HTTPX_AIOHTTP_ERROR: str | None = None
except ImportError as _exc:  # pragma: no cover - depends on the environment
    AiohttpTransport = None  # type: ignore[assignment,misc]
    HTTPX_AIOHTTP_ERROR = f"httpx-aiohttp not importable: {_exc}"

PATH = "/x"
WARMUP_SECONDS = 0.5
GRACE_SECONDS = 30.0  # a measurement overrunning its deadline by more than this is cancelled
SERVER_START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0

# A realistic outbound delivery: a classified customer message going to a CRM (~1 KB as UTF-8).
BODY: dict[str, Any] = {
    "external_id": "msg-7f3c2a9e-1b4d-4e8a-9c2f-5d6e7a8b9c0d",
    "channel": "wecom",
    "tenant": "tenant-042",
    "received_at": "2025-11-27T12:03:45.123456+00:00",
    "category": "billing",
    "priority": "high",
    "confidence": 0.934,
    "customer": {
        "name": "王小明",
        "company": "深圳市章鱼科技有限公司",
        "phone": "+86 138 0013 8000",
        "email": "xiaoming.wang@example.cn",
    },
    "subject": "发票抬头错误，需要重新开具",
    "text": (
        "您好，我们上个月的发票抬头写成了旧的公司名称，财务那边无法报销。"
        "麻烦帮忙重新开具一张增值税专用发票，抬头改为“深圳市章鱼科技有限公司”，"
        "税号不变。另外请确认一下这个月的账单金额是否已经包含了新增的两个坐席，"
        "如果没有的话请一并调整。谢谢！"
    ),
    "tags": ["发票", "账单", "紧急", "vip"],
    "attachments": [],
    "metadata": {"source_msg_id": "1732709025123", "thread": "t-88123", "lang": "zh-CN"},
}
BODY_BYTES = orjson.dumps(BODY)
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


# ----------------------------------------------------------------------------------- server


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Child process: run the aiohttp.web server until the parent closes the pipe."""

    reply = orjson.dumps({"id": "00Q5e00000AbCdE", "success": True, "errors": []})

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=reply, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post(PATH, handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = int(runner.addresses[0][1])  # the kernel-chosen free port
        conn.send(port)
        loop = asyncio.get_running_loop()
        # Block (in a thread) until the parent closes its end of the pipe or sends anything.
        with contextlib.suppress(EOFError):
            await loop.run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(main())


class ServerProcess:
    """The benchmark server in a separate (spawned) process."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child_conn,), daemon=True, name="bench-srv")
        self._proc.start()
        child_conn.close()
        if not self._conn.poll(SERVER_START_TIMEOUT):
            self.stop()
            raise RuntimeError("benchmark server did not start in time")
        self.port: int = self._conn.recv()
        self.base_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._conn.close()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def _wait_for_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ----------------------------------------------------------------------------------- clients

SendOne = Callable[[], Awaitable[bool]]  # one POST; True when the answer was a 201


@dataclass
class ClientUnderTest:
    name: str
    description: str
    # Given the base URL and concurrency, build (send_one, aclose) inside the running loop.
    factory: Callable[[str, int], Awaitable[tuple[SendOne, Callable[[], Awaitable[None]]]]]


def _httpx_factory(
    sized: bool,
) -> Callable[[str, int], Awaitable[tuple[SendOne, Callable[[], Awaitable[None]]]]]:
    async def make(base: str, conc: int) -> tuple[SendOne, Callable[[], Awaitable[None]]]:
        if sized:
            limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
            client = httpx.AsyncClient(base_url=base, limits=limits, timeout=REQUEST_TIMEOUT)
        else:  # httpx's own defaults (0.28: 100 connections, 20 keep-alive)
            client = httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT)

        async def send_one() -> bool:
            resp = await client.post(PATH, json=BODY)
            return resp.status_code == 201

        return send_one, client.aclose

    return make


async def _make_httpx_aiohttp(base: str, conc: int) -> tuple[SendOne, Callable[[], Awaitable[None]]]:
    assert AiohttpTransport is not None
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    client = httpx.AsyncClient(
        base_url=base,
        transport=AiohttpTransport(limits=limits),
        timeout=REQUEST_TIMEOUT,
    )

    async def send_one() -> bool:
        resp = await client.post(PATH, json=BODY)
        return resp.status_code == 201

    return send_one, client.aclose


def _aiohttp_factory(
    limit: int | None,
) -> Callable[[str, int], Awaitable[tuple[SendOne, Callable[[], Awaitable[None]]]]]:
    async def make(base: str, conc: int) -> tuple[SendOne, Callable[[], Awaitable[None]]]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit or conc),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        )
        url = base + PATH

        async def send_one() -> bool:
            async with session.post(url, data=orjson.dumps(BODY), headers=JSON_HEADERS) as resp:
                await resp.read()
                return resp.status == 201

        return send_one, session.close

    return make


async def _make_engine(base: str, conc: int) -> tuple[SendOne, Callable[[], Awaitable[None]]]:
    client = HttpClient(name="bench", base_url=base, allow_private_network=True)

    async def send_one() -> bool:
        try:
            resp = await client.send(Request("POST", PATH, json=BODY))
        except DeliveryError:
            return False
        return resp.status == 201

    return send_one, client.aclose


def clients_under_test(concurrency: int) -> tuple[list[ClientUnderTest], list[str]]:
    clients = [
        ClientUnderTest(
            "httpx",
            f"httpx {_ver('httpx')} AsyncClient, default transport (httpcore {_ver('httpcore')}), "
            "default Limits (httpx 0.28: max_connections=100, max_keepalive=20), json=",
            _httpx_factory(sized=False),
        ),
        ClientUnderTest(
            f"httpx@{concurrency}",
            f"httpx AsyncClient, default transport, "
            f"Limits(max_connections={concurrency}, max_keepalive={concurrency}), json=",
            _httpx_factory(sized=True),
        ),
        ClientUnderTest(
            "aiohttp",
            f"aiohttp {_ver('aiohttp')} ClientSession, TCPConnector(limit={concurrency}), data=orjson.dumps(...)",
            _aiohttp_factory(None),
        ),
    ]
    skipped: list[str] = []
    if AiohttpTransport is not None:
        clients.append(
            ClientUnderTest(
                "httpx+aiohttp",
                f"httpx AsyncClient on httpx-aiohttp {_ver('httpx-aiohttp')} AiohttpTransport "
                f"(limit={concurrency}), json=",
                _make_httpx_aiohttp,
            )
        )
    else:
        skipped.append(f"httpx+aiohttp: {HTTPX_AIOHTTP_ERROR}")
    clients.append(
        ClientUnderTest(
            "engine",
            "adapters.http.HttpClient.send (aiohttp + classification), no limiter/auth "
            "(its own pool: TCPConnector(limit=32))",
            _make_engine,
        )
    )
    if concurrency != 32:
        clients.append(
            ClientUnderTest(
                "aiohttp@32",
                "aiohttp ClientSession, TCPConnector(limit=32) -- the engine's pool size, for the "
                "engine/aiohttp comparison",
                _aiohttp_factory(32),
            )
        )
    return clients, skipped


# ----------------------------------------------------------------------------------- measuring


@dataclass
class RunResult:
    client: str
    run: int
    seconds: float
    concurrency: int
    ok: int = 0
    errors: int = 0
    exceptions: dict[str, int] = field(default_factory=dict)
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    cpu_pct: float = 0.0  # client process CPU time / wall time, in % of one core
    cpu_us_per_req: float = 0.0
    note: str = ""


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


async def _drive(send_one: SendOne, seconds: float, concurrency: int, result: RunResult) -> None:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    perf = time.perf_counter

    async def worker() -> None:
        while perf() < deadline:
            t0 = perf()
            try:
                ok = await send_one()
            except Exception as exc:  # noqa: BLE001 - count and keep going; reported below
                name = type(exc).__name__
                result.exceptions[name] = result.exceptions.get(name, 0) + 1
                result.errors += 1
                continue
            dt = perf() - t0
            if ok:
                result.ok += 1
                latencies.append(dt)
            else:
                result.errors += 1

    start = perf()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = perf() - start
    latencies.sort()
    result.rps = result.ok / elapsed if elapsed > 0 else 0.0
    result.p50_ms = _percentile(latencies, 0.50) * 1000
    result.p99_ms = _percentile(latencies, 0.99) * 1000
    result.mean_ms = statistics.fmean(latencies) * 1000 if latencies else float("nan")


async def _measure(cut: ClientUnderTest, base: str, seconds: float, concurrency: int, run: int) -> RunResult:
    result = RunResult(cut.name, run, seconds, concurrency)
    send_one, aclose = await cut.factory(base, concurrency)
    try:
        # Warm up: open the pool's connections so the measurement sees steady state.
        warm = RunResult(cut.name, run, WARMUP_SECONDS, concurrency)
        await asyncio.wait_for(_drive(send_one, WARMUP_SECONDS, concurrency, warm), WARMUP_SECONDS + GRACE_SECONDS)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.wait_for(_drive(send_one, seconds, concurrency, result), seconds + GRACE_SECONDS)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        result.cpu_pct = 100 * cpu / wall
        result.cpu_us_per_req = 1e6 * cpu / result.ok if result.ok else float("nan")
    except TimeoutError:
        result.note = f"cancelled: overran its {seconds:g}s window by >{GRACE_SECONDS:g}s"
    finally:
        await aclose()
    return result


def measure(cut: ClientUnderTest, base: str, seconds: float, concurrency: int, run: int) -> RunResult:
    gc.collect()
    try:
        return asyncio.run(_measure(cut, base, seconds, concurrency, run))
    except Exception as exc:  # noqa: BLE001 - one broken client must not sink the benchmark
        return RunResult(cut.name, run, seconds, concurrency, note=f"failed: {exc!r}")


# ----------------------------------------------------------------------------------- report


def _ver(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _loop_name() -> str:
    loop = asyncio.new_event_loop()
    try:
        return f"{type(loop).__module__}.{type(loop).__name__}"
    finally:
        loop.close()


def environment() -> dict[str, Any]:
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "event_loop": _loop_name(),
        "versions": {d: _ver(d) for d in ("aiohttp", "httpx", "httpcore", "httpx-aiohttp", "orjson")},
        "body_bytes_orjson": len(BODY_BYTES),
        "body_bytes_httpx_json": len(httpx.Request("POST", "http://h/", json=BODY).content),
    }


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN -> "-"


def table(results: list[RunResult]) -> str:
    by_name: dict[str, list[RunResult]] = {}
    for r in results:
        by_name.setdefault(r.client, []).append(r)
    aiohttp_rps = [r.rps for r in by_name.get("aiohttp", []) if r.rps > 0]
    base_rps = statistics.fmean(aiohttp_rps) if aiohttp_rps else float("nan")
    header = (
        f"| {'client':<14} | run | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'CPU %':>5} | {'CPU us/req':>10} | {'ok':>7} | {'errors':>6} | {'vs aiohttp':>10} | "
        "note |"
    )
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for name, runs in by_name.items():
        for r in sorted(runs, key=lambda x: x.run):
            note = r.note
            if r.exceptions:
                note = (note + " " if note else "") + ", ".join(f"{k}x{v}" for k, v in sorted(r.exceptions.items()))
            lines.append(
                f"| {name:<14} | {r.run:>3} | {_fmt(r.rps, '8.0f')} | {_fmt(r.p50_ms, '7.2f')} | "
                f"{_fmt(r.p99_ms, '7.2f')} | {_fmt(r.cpu_pct, '5.0f')} | "
                f"{_fmt(r.cpu_us_per_req, '10.0f')} | {r.ok:>7} | {r.errors:>6} | "
                f"{_fmt(r.rps / base_rps if r.rps else float('nan'), '10.2f')} | {note} |"
            )
    return "\n".join(lines)


def summary(results: list[RunResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.client for r in results):
        runs = [r for r in results if r.client == name and r.rps > 0]
        if runs:
            out[name] = {
                "mean_rps": statistics.fmean(r.rps for r in runs),
                "mean_p50_ms": statistics.fmean(r.p50_ms for r in runs),
                "mean_p99_ms": statistics.fmean(r.p99_ms for r in runs),
                "mean_cpu_us_per_req": statistics.fmean(r.cpu_us_per_req for r in runs),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement per run (s)")
    parser.add_argument("--concurrency", type=int, default=64, help="in-flight requests")
    parser.add_argument("--runs", type=int, default=2, help="runs per client (alternating order)")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or not 0 < args.concurrency <= 4096 or not 0 < args.runs <= 10:
        parser.error("need 0 < seconds <= 600, 0 < concurrency <= 4096, 0 < runs <= 10")

    env = environment()
    clients, skipped = clients_under_test(args.concurrency)
    print(
        f"# {env['date_utc']}  nproc={env['nproc']}  python={env['python']}  loop={env['event_loop']}",
        flush=True,
    )
    print("# versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(
        f"# body: {env['body_bytes_orjson']} B (orjson), {env['body_bytes_httpx_json']} B "
        f"(httpx json=); {args.seconds:g}s x {args.runs} runs per client, "
        f"concurrency {args.concurrency}"
    )
    for s in skipped:
        print(f"# SKIPPED {s}")

    server = ServerProcess()
    results: list[RunResult] = []
    try:
        _wait_for_port(server.port)
        print(f"# server: aiohttp.web in a separate process at {server.base_url}{PATH}")
        for run in range(1, args.runs + 1):
            order = clients if run % 2 == 1 else list(reversed(clients))
            for cut in order:
                r = measure(cut, server.base_url, args.seconds, args.concurrency, run)
                results.append(r)
                print(
                    f"run {run} {cut.name:<14} {r.rps:8.0f} req/s  p50 {_fmt(r.p50_ms, '.2f')} ms"
                    f"  p99 {_fmt(r.p99_ms, '.2f')} ms  cpu {_fmt(r.cpu_pct, '.0f')}% "
                    f"{_fmt(r.cpu_us_per_req, '.0f')} us/req  ok {r.ok} err {r.errors} {r.note}",
                    flush=True,
                )
    finally:
        server.stop()

    print()
    print(table(results))
    summ = summary(results)
    if "engine" in summ:
        eng = summ["engine"]["mean_rps"]
        for ref in ("aiohttp", "aiohttp@32"):
            if ref in summ:
                ratio_cpu = summ["engine"]["mean_cpu_us_per_req"] / summ[ref]["mean_cpu_us_per_req"]
                print(f"engine / {ref}: req/s {eng / summ[ref]['mean_rps']:.2f}, CPU us/req {ratio_cpu:.2f}")
    if args.json is not None:
        payload = {
            "environment": env,
            "args": {"seconds": args.seconds, "concurrency": args.concurrency, "runs": args.runs},
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "clients": {c.name: c.description for c in clients},
            "skipped": skipped,
            "results": [asdict(r) for r in results],
            "summary": summ,
        }
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
