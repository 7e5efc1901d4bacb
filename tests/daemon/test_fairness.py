"""Delivery fairness on a real broker and fakes over HTTP: a paced or hanging target never holds
back its siblings, and two copies of one delivery call the vendor once."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from typing import Any

import orjson
import structlog

from octopus_crm.daemon import metrics
from octopus_crm.daemon.app import Daemon
from octopus_crm.daemon.config import parse_config
from octopus_crm.daemon.ledger import Lease, MemoryLedger
from octopus_crm.daemon.retrying import RetryRecord
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from octopus_crm_sandbox.wecom import WeComFake
from tests.adapters.seed import resolved
from tests.conftest import ROOT
from tests.daemon.test_pipeline import running
from tests.events import keyed, make_event, webhook_config


def fake(name: str, **kw: Any) -> WebhookFake:
    vendor = WebhookFake(dedupe=False, **kw)
    vendor.name = name
    return vendor


def by_integration(records: list[Any], integration: str) -> list[Any]:
    return [r for r in records if orjson.loads(r.value).get("integrationId") == integration]


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_paced_target_does_not_hold_back_a_fast_sibling(broker: Any, topics: Any) -> None:
    """WeCom's 16 messages/min beside a fast target in the same events (5 keys, so per-key order
    would chain the events behind the paced deliveries if they were made inline)."""
    await broker.create(topics)
    paced, fast = fake("paced"), fake("fast")
    n = 30
    async with SandboxServer(paced, fast):
        raw = webhook_config({"paced": f"{paced.base_url}/hooks/p", "fast": f"{fast.base_url}/hooks/f"})
        raw["crmIntegrations"][0]["config"]["rateLimit"] = {"requests": 16, "perSeconds": 60, "concurrency": 4}
        events = [make_event(i, key=f"k{i % 5}") for i in range(n)]
        await broker.produce(topics.input, keyed(events))
        async with running(Daemon(broker.settings(topics), parse_config(raw))):
            results: list[Any] = []
            deadline = time.monotonic() + 60
            while len(by_integration(results, "fast")) < n and time.monotonic() < deadline:
                results = await broker.read(topics.results, expect=n, timeout=5)
            retries = await broker.read(topics.retry, expect=n - 2, timeout=10)
    fast_results = by_integration(results, "fast")
    assert len(fast_results) == n
    assert {orjson.loads(r.value)["status"] for r in fast_results} == {"succeeded"}
    # from the fast target's delivery to its result on the broker: inline, the result of an event
    # whose paced delivery waits for its turn would wait with it (3.9 s a turn)
    now_wall, now_mono = time.time(), time.monotonic()
    delivered = {r.headers.get("X-Octopus-Event-Id"): now_wall - (now_mono - r.at) for r in fast.requests}
    lags = sorted(r.timestamp / 1000 - delivered[orjson.loads(r.value)["eventId"]] for r in fast_results)
    p99 = lags[min(n - 1, round(0.99 * n))]
    print(f"fast target: result after delivery p50 {statistics.median(lags):.3f} s, p99 {p99:.3f} s")
    assert p99 < 2.0
    assert sample("octopus_crm_retries_scheduled_total", integration="paced", reason="backlog") >= 1
    kinds = [(h[1].decode()) for r in retries for h in r.headers if h[0] == "octopus-retry-kind"]
    # handed off: as backlog, or (the webhook keeps per-key order) queued behind the key's backlog
    assert kinds.count("backlog") + kinds.count("barrier") >= n - 3
    assert len(paced.deliveries) <= 3


async def test_a_hanging_target_does_not_hold_back_its_siblings_result(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    hang, fast = fake("hang"), fake("fast")
    hang.inject(Fault(503, {"error": "too late"}, delay=12.0))
    async with SandboxServer(hang, fast):
        raw = webhook_config({"hang": f"{hang.base_url}/hooks/h", "fast": f"{fast.base_url}/hooks/f"})
        await broker.produce(topics.input, keyed([make_event(0, key="solo")]))
        async with running(Daemon(broker.settings(topics), parse_config(raw))):
            results = await broker.read(topics.results, expect=1, timeout=30)
            delivered = fast.requests[0].at
            delivered_wall = time.time() - (time.monotonic() - delivered)
            hang_answered = len(hang.deliveries)
    assert len(results) == 1 and orjson.loads(results[0].value)["integrationId"] == "fast"
    assert hang_answered == 0  # the hanging call was still in flight when the sibling's result was out
    lag = results[0].timestamp / 1000 - delivered_wall
    print(f"sibling result {lag:.3f} s after its delivery")
    assert lag < 2.0  # 1 s in the issue; slack for a loaded test machine (was ≥ 12 s)


async def test_two_copies_of_one_delivery_call_the_vendor_once(broker: Any, topics: Any) -> None:
    """The same event consumed twice at once (a redelivery racing the first copy): the second copy
    finds the first one's claim and waits for its outcome instead of calling the vendor."""
    await broker.create(topics)
    slow = fake("slow", latency=1.0)
    async with SandboxServer(slow):
        raw = webhook_config({"slow": f"{slow.base_url}/hooks/s"})
        value = orjson.dumps(make_event(0))
        await broker.produce(topics.input, [(b"copy-a", value), (b"copy-b", value)])
        async with running(Daemon(broker.settings(topics), parse_config(raw))):
            results = await broker.read(topics.results, expect=1, timeout=30)
            await wait_for(lambda: len(slow.requests) >= 1)
            await asyncio.sleep(4.0)  # the second copy looks again (2-s poll) and finds it done
            results = await broker.read(topics.results, expect=2, timeout=3)
    assert len(slow.deliveries) == 1
    statuses = [orjson.loads(r.value)["status"] for r in results]
    assert statuses.count("succeeded") == 1
    assert set(statuses) <= {"succeeded", "duplicate"}


async def test_wecom_rate_limit_codes_park_without_spending_attempts(broker: Any, topics: Any) -> None:
    """45009 (a 60-s block) parks the delivery on the retry topic with its attempt given back,
    instead of five 60-s retries that dead-letter the event during an hourly block."""
    await broker.create(topics)
    wecom = WeComFake()
    for _ in range(3):
        wecom.inject(Fault(200, {"errcode": 45009, "errmsg": "api freq out of limit"}, path_contains="/oa/"))
    async with SandboxServer(wecom):
        seed = orjson.loads((ROOT / "examples" / "crm-config.seed.json").read_bytes())
        entry = next(i for i in seed["crmIntegrations"] if i["id"] == "cn-wework")
        entry["config"] = resolved(entry["config"], wecom.ENV) | {"endpoints": wecom.endpoints()}
        raw = {"crmIntegrations": [entry], "strategy": {"strategy": "parallel_sync", "targets": [{"id": "cn-wework"}]}}
        lines = (ROOT / "examples" / "events.sample.jsonl").read_bytes().splitlines()
        await broker.produce(topics.input, [(b"k", lines[0])])
        async with running(Daemon(broker.settings(topics), parse_config(raw))):
            retries = await broker.read(topics.retry, expect=1, timeout=30)
            dead = await broker.read(topics.dlq, expect=1, timeout=2)
    assert not dead
    record = RetryRecord.decode(retries[0].value)
    assert record.kind == "park" and record.attempt == 0
    assert 50 <= record.due - time.time() <= 61  # WeCom's minute block, not a retry backoff
    assert len([r for r in wecom.requests if r.path == "/cgi-bin/oa/applyevent"]) == 1


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_limiter_wait_is_apart_from_vendor_latency_and_detail_reaches_the_result(
    broker: Any, topics: Any
) -> None:
    """Four messages to WeCom paced at 2/s (a budget of 5 s keeps them inline): the ~1.5 s they
    wait for their turns is in ..._rate_limit_wait_seconds, not in ..._delivery_duration_seconds;
    WeCom's ``invaliduser`` reaches the result and the canonical log line."""
    await broker.create(topics)
    wecom = WeComFake()
    integration = f"wecom-{topics.group}"
    async with SandboxServer(wecom):
        seed = orjson.loads((ROOT / "examples" / "crm-config.seed.json").read_bytes())
        entry = next(i for i in seed["crmIntegrations"] if i["id"] == "cn-wework")
        config = resolved(entry["config"], wecom.ENV) | {"endpoints": wecom.endpoints()}
        config["mappings"] = {"message": {"touser": "zhangsan|ghost", "content": "{{messageContent}}"}}
        config["rateLimit"] = {"requests": 2, "perSeconds": 1, "concurrency": 4}
        raw = {
            "crmIntegrations": [{"id": integration, "type": "wecom", "config": config}],
            "strategy": {"strategy": "parallel_sync", "targets": [{"id": integration}]},
            "retry": {"handoffBudget": 5},
        }
        await broker.produce(topics.input, keyed([make_event(i, key=f"k{i}") for i in range(4)]))
        with structlog.testing.capture_logs() as logs:
            async with running(Daemon(broker.settings(topics), parse_config(raw))):
                results = await broker.read(topics.results, expect=4, timeout=30)
    assert [orjson.loads(r.value)["detail"] for r in results] == [{"invaliduser": "ghost"}] * 4
    finals = [o for e in logs if e["event"] == "event processed" for o in e["outcomes"]]
    assert len(finals) == 4 and all(o["detail"] == {"invaliduser": "ghost"} for o in finals)
    labels = {"integration": integration, "type": "wecom"}
    waited = sample("octopus_crm_delivery_rate_limit_wait_seconds_sum", **labels)
    vendor = sample("octopus_crm_delivery_duration_seconds_sum", **labels)
    print(f"limiter wait {waited:.2f} s, vendor time {vendor:.2f} s over 4 deliveries")
    assert sample("octopus_crm_delivery_rate_limit_wait_seconds_count", **labels) == 4
    assert waited >= 1.0 and vendor < waited
    assert sample("octopus_crm_retries_scheduled_total", integration=integration, reason="backlog") == 0


async def test_a_copy_adopting_a_dead_copys_delivery_does_not_report_it_twice(broker: Any, topics: Any) -> None:
    """The process died between the broker's ack of a result and the ledger's note of it: the
    copy that adopts the delivery finds the result on the results topic and reports ``duplicate``
    instead of a second ``succeeded``."""
    await broker.create(topics)
    hook = fake("hook")
    ledger = MemoryLedger()
    async with SandboxServer(hook):
        raw = webhook_config({"hook": f"{hook.base_url}/hooks/h"})
        event = make_event(0)
        await broker.produce(topics.input, keyed([event]))
        async with running(Daemon(broker.settings(topics), parse_config(raw), ledger=ledger)):
            await broker.read(topics.results, expect=1, timeout=30)
            await wait_for(lambda: any(e.published for e in ledger.entries.values()))
        # what a SIGKILL right after the ack leaves: the entry not marked published, the lease
        # held by the process that is gone (the lease of a published entry is not released)
        ((key, entry),) = ledger.entries.items()
        ledger.entries[key] = dataclasses.replace(entry, published=False)
        ledger.leases[f"route:{key}"] = Lease("0123456789ab/gone", time.time() + 120)
        await broker.produce(topics.input, keyed([event]))  # redelivered after the restart
        async with running(Daemon(broker.settings(topics), parse_config(raw), ledger=ledger)):
            results = await broker.read(topics.results, expect=2, timeout=30)
    assert [orjson.loads(r.value)["status"] for r in results] == ["succeeded", "duplicate"]
    assert len(hook.deliveries) == 1
