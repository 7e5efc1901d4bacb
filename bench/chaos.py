"""Chaos run: primary_backup under an intermittently failing primary and two SIGKILLs.

What it does (everything on loopback, nothing mocked inside the daemon):

1. starts the embedded Kafka-compatible broker (Tansu) unless ``bootstrap`` is given, and two
   vendor fakes over real HTTP: the **primary** is the Salesforce fake, the **backup** the
   HubSpot fake;
2. makes the primary fail intermittently: of its record writes (``POST``/``PATCH`` on
   ``/sobjects/``) a random ``--fail-rate`` answers 503 without writing, a ``--lost-rate``
   writes the record and then answers 503 (a lost response) and a ``--stall-rate`` writes it and
   answers only after the client's read timeout (an ambiguous create, resolved by a lookup); and
   when ``--outage-at`` of the events have a final result, every write answers 503 for
   ``--outage-s`` seconds (enough to open the circuit, so a burst of events falls back). The
   backup loses a ``--backup-lost-rate`` share of its answers the same way (record written, 502);
3. writes a primary_backup configuration (``sync_back`` off): Salesforce upserts Leads on the
   ``Octopus_Event_Id__c`` external id (keyed on the idempotency key), HubSpot creates contacts
   whose e-mail is unique per event (its 409 on a known e-mail resolves to the existing contact);
4. produces ``--events`` events over ``--keys`` distinct Kafka keys, runs the daemon as a
   subprocess (``python -m octopus_crm.daemon.cli run``) with a SQLite ledger file, SIGKILLs it when
   ``--kill-at`` fractions of the events have a final result and restarts it each time;
5. waits until every event has a final result (``succeeded``, ``fallback`` or ``failed``;
   ``duplicate`` results are redeliveries), lets retries settle, stops the daemon with SIGTERM,
   and checks what the fakes hold against what the results topic says.

The (event, target) of a record is read from the record itself: every mapping writes
``eventId=<id>`` into a text field (Lead ``Description``, contact ``message``), and Salesforce's
external id field carries the idempotency key as well.

Besides the invariants, the run measures what would have been duplicated without the vendors'
idempotency: a write that found its record already there (Salesforce upsert answering 200,
HubSpot answering 409). After a lost response that is the expected path; without one it means the
ledger did not know about a record the vendor had — the window "the vendor answered 2xx, the
process died before the ledger write", or the same event delivered concurrently from the input
and the retry topic after a restart. ``--plain-create`` turns the Salesforce upsert off (plain
``POST``), to show that these become real duplicates and that the checks catch them.

Usage::

    python bench/chaos.py [--events 5000] [--keys 200] [--json out.json] [--keep]

Exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from octopus_crm.daemon.net import free_port
from octopus_crm.daemon.topics import create_topics
from octopus_crm_sandbox.broker import EmbeddedBroker
from octopus_crm_sandbox.hubspot import HubSpotFake
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.salesforce import EXTERNAL_ID, Refused, SalesforceFake

__all__ = ["ChaosOptions", "run_chaos"]

ROOT = Path(__file__).resolve().parents[1]
FINAL = frozenset({"succeeded", "fallback", "failed"})
STATUSES = ("succeeded", "fallback", "failed", "duplicate", "skipped")
_EVENT_ID = re.compile(rb"eventId=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
PRIMARY, BACKUP = "primary", "backup"


@dataclass
class ChaosOptions:
    events: int = 5000
    keys: int = 200
    fail_rate: float = 0.15
    lost_rate: float = 0.04
    stall_rate: float = 0.01
    backup_lost_rate: float = 0.03
    kill_at: tuple[float, ...] = (0.3, 0.65)
    outage_at: float = 0.45  # at this fraction of final results, the primary is down ...
    outage_s: float = 4.0  # ... for this long (every write 503; 0: no outage)
    down_s: float = 0.5
    settle_s: float = 3.0
    idle_s: float = 45.0
    timeout_s: float = 900.0
    max_in_flight: int = 500
    read_timeout_s: float = 1.5
    seed: int = 20261127
    external_id: bool = True


def event_id_in(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    match = _EVENT_ID.search(raw.encode() if isinstance(raw, str) else raw)
    return match.group(1).decode() if match else None


# -- flaky vendor fakes ---------------------------------------------------------------------


class _Chaos:
    """Random faults on record writes, and a tally of what the fake saw per event."""

    def _init_chaos(self, rng: random.Random, rates: dict[str, float]) -> None:
        self.rng = rng
        self.rates = rates
        self.fault_counts: collections.Counter[str] = collections.Counter()
        self.lost_events: set[str] = set()  # events whose write took effect behind an error
        self.rewrites: dict[str, list[float]] = collections.defaultdict(list)  # found it there
        self.first_write: dict[str, float] = {}  # when each event's record was written
        self.writes = 0
        self.stalled: list[tuple[float, str]] = []

    def roll(self, body: bytes, stall_s: float) -> Fault | None:
        self.writes += 1
        roll = self.rng.random()
        kind = None
        for name, rate in self.rates.items():
            if roll < rate:
                kind = name
                break
            roll -= rate
        if kind is None:
            return None
        self.fault_counts[kind] += 1
        if kind == "fail":
            return Fault(503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "chaos: unavailable"}])
        eid = event_id_in(body)
        if eid:
            self.lost_events.add(eid)
        if kind == "stall":
            self.stalled.append((time.time(), eid or "?"))
            return Fault(503, "chaos: too late", delay=stall_s, after_effect=True)
        return Fault(502 if kind == "lost502" else 503, "chaos: response lost", after_effect=True)


class FlakySalesforce(_Chaos, SalesforceFake):
    """The Salesforce fake, failing a random share of record writes; lookups never fail."""

    def __init__(self, rng: random.Random, *, fail: float, lost: float, stall: float, stall_s: float) -> None:
        super().__init__(rate_limit=None)
        self._init_chaos(rng, {"fail": fail, "lost": lost, "stall": stall})
        self.stall_s = stall_s
        self.outage_until = 0.0  # every write answers 503 until then (time.monotonic)
        self.lookups = collections.Counter[str]()
        self._by_external: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)

    def next_fault(self, request: web.Request, body: bytes = b"") -> Fault | None:
        injected = super().next_fault(request, body)
        if injected is not None:
            return injected
        if request.method in ("POST", "PATCH") and "/sobjects/" in request.path:
            if time.monotonic() < self.outage_until:
                self.writes += 1
                self.fault_counts["outage"] += 1
                return Fault(503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "chaos: outage"}])
            return self.roll(body, self.stall_s)
        return None

    async def upsert(self, request: web.Request) -> web.Response:
        response = await super().upsert(request)
        eid = request.match_info["value"].split(":", 1)[0]
        if response.status == 200:
            self.rewrites[eid].append(time.time())
        elif response.status == 201:
            self.first_write.setdefault(eid, time.time())
        return response

    async def create(self, request: web.Request) -> web.Response:
        response = await super().create(request)
        eid = event_id_in(await request.read())
        if response.status == 201 and eid:
            self.first_write.setdefault(eid, time.time())
        return response

    async def get_by_external_id(self, request: web.Request) -> web.Response:
        try:
            response = await super().get_by_external_id(request)
        except Refused:
            self.lookups["not_found"] += 1
            raise
        self.lookups["found"] += 1
        return response

    # an index instead of a scan per upsert: 5,000 records × thousands of writes adds up
    def find(self, sobject: str, field: str, value: str) -> list[dict[str, Any]]:
        if field == EXTERNAL_ID:
            return list(self._by_external.get((sobject, value), ()))
        return super().find(sobject, field, value)

    def _insert(self, sobject: str, body: dict[str, Any]) -> dict[str, Any]:
        record = super()._insert(sobject, body)
        if record.get(EXTERNAL_ID) is not None:
            self._by_external[(sobject, str(record[EXTERNAL_ID]))].append(record)
        return record


class FlakyHubSpot(_Chaos, HubSpotFake):
    """The HubSpot fake, losing a random share of contact-create answers (record written)."""

    def __init__(self, rng: random.Random, *, lost: float) -> None:
        super().__init__(rate_limit=None)
        self._init_chaos(rng, {"lost502": lost})
        self._by_email: dict[str, dict[str, Any]] = {}

    def next_fault(self, request: web.Request, body: bytes = b"") -> Fault | None:
        injected = super().next_fault(request, body)
        if injected is not None:
            return injected
        if request.method == "POST" and request.path.startswith("/crm/v3/objects/"):
            return self.roll(body, 0.0)
        return None

    async def create(self, request: web.Request) -> web.Response:
        response = await super().create(request)
        eid = event_id_in(await request.read()) or "?"
        if response.status == 409:
            self.rewrites[eid].append(time.time())
        elif response.status == 201:
            self.first_write.setdefault(eid, time.time())
        return response

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        return self._by_email.get(email.lower())

    def _insert(self, kind: str, props: dict[str, Any]) -> dict[str, Any]:
        record = super()._insert(kind, props)
        if kind == "contacts" and props.get("email"):
            self._by_email.setdefault(str(props["email"]).lower(), record)
        return record


# -- configuration and events ---------------------------------------------------------------


def crm_config(sf: SalesforceFake, hs: HubSpotFake, opts: ChaosOptions) -> dict[str, Any]:
    retry = {"maxAttempts": 3, "initialDelay": 0.2, "multiplier": 2, "maxDelay": 2, "jitter": 0.2}
    sf_endpoints: dict[str, Any] = {"baseUrl": sf.base_url, "apiVersion": "v58.0", "allowPrivateNetwork": True}
    if opts.external_id:
        sf_endpoints["externalIdField"] = EXTERNAL_ID
    return {
        "crmIntegrations": [
            {
                "id": PRIMARY,
                "type": "salesforce",
                "priority": 1,
                "retry": retry,
                "config": {
                    "authType": "oauth2",
                    "credentials": {
                        "clientId": "${SALESFORCE_CLIENT_ID}",
                        "clientSecret": "${SALESFORCE_CLIENT_SECRET}",
                    },
                    "endpoints": sf_endpoints,
                    "rateLimit": {"requests": 1000, "perSeconds": 1, "concurrency": 32},
                    "timeouts": {"read": opts.read_timeout_s},
                    "mappings": {
                        "lead": {
                            "lastName": "{{senderLastName}}",
                            "firstName": "{{senderFirstName}}",
                            "company": "{{tenantName}}",
                            "email": "{{senderEmail}}",
                            "description": "eventId={{eventId}} {{messageContent}}",
                        }
                    },
                },
                "rules": {"actions": [{"type": "create", "object": "lead"}]},
            },
            {
                "id": BACKUP,
                "type": "hubspot",
                "priority": 2,
                "retry": retry,
                "config": {
                    "authType": "apikey",
                    "credentials": {"apiKey": "${HUBSPOT_TOKEN}"},
                    "endpoints": {"baseUrl": hs.base_url, "portalId": hs.portal_id, "allowPrivateNetwork": True},
                    "rateLimit": {"requests": 1000, "perSeconds": 1, "concurrency": 16},
                    "timeouts": {"read": opts.read_timeout_s},
                    "mappings": {
                        "contact": {
                            "email": "{{senderEmail}}",
                            "firstname": "{{senderFirstName}}",
                            "lastname": "{{senderLastName}}",
                            "message": "eventId={{eventId}} {{messageContent}}",
                        }
                    },
                },
                "rules": {"actions": [{"type": "create", "object": "contact"}]},
            },
        ],
        "strategy": {
            "strategy": "primary_backup",
            "primary": {"id": PRIMARY, "fallback": BACKUP},
            "rules": {"if_primary_fails": "use_backup", "sync_back": False},
        },
    }


def make_events(opts: ChaosOptions, rng: random.Random) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(opts.events):
        key = f"conv-{rng.randrange(opts.keys):03d}"
        eid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        event = {
            "schemaVersion": 1,
            "eventId": eid,
            "messageId": f"msg-{i:06d}",
            "tenantId": "t-chaos",
            "tenantName": "Chaos 租户",
            "platform": "telegram",
            # one e-mail per event: HubSpot de-duplicates contacts on it
            "sender": {"id": key, "name": "王小明", "email": f"c{i:05d}.{eid[:8]}@chaos.example"},
            "content": f"message {i} on {key}",
            "receivedAt": "2026-11-25T09:00:00Z",
            "classification": {"category": "销售线索", "confidence": 0.9, "priority": "high"},
            "metadata": {"seq": i, "conv": key},
        }
        out.append((f"t-chaos:{key}".encode(), orjson.dumps(event)))
    return out


# -- the daemon as a subprocess -------------------------------------------------------------


class DaemonProc:
    """``python -m octopus_crm.daemon.cli run`` configured by ``OCTOPUS_CRM_*``; ``kill()`` is SIGKILL."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**env, "OCTOPUS_CRM_METRICS_PORT": str(free_port()), "OCTOPUS_CRM_ADMIN_PORT": str(free_port())}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProc:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "octopus_crm.daemon.cli", "run"],
                env=self.env,
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def daemon_env(
    bootstrap: str, topics: dict[str, str], config_path: Path, ledger: Path, opts: ChaosOptions
) -> dict[str, str]:
    return {
        **os.environ,
        **SalesforceFake.ENV,
        **HubSpotFake.ENV,
        "OCTOPUS_CRM_BOOTSTRAP_SERVERS": bootstrap,
        "OCTOPUS_CRM_INPUT_TOPIC": topics["input"],
        "OCTOPUS_CRM_RESULTS_TOPIC": topics["results"],
        "OCTOPUS_CRM_DLQ_TOPIC": topics["dlq"],
        "OCTOPUS_CRM_RETRY_TOPIC": topics["retry"],
        "OCTOPUS_CRM_GROUP_ID": topics["group"],
        "OCTOPUS_CRM_PRODUCER_IDEMPOTENCE": "false",  # Tansu's memory storage refuses it
        "OCTOPUS_CRM_CONFIG_PATH": str(config_path),
        "OCTOPUS_CRM_METRICS_HOST": "127.0.0.1",
        "OCTOPUS_CRM_LEDGER_URL": f"sqlite:///{ledger}",
        "OCTOPUS_CRM_MAX_IN_FLIGHT": str(opts.max_in_flight),
        "OCTOPUS_CRM_COMMIT_INTERVAL_S": "0.2",
        "OCTOPUS_CRM_SESSION_TIMEOUT_MS": "6000",
        "OCTOPUS_CRM_HEARTBEAT_INTERVAL_MS": "1000",
        "OCTOPUS_CRM_REBALANCE_TIMEOUT_MS": "15000",
        "OCTOPUS_CRM_GRACE_PERIOD_S": "20",
        "OCTOPUS_CRM_LOG_FORMAT": "json",
        "OCTOPUS_CRM_LOG_LEVEL": "INFO",
    }


# -- Kafka helpers --------------------------------------------------------------------------


class TopicTail:
    """Reads a topic from the beginning, continuously, into ``records``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        self.records: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TopicTail:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for records in batch.values():
                self.records.extend(records)

    async def drain(self, within: float = 30.0) -> None:
        """Wait until everything on the topic now has been read (at most ``within`` seconds)."""
        deadline = time.monotonic() + within
        ends: dict[Any, int] = {}
        while time.monotonic() < deadline:
            if not ends:
                ends = await self.consumer.end_offsets(list(self.consumer.assignment()))
            behind = [tp for tp, end in ends.items() if await self.consumer.position(tp) < end]
            if ends and not behind:
                return
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in records]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def pending_retries(bootstrap: str, topic: str, group: str) -> int:
    """Records on the retry topic beyond the retry group's committed offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            await consumer.topics()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
        total = 0
        for tp in partitions:
            committed = await consumer.committed(tp) or 0
            total += max(0, ends[tp] - committed)
        return total
    finally:
        await consumer.stop()


# -- the run --------------------------------------------------------------------------------


@dataclass
class Progress:
    finals: set[str] = field(default_factory=set)
    seen: int = 0

    def update(self, records: list[Any]) -> None:
        for r in records[self.seen :]:
            value = orjson.loads(r.value)
            if value.get("status") in FINAL:
                self.finals.add(value["eventId"])
        self.seen = len(records)


async def run_chaos(
    opts: ChaosOptions,
    *,
    bootstrap: str | None = None,
    workdir: Path | None = None,
    out: Any = print,
) -> dict[str, Any]:
    """One chaos run; returns the report (``report["ok"]`` says whether every check held)."""
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="octopus-chaos-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | None = None
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=str(work / "tansu.log")).start()
        bootstrap = broker.bootstrap
    try:
        report = await _run(opts, bootstrap, work, out)
    finally:
        if broker is not None:
            broker.stop()
    report["workdir"] = str(work)
    if own_dir and report["ok"]:
        shutil.rmtree(work, ignore_errors=True)
        report["workdir"] = None
    return report


async def _run(opts: ChaosOptions, bootstrap: str, work: Path, out: Any) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    run = uuid.uuid4().hex[:8]
    topics = {
        "input": f"chaos-{run}-in",
        "results": f"chaos-{run}-results",
        "dlq": f"chaos-{run}-dlq",
        "retry": f"chaos-{run}-retry",
        "group": f"chaos-{run}",
    }
    await create_topics(bootstrap, [topics[k] for k in ("input", "results", "dlq", "retry")], 4)
    sf = FlakySalesforce(
        random.Random(rng.getrandbits(64)),
        fail=opts.fail_rate,
        lost=opts.lost_rate,
        stall=opts.stall_rate,
        stall_s=opts.read_timeout_s * 2,
    )
    hs = FlakyHubSpot(random.Random(rng.getrandbits(64)), lost=opts.backup_lost_rate)
    events = make_events(opts, rng)
    produced = [orjson.loads(v)["eventId"] for _, v in events]
    kills: list[dict[str, Any]] = []
    exit_code: int | None = None
    started = time.monotonic()
    keys = len({k for k, _ in events})
    upsert = "on" if opts.external_id else "OFF"
    kill_at = ", ".join(f"{f:.0%}" for f in opts.kill_at)
    out(
        f"chaos run: {opts.events} events over {keys} keys; primary = Salesforce fake (writes:"
        f" {opts.fail_rate:.0%} 503, {opts.lost_rate:.0%} lost response, {opts.stall_rate:.0%}"
        f" stalled past the timeout; upsert on {EXTERNAL_ID}: {upsert}), backup = HubSpot fake"
        f" ({opts.backup_lost_rate:.0%} lost responses); SIGKILL at {kill_at} of final results"
        + (f"; a {opts.outage_s:g}s primary outage at {opts.outage_at:.0%}" if opts.outage_s > 0 else "")
    )
    async with SandboxServer(sf, hs):
        config_path = work / "crm-config.json"
        config_path.write_bytes(orjson.dumps(crm_config(sf, hs, opts), option=orjson.OPT_INDENT_2))
        env = daemon_env(bootstrap, topics, config_path, work / "ledger.sqlite3", opts)
        results = await TopicTail(bootstrap, topics["results"]).start()
        dlq = await TopicTail(bootstrap, topics["dlq"]).start()
        progress = Progress()
        daemon: DaemonProc | None = None
        try:
            await produce(bootstrap, topics["input"], events)
            daemon = DaemonProc(env, work / "daemon-1.log").start()
            deadline = started + opts.timeout_s
            pending_kills = sorted(opts.kill_at)
            outage: dict[str, Any] | None = None
            activity = (0, 0, 0)
            active_at = time.monotonic()
            while len(progress.finals) < opts.events and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                progress.update(results.records)
                now = (len(results.records), len(sf.requests), len(hs.requests))
                if now != activity:
                    activity, active_at = now, time.monotonic()
                elif not pending_kills and time.monotonic() - active_at > opts.idle_s:
                    missing = opts.events - len(progress.finals)
                    out(
                        f"  nothing happened for {opts.idle_s:g}s with {missing} events still"
                        " without a final result: giving up waiting"
                    )
                    break
                if daemon.proc is not None and daemon.proc.poll() is not None:
                    out(f"  daemon exited by itself with code {daemon.proc.returncode}; restarting")
                    daemon = DaemonProc(env, work / f"daemon-{len(kills) + 2}-again.log").start()
                if outage is None and opts.outage_s > 0 and len(progress.finals) >= opts.outage_at * opts.events:
                    sf.outage_until = time.monotonic() + opts.outage_s
                    outage = {"finals": len(progress.finals), "at_s": round(time.monotonic() - started, 1)}
                    out(
                        f"  primary outage for {opts.outage_s:g}s at {outage['finals']}/{opts.events} events"
                        f" with a final result (t={outage['at_s']}s): every write answers 503"
                    )
                if pending_kills and len(progress.finals) >= pending_kills[0] * opts.events:
                    pending_kills.pop(0)
                    daemon.kill()
                    at = {
                        "finals": len(progress.finals),
                        "at_s": round(time.monotonic() - started, 1),
                        "epoch": time.time(),
                        "primary_records": len(sf.records),
                        "backup_records": len(hs.records),
                    }
                    kills.append(at)
                    out(
                        f"  SIGKILL #{len(kills)} at {at['finals']}/{opts.events} events with a"
                        f" final result (t={at['at_s']}s); restarting"
                    )
                    await asyncio.sleep(opts.down_s)
                    daemon = DaemonProc(env, work / f"daemon-{len(kills) + 1}.log").start()
            complete_at = round(time.monotonic() - started, 1) if len(progress.finals) >= opts.events else None
            # let late retries and redeliveries finish: quiet = no new result, no new vendor call
            last = (len(results.records), len(sf.requests), len(hs.requests))
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < opts.settle_s and time.monotonic() < deadline + 60:
                await asyncio.sleep(0.2)
                now = (len(results.records), len(sf.requests), len(hs.requests))
                if now != last:
                    last, quiet_since = now, time.monotonic()
            exit_code = daemon.terminate()
            daemon = None
            await results.drain()
            await dlq.drain()
            progress.update(results.records)
            retry_backlog = await pending_retries(bootstrap, topics["retry"], f"{topics['group']}.retry")
        finally:
            if daemon is not None:
                daemon.stop()
            await results.stop()
            await dlq.stop()
        report = _report(opts, produced, results.records, dlq.records, sf, hs, kills)
    report.update(
        elapsed_s=round(time.monotonic() - started, 1),
        complete_at_s=complete_at,
        last_exit_code=exit_code,
        outage=outage,
        retry_records_pending_at_exit=retry_backlog,
        options=asdict(opts),
    )
    report["checks"]["last daemon exited 0 on SIGTERM"] = exit_code == 0
    report["ok"] = all(report["checks"].values())
    _print(report, out)
    return report


def _report(
    opts: ChaosOptions,
    produced: list[str],
    raw_results: list[Any],
    raw_dlq: list[Any],
    sf: FlakySalesforce,
    hs: FlakyHubSpot,
    kills: list[dict[str, Any]],
) -> dict[str, Any]:
    wanted = set(produced)
    results = [orjson.loads(r.value) for r in raw_results]
    by_status = collections.Counter(r["status"] for r in results)
    finals: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in results:
        if r["status"] in FINAL:
            finals[r["eventId"]].append(r)
    no_result = wanted - set(finals)
    duplicate_only = {r["eventId"] for r in results if r["status"] == "duplicate"} & no_result
    several = {e: rs for e, rs in finals.items() if len(rs) > 1}
    conflicting = {
        e: rs for e, rs in several.items() if len({(r["status"], r["integrationId"], r["externalId"]) for r in rs}) > 1
    }

    # what the fakes hold, per (event, target), from the records themselves
    stores = {
        PRIMARY: {rid: r for rid, r in sf.records.items() if r["attributes"]["type"] == "Lead"},
        BACKUP: {rid: r for rid, r in hs.records.items() if r["kind"] == "contacts"},
    }

    def owner(target: str, record: dict[str, Any]) -> str | None:
        if target == PRIMARY:
            from_text = event_id_in(str(record.get("Description") or ""))
            ext = record.get(EXTERNAL_ID)
            if ext is not None and from_text is not None and not str(ext).startswith(from_text):
                return f"mismatch:{ext}"
            return from_text
        return event_id_in(str(record["properties"].get("message") or ""))

    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    owners: dict[tuple[str, str], str | None] = {}
    for target, store in stores.items():
        for rid, record in store.items():
            eid = owner(target, record)
            owners[(target, rid)] = eid
            pairs[(eid or "?", target)] += 1
    doubled = {p: n for p, n in pairs.items() if n > 1}
    strays = sorted(f"{t}:{rid}" for (t, rid), e in owners.items() if e not in wanted)

    # every final success names a record that exists and belongs to its event
    dangling = []
    for eid, rs in finals.items():
        for r in rs:
            if r["status"] == "failed":
                continue
            target = r["integrationId"]
            if owners.get((target, str(r["externalId"]))) != eid:
                dangling.append(f"{eid} {r['status']} {target}:{r['externalId']}")
    delivered = {eid for eid, rs in finals.items() if any(r["status"] != "failed" for r in rs)}
    final_targets = {eid: {r["integrationId"] for r in rs if r["status"] != "failed"} for eid, rs in finals.items()}
    orphans = sorted(f"{t}:{eid}" for (eid, t) in pairs if eid in wanted and t not in final_targets.get(eid, set()))
    fell_back = {eid for eid, rs in finals.items() if all(r["status"] == "fallback" for r in rs)}
    in_both = {eid for (eid, t) in pairs if t == PRIMARY} & {eid for (eid, t) in pairs if t == BACKUP}
    primary_orphans = [o for o in orphans if o.startswith(f"{PRIMARY}:") and o.split(":", 1)[1] in fell_back]

    killed_at = [k["epoch"] for k in kills]

    def rewrites(fake: _Chaos) -> dict[str, Any]:
        """Writes that found their record already there, by why the daemon wrote again."""
        after_lost, crash, other = 0, [], []
        for eid, times in fake.rewrites.items():
            for at in times:
                if eid in fake.lost_events:
                    after_lost += 1
                elif any(fake.first_write.get(eid, at) <= k <= at for k in killed_at):
                    crash.append(eid)  # delivered, then SIGKILL, then delivered again
                else:
                    other.append(eid)
        return {
            "total": sum(len(t) for t in fake.rewrites.values()),
            "after_a_lost_response": after_lost,
            "across_a_sigkill": len(crash),
            "other": len(other),
            "events_across_a_sigkill": sorted(set(crash)),
            "events_other": sorted(set(other)),
        }

    successes = collections.Counter(
        (r["eventId"], r["integrationId"]) for r in results if r["status"] in ("succeeded", "fallback")
    )
    sf_rw, hs_rw = rewrites(sf), rewrites(hs)
    report: dict[str, Any] = {
        "events_produced": len(produced),
        "events_with_final_result": len(wanted & set(finals)),
        "events_with_no_result": len(no_result),
        "events_with_only_duplicate_results": len(duplicate_only),
        "events_delivered_somewhere": len(delivered & wanted),
        "results_by_status": {s: by_status.get(s, 0) for s in STATUSES},
        "results_total": len(results),
        "events_with_several_final_results": len(several),
        "events_with_conflicting_final_results": len(conflicting),
        "pairs_with_two_success_results": sum(1 for n in successes.values() if n > 1),
        # vendor calls that would have been a second record at a vendor without idempotency:
        # not explained by a lost response (the crash window and racing copies)
        "duplicate_vendor_calls_crash_or_race": sum(rw["across_a_sigkill"] + rw["other"] for rw in (sf_rw, hs_rw)),
        "records_primary": len(stores[PRIMARY]),
        "records_backup": len(stores[BACKUP]),
        "pairs_with_more_than_one_record": len(doubled),
        "extra_records_in_doubled_pairs": sum(n - 1 for n in doubled.values()),
        "records_of_no_produced_event": len(strays),
        "final_results_naming_no_such_record": len(dangling),
        "records_without_a_final_result_for_their_target": len(orphans),
        "primary_records_of_events_that_fell_back": len(primary_orphans),
        "events_with_a_record_in_both_targets": len(in_both),
        "dead_letters": len(raw_dlq),
        "kills": kills,
        "faults_primary": dict(sf.fault_counts),
        "writes_primary": sf.writes,
        "faults_backup": dict(hs.fault_counts),
        "writes_backup": hs.writes,
        "ambiguous_lookups_primary": dict(sf.lookups),
        "stalled_primary": sf.stalled,
        "rewrites_primary": sf_rw,
        "rewrites_backup": hs_rw,
        "samples": {
            "no_result": sorted(no_result)[:5],
            "doubled": [f"{e}:{t}x{n}" for (e, t), n in list(doubled.items())[:5]],
            "dangling": dangling[:5],
            "strays": strays[:5],
            "orphans": orphans[:5],
            "two_successes": [f"{e}@{t}" for (e, t), n in successes.items() if n > 1][:5],
            "conflicting": [
                f"{e}: " + ", ".join(f"{r['status']}@{r['integrationId']}" for r in rs)
                for e, rs in list(conflicting.items())[:5]
            ],
        },
    }
    report["checks"] = {
        "every produced event was seen": len(produced) == opts.events,
        "every event has a final result": not no_result,
        "each (event, target) exists at most once in the fakes": not doubled,
        "every record belongs to a produced event": not strays,
        "every success/fallback result names its event's record": not dangling,
        "every kill happened": len(kills) == len(opts.kill_at),
    }
    return report


def _print(report: dict[str, Any], out: Any) -> None:
    rows = [
        ("events produced", report["events_produced"], ""),
        ("events with a final result", report["events_with_final_result"], ""),
        (
            "events with no final result",
            report["events_with_no_result"],
            f"must be 0 (of which only 'duplicate' results: {report['events_with_only_duplicate_results']})",
        ),
        ("results by status", " ".join(f"{k}={v}" for k, v in report["results_by_status"].items()), ""),
        (
            "events with several final results",
            report["events_with_several_final_results"],
            f"conflicting: {report['events_with_conflicting_final_results']}",
        ),
        ("(event, target) pairs with >1 success", report["pairs_with_two_success_results"], "should be 0"),
        (
            "duplicate vendor calls (SIGKILL or race)",
            report["duplicate_vendor_calls_crash_or_race"],
            "a second record where the vendor has no idempotency; should be 0",
        ),
        ("records in the primary (Salesforce)", report["records_primary"], ""),
        ("records in the backup (HubSpot)", report["records_backup"], ""),
        ("(event, target) pairs with >1 record", report["pairs_with_more_than_one_record"], "must be 0"),
        ("records of no produced event", report["records_of_no_produced_event"], "must be 0"),
        ("final results naming no such record", report["final_results_naming_no_such_record"], "must be 0"),
        (
            "records without a final result there",
            report["records_without_a_final_result_for_their_target"],
            f"of which primary records of events that fell back: {report['primary_records_of_events_that_fell_back']}",
        ),
        ("events with a record in both targets", report["events_with_a_record_in_both_targets"], ""),
        ("dead letters", report["dead_letters"], ""),
        ("retry records pending at exit", report["retry_records_pending_at_exit"], ""),
    ]
    out("")
    for label, value, note in rows:
        out(f"  {label:<40} {value!s:<12} {note}")
    sf_rw, hs_rw = report["rewrites_primary"], report["rewrites_backup"]
    out(
        f"  primary writes {report['writes_primary']}, faults {report['faults_primary']},"
        f" ambiguous creates resolved by lookup {report['ambiguous_lookups_primary']}"
    )
    out(f"  backup writes {report['writes_backup']}, faults {report['faults_backup']}")
    for name, rw in (("primary", sf_rw), ("backup", hs_rw)):
        out(
            f"  {name} writes that found their record already there (absorbed by the vendor's"
            f" idempotency): {rw['total']} = {rw['after_a_lost_response']} after a lost response"
            f" + {rw['across_a_sigkill']} across a SIGKILL (written, killed before the ledger"
            f" write) + {rw['other']} other (no lost response, no SIGKILL in between)"
        )
    complete = (
        f"every event final after {report['complete_at_s']}s"
        if report["complete_at_s"] is not None
        else "gave up waiting for final results"
    )
    out(f"  run took {report['elapsed_s']}s ({complete}); last daemon exit code {report['last_exit_code']}")
    for name, sample in report["samples"].items():
        if sample:
            out(f"  e.g. {name}: {sample}")
    out("")
    for check, held in report["checks"].items():
        out(f"  [{'ok' if held else 'FAILED'}] {check}")
    out(f"chaos run {'PASSED' if report['ok'] else 'FAILED'}")
    if report.get("workdir"):
        out(f"logs, configuration and ledger in {report['workdir']}")


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=defaults.events)
    parser.add_argument("--keys", type=int, default=defaults.keys)
    parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate)
    parser.add_argument("--lost-rate", type=float, default=defaults.lost_rate)
    parser.add_argument("--stall-rate", type=float, default=defaults.stall_rate)
    parser.add_argument("--backup-lost-rate", type=float, default=defaults.backup_lost_rate)
    parser.add_argument(
        "--kill-at",
        default=",".join(str(f) for f in defaults.kill_at),
        help="fractions of events with a final result at which to SIGKILL",
    )
    parser.add_argument("--outage-at", type=float, default=defaults.outage_at)
    parser.add_argument("--outage-s", type=float, default=defaults.outage_s, help="0: no outage")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s)
    parser.add_argument(
        "--idle",
        type=float,
        default=defaults.idle_s,
        help="stop waiting for final results after this long without any activity",
    )
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight)
    parser.add_argument(
        "--plain-create",
        action="store_true",
        help="no Salesforce external-id upsert: plain POST creates (shows duplicates)",
    )
    parser.add_argument("--bootstrap", help="an existing broker instead of the embedded one")
    parser.add_argument("--workdir", type=Path, help="keep logs, config and ledger here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    opts = ChaosOptions(
        events=args.events,
        keys=args.keys,
        fail_rate=args.fail_rate,
        lost_rate=args.lost_rate,
        stall_rate=args.stall_rate,
        backup_lost_rate=args.backup_lost_rate,
        kill_at=tuple(float(f) for f in args.kill_at.split(",") if f.strip()),
        outage_at=args.outage_at,
        outage_s=args.outage_s,
        seed=args.seed,
        timeout_s=args.timeout,
        idle_s=args.idle,
        max_in_flight=args.max_in_flight,
        external_id=not args.plain_create,
    )
    workdir = args.workdir
    if workdir is None and args.keep:
        workdir = Path(tempfile.mkdtemp(prefix="octopus-chaos-"))

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the finally blocks: daemon and broker stop

    signal.signal(signal.SIGTERM, interrupted)
    report = asyncio.run(run_chaos(opts, bootstrap=args.bootstrap, workdir=workdir))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
