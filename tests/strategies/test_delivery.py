"""Strategies end to end: the daemon on a real broker, webhook fakes with injected faults."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import orjson

from octopus_crm.daemon.app import Daemon
from octopus_crm.daemon.config import parse_config
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.daemon.test_pipeline import run_until, running
from tests.events import keyed, make_event, webhook_config

FAST_RETRY = {"maxAttempts": 3, "initialDelay": 0.1, "multiplier": 2, "jitter": 0}


def fakes(*names: str, **kw: Any) -> list[WebhookFake]:
    out = []
    for name in names:
        fake = WebhookFake(dedupe=False, **kw)
        fake.name = name
        out.append(fake)
    return out


def statuses(results: list[Any]) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (orjson.loads(r.value)["integrationId"], orjson.loads(r.value)["status"]) for r in results
    )


async def test_primary_5xx_falls_back_to_backup(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    primary, backup = fakes("primary", "backup")
    primary.inject(*[Fault(503, {"error": "down"}) for _ in range(3)])  # first event: every attempt fails
    async with SandboxServer(primary, backup):
        raw = webhook_config(
            {"primary": f"{primary.base_url}/hooks/p", "backup": f"{backup.base_url}/hooks/b"},
            strategy={"strategy": "primary_backup", "primary": {"id": "primary", "fallback": "backup"}},
        )
        raw["retry"] = FAST_RETRY
        events = [make_event(0, key="solo")]
        await broker.produce(topics.input, keyed(events))
        daemon = Daemon(broker.settings(topics), parse_config(raw))
        await run_until(daemon, lambda: len(backup.deliveries) >= 1)
        results = await broker.read(topics.results, expect=1)
    result = orjson.loads(results[0].value)
    assert result["status"] == "fallback"
    assert result["integrationId"] == "backup" and result["fallbackFrom"] == "primary"
    assert result["error"]["code"] == "http_503"
    assert result["attempts"] == 4
    assert len(primary.deliveries) == 0


async def test_sync_back_delivers_to_the_primary_once_it_recovers(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    primary, backup = fakes("primary", "backup")
    primary.inject(*[Fault(500) for _ in range(3)])
    async with SandboxServer(primary, backup):
        raw = webhook_config(
            {"primary": f"{primary.base_url}/hooks/p", "backup": f"{backup.base_url}/hooks/b"},
            strategy={
                "strategy": "primary_backup",
                "primary": {"id": "primary", "fallback": "backup"},
                "rules": {"sync_back": True},
            },
        )
        raw["retry"] = FAST_RETRY
        await broker.produce(topics.input, keyed([make_event(0, key="solo")]))
        daemon = Daemon(broker.settings(topics), parse_config(raw))
        await run_until(daemon, lambda: len(primary.deliveries) >= 1 and len(backup.deliveries) >= 1)
        results = [orjson.loads(r.value) for r in await broker.read(topics.results, expect=2)]
    by_status = {r["status"]: r for r in results}
    assert set(by_status) == {"fallback", "succeeded"}
    assert by_status["succeeded"]["integrationId"] == "primary"
    assert "sync_back" in by_status["succeeded"]["reason"]
    assert primary.deliveries[0]["eventId"] == backup.deliveries[0]["eventId"]


async def test_fan_out_one_target_failing_never_blocks_the_others(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    good, bad = fakes("good", "bad")
    bad.inject(*[Fault(500) for _ in range(1000)])
    async with SandboxServer(good, bad):
        raw = webhook_config({"good": f"{good.base_url}/hooks/g", "bad": f"{bad.base_url}/hooks/b"})
        raw["retry"] = FAST_RETRY
        events = [make_event(i, key=f"k{i % 5}") for i in range(20)]
        await broker.produce(topics.input, keyed(events))
        daemon = Daemon(broker.settings(topics), parse_config(raw))
        async with running(daemon):
            results = await broker.read(topics.results, expect=40, timeout=60)
            dlq = await broker.read(topics.dlq, expect=20, timeout=30)
    counts = statuses(results)
    assert counts[("good", "succeeded")] == 20
    assert counts[("bad", "failed")] == 20
    assert len(dlq) == 20
    headers = dict(dlq[0].headers)
    assert headers["octopus-error-class"] == b"delivery_failed"
    assert headers["octopus-integration"] == b"bad"
    history = orjson.loads(headers["octopus-attempt-history"])
    assert len(history) == 3  # the budget, spent on 500s or, once the circuit opened, failing fast
    assert {h["error"]["code"] for h in history} <= {"http_500", "circuit_open"}
    assert {e["eventId"] for e in events} == {orjson.loads(r.value)["eventId"] for r in dlq}


async def test_a_waiting_retry_holds_later_events_of_its_key_only(broker: Any, topics: Any) -> None:
    await broker.create(topics, partitions=1)
    (hook,) = fakes("hook")
    async with SandboxServer(hook):
        raw = webhook_config({"hook": f"{hook.base_url}/hooks/h"})
        raw["retry"] = {"maxAttempts": 5, "initialDelay": 1.0, "jitter": 0}
        first = make_event(0, key="slow")
        later = [make_event(i, key="slow") for i in range(1, 4)]
        others = [make_event(i, key=f"other{i}") for i in range(10, 20)]
        hook.inject(*[Fault(503, body_contains=first["eventId"]) for _ in range(2)])
        await broker.produce(topics.input, keyed([first, *later, *others]))
        daemon = Daemon(broker.settings(topics), parse_config(raw))
        await run_until(daemon, lambda: len(hook.deliveries) >= 14, timeout=60)
    order = [d["body"]["seq"] for d in hook.deliveries]
    slow = [s for s in order if s < 10]
    assert slow == [0, 1, 2, 3], "later events of the key overtook the waiting one"
    assert order.index(10) < order.index(0), "other keys waited behind the retry"


async def test_category_routes_unknown_category_default_and_skip(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    sales, support, fallback = fakes("sales", "support", "fallback")
    async with SandboxServer(sales, support, fallback):
        urls = {
            n: f"{f.base_url}/hooks/{n}" for n, f in (("sales", sales), ("support", support), ("fallback", fallback))
        }
        with_default = webhook_config(
            urls,
            strategy={
                "strategy": "category_routing",
                "routes": {"销售线索": ["sales"], "技术支持": ["support", "sales"]},
                "default": ["fallback"],
            },
        )
        events = [
            make_event(0, key="a", category="销售线索"),
            make_event(1, key="b", category="技术支持"),
            make_event(2, key="c", category="闲聊"),
        ]
        await broker.produce(topics.input, keyed(events))
        daemon = Daemon(broker.settings(topics), parse_config(with_default))
        await run_until(daemon, lambda: len(fallback.deliveries) >= 1 and len(sales.deliveries) >= 2)
        results = [orjson.loads(r.value) for r in await broker.read(topics.results, expect=4)]
    routed = collections.Counter((r["eventId"], r["integrationId"]) for r in results)
    assert routed == collections.Counter(
        {
            (events[0]["eventId"], "sales"): 1,
            (events[1]["eventId"], "support"): 1,
            (events[1]["eventId"], "sales"): 1,
            (events[2]["eventId"], "fallback"): 1,
        }
    )


async def test_unknown_category_without_default_is_an_explicit_skip(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    (sales,) = fakes("sales")
    async with SandboxServer(sales):
        raw = webhook_config(
            {"sales": f"{sales.base_url}/hooks/s"},
            strategy={"strategy": "category_routing", "routes": {"销售线索": ["sales"]}},
        )
        await broker.produce(topics.input, keyed([make_event(0, key="x", category="闲聊")]))
        daemon = Daemon(broker.settings(topics), parse_config(raw))
        results: list[Any] = []

        async def collect() -> None:
            results.extend(await broker.read(topics.results, expect=1, timeout=40))

        reader = asyncio.create_task(collect())
        await run_until(daemon, lambda: reader.done(), timeout=45)
    result = orjson.loads(results[0].value)
    assert result["status"] == "skipped" and "闲聊" in result["reason"]
    assert not sales.deliveries
