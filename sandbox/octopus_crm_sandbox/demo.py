"""``octopus-crm demo``: the whole pipeline on one machine.

Starts the embedded broker (Tansu), the vendor fakes for every integration of the configuration
(the seed example by default, its base URLs pointed at the fakes, credentials from the fakes),
the daemon, and produces the sample events plus a few malformed records. It shows when the daemon
joins its group and the results per target as they arrive, waits for every result and dead
letter, prints a summary per target (explaining each skip), and exits 0 when every sample reached
its expected outcome.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.daemon.app import Daemon
from octopus_crm.daemon.config import CrmConfig, PrimaryBackup
from octopus_crm.daemon.logs import configure_logging
from octopus_crm.daemon.producing import event_key, produce_lines
from octopus_crm.daemon.settings import Settings
from octopus_crm.strategies.routing import plan
from octopus_crm_sandbox.local_stack import EXAMPLES, local_stack
from octopus_crm_sandbox.runner import Sandbox, integrations_of

__all__ = ["run_demo"]

PROGRESS_EVERY_S = 2.0

# Malformed input the demo sends along, with the dead-letter class each must get.
BAD_RECORDS: list[tuple[bytes, str]] = [
    (b"{this is not json", "invalid_json"),
    (b"\xff\xfe\x00 binary", "undecodable"),
    (orjson.dumps({"schemaVersion": 9, "eventId": "future"}), "unsupported_schema_version"),
    (orjson.dumps({"schemaVersion": 1, "eventId": "half", "tenantId": "t-acme"}), "schema_violation"),
]


def _inject_outage(sandbox: Sandbox, config: CrmConfig, lines: list[bytes]) -> int:
    """Salesforce answers 503 to every attempt at the first sample's lead: the seed's
    primary_backup strategy falls back to HubSpot and, with sync_back, later delivers to
    Salesforce too. Returns the extra results this adds."""
    from octopus_crm_sandbox.kit import Fault

    fake = sandbox.fakes.get("salesforce")
    if fake is None or not lines or not isinstance(config.strategy, PrimaryBackup):
        return 0
    phone = ClassifiedMessage.model_validate_json(lines[0]).sender.phone or ""
    attempts = config.retry.max_attempts
    fake.inject(
        *[
            Fault(
                503,
                [{"message": "Service Unavailable", "errorCode": "SERVER_UNAVAILABLE"}],
                path_contains="/sobjects/Lead",
                body_contains=phone,
            )
            for _ in range(attempts)
        ]
    )
    print(
        f"injected: Salesforce answers 503 to all {attempts} attempts at the first lead "
        "(expect one fallback to HubSpot, then sync_back to Salesforce)"
    )
    return 1 if config.strategy.rules.sync_back else 0


def _expected_results(config: CrmConfig, lines: list[bytes]) -> int:
    total = 0
    for line in lines:
        event = ClassifiedMessage.model_validate_json(line)
        p = plan(config, event)
        total += len(p.routes) + len(p.skips)
    return total


async def _read(
    settings: Settings,
    topic: str,
    expect: int,
    timeout: float,
    on_batch: Callable[[list[Any]], None] | None = None,
) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap_servers, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
                if on_batch is not None:
                    on_batch(records)
    finally:
        await consumer.stop()
    return out


class _Progress:
    """Results per target as they arrive, one line every ``PROGRESS_EVERY_S`` at most."""

    def __init__(self, expected: int, started: float) -> None:
        self.expected = expected
        self.started = started
        self.by_target: collections.Counter[str] = collections.Counter()
        self.total = 0
        self._printed_at = 0.0

    def __call__(self, records: list[Any]) -> None:
        for record in records:
            self.by_target[orjson.loads(record.value).get("integrationId") or "no target"] += 1
        self.total += len(records)
        now = time.monotonic()
        if now - self._printed_at >= PROGRESS_EVERY_S or self.total >= self.expected:
            self._printed_at = now
            targets = ", ".join(f"{name} {n}" for name, n in sorted(self.by_target.items()))
            print(f"  {now - self.started:5.1f}s  results {self.total}/{self.expected}: {targets}", flush=True)


async def _announce_join(daemon: Daemon, settings: Settings, started: float) -> None:
    """Print when the daemon has joined its consumer group (its /readyz turns 200)."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            port = daemon.admin.port if daemon.admin is not None else 0  # 0 until the probes server is bound
            base = f"http://127.0.0.1:{port}"
            try:
                if port:
                    async with session.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            print(
                                f"  {time.monotonic() - started:5.1f}s  joined consumer group {settings.group_id}; "
                                f"delivering (metrics at {base}/metrics)",
                                flush=True,
                            )
                            return
            except (aiohttp.ClientError, TimeoutError):
                pass  # the admin server is not up yet
            await asyncio.sleep(0.25)


def _print_summary(results: list[dict[str, Any]], dlq: list[Any], sandbox: Sandbox, elapsed: float) -> None:
    by_target: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        name = f"{r.get('integrationId') or '-'} ({r.get('integrationType') or 'no target'})"
        by_target[name][r["status"]] += 1
    statuses = ["succeeded", "fallback", "duplicate", "skipped", "failed"]
    print()
    print(f"{'target':<36}" + "".join(f"{s:>11}" for s in statuses))
    for name in sorted(by_target):
        print(f"{name:<36}" + "".join(f"{by_target[name][s]:>11}" for s in statuses))
    dlq_classes = collections.Counter(dict(r.headers).get("octopus-error-class", b"?").decode() for r in dlq)
    print(
        f"\ndead-letter queue: {sum(dlq_classes.values())} records "
        + ", ".join(f"{k}={v}" for k, v in sorted(dlq_classes.items()))
    )
    print(
        "records created in the local fakes: "
        + ", ".join(f"{name}={len(getattr(fake, 'records', {}))}" for name, fake in sorted(sandbox.fakes.items()))
    )
    for r in results:
        if r["status"] == "fallback":
            print(f"  fallback: {r['fallbackFrom']} failed ({r['error']['code']}), delivered to {r['integrationId']}")
        elif (r.get("reason") or "").startswith("sync_back"):
            print(f"  sync_back: {r['integrationId']} {r['objectType']} {r['externalId']} — {r['reason']}")
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed[:10]:
        print(f"  failed: {r.get('integrationId')} {r.get('objectType')}: {r.get('error')}")
    skips = collections.Counter(
        (r.get("integrationId") or "-", r.get("reason") or "no reason given")
        for r in results
        if r["status"] == "skipped"
    )
    if skips:
        print("skipped deliveries (the configuration's rules chose not to deliver; expected, not failures):")
        for (target, reason), count in sorted(skips.items()):
            print(f"  {target} ×{count}: {reason}")
    print(f"\n{len(results)} results and {len(dlq)} dead letters in {elapsed:.1f}s")


async def run_demo(*, config_path: str | None = None, events_path: str | None = None, verbose: bool = False) -> int:
    configure_logging("console", "INFO" if verbose else "WARNING", own_level=None if verbose else "ERROR")
    config_file = Path(config_path) if config_path else EXAMPLES / "crm-config.seed.json"
    events_file = Path(events_path) if events_path else EXAMPLES / "events.sample.jsonl"
    lines = [line for line in events_file.read_bytes().splitlines() if line.strip()]
    if config_path is None and events_path is None:
        # Tenant t-showcase sends one event to every target of the default configuration (parallel_sync).
        showcase = EXAMPLES / "events.showcase.jsonl"
        lines += [line for line in showcase.read_bytes().splitlines() if line.strip()]

    print(
        f"octopus-crm demo: {len(lines)} sample events, {len(integrations_of(config_file))} integrations; "
        "starting the embedded broker and the vendor fakes",
        flush=True,
    )
    async with local_stack(
        config_file,
        overlay_extra={"retry": {"maxAttempts": 2, "initialDelay": 0.2}},
        group_id=f"octopus-demo-{uuid.uuid4().hex[:6]}",
        metrics_port=0,  # bound by the daemon itself: a port picked beforehand can be taken meanwhile
        admin_port=0,
        commit_interval_s=0.5,
    ) as stack:
        settings, config, sandbox = stack.settings, stack.config, stack.sandbox
        print(
            f"embedded broker at {settings.bootstrap_servers}; fakes for {', '.join(sorted(sandbox.fakes)) or 'none'}",
            flush=True,
        )
        expected = _expected_results(config, lines)
        if config_path is None:
            expected += _inject_outage(sandbox, config, lines)
        started = time.monotonic()
        daemon = Daemon(settings, config)
        task = asyncio.create_task(daemon.run())
        joined = asyncio.create_task(_announce_join(daemon, settings, started))
        try:
            print(
                f"daemon started; joining consumer group {settings.group_id} "
                f"(the first join takes a few seconds); producing {len(lines)} events "
                f"and {len(BAD_RECORDS)} malformed records",
                flush=True,
            )
            await produce_lines(settings, lines, topic=settings.input_topic, key_field="tenantId:sender.id")
            await _produce_bad(settings)
            progress = _Progress(expected, started)
            raw_results = await _read(settings, settings.results_topic, expected, timeout=90, on_batch=progress)
            dlq = await _read(settings, settings.dlq_topic, len(BAD_RECORDS), timeout=30)
        finally:
            joined.cancel()
            daemon.request_stop()
            await asyncio.wait_for(task, 60)
        elapsed = time.monotonic() - started
    results = [orjson.loads(r.value) for r in raw_results]
    _print_summary(results, dlq, sandbox, elapsed)
    return _verdict(results, expected, dlq)


async def _produce_bad(settings: Settings) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        for value, _ in BAD_RECORDS:
            await producer.send_and_wait(settings.input_topic, value=value, key=event_key(value, "tenantId") or b"bad")
    finally:
        await producer.stop()


def _verdict(results: list[dict[str, Any]], expected: int, dlq: list[Any]) -> int:
    problems = []
    if len(results) != expected:
        problems.append(f"expected {expected} results, got {len(results)}")
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        problems.append(f"{len(failed)} deliveries failed")
    got = sorted(dict(r.headers).get("octopus-error-class", b"").decode() for r in dlq)
    want = sorted(cls for _, cls in BAD_RECORDS)
    if got != want:
        problems.append(f"dead letters {got} != expected {want}")
    if problems:
        print("DEMO FAILED: " + "; ".join(problems))
        return 1
    print("demo OK: every sample event reached its expected outcome")
    return 0
