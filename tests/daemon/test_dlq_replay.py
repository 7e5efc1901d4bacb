"""``octopus-crm dlq replay``: dead letters back into the input topic, once, deduplicated."""

from __future__ import annotations

import collections
from typing import Any

import orjson

from octopus_crm.daemon.app import Daemon
from octopus_crm.daemon.config import parse_config
from octopus_crm.daemon.dlq import ReplayFilter, replay_dlq
from octopus_crm.daemon.ledger import MemoryLedger
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.daemon.test_pipeline import running
from tests.events import keyed, make_event, webhook_config


async def test_replay_fills_only_what_is_missing(broker: Any, topics: Any) -> None:
    await broker.create(topics)
    good, flaky = WebhookFake(dedupe=False), WebhookFake(dedupe=False)
    good.name, flaky.name = "good", "flaky"
    flaky.inject(*[Fault(500) for _ in range(10)])
    async with SandboxServer(good, flaky):
        raw = webhook_config({"good": f"{good.base_url}/hooks/g", "flaky": f"{flaky.base_url}/hooks/f"})
        raw["retry"] = {"maxAttempts": 2, "initialDelay": 0.05, "jitter": 0}
        raw["crmIntegrations"][1]["ordered"] = False
        events = [make_event(i, key=f"k{i}") for i in range(5)]
        await broker.produce(topics.input, keyed(events))
        settings = broker.settings(topics)
        ledger = MemoryLedger()  # shared by both runs: what a persistent ledger remembers
        async with running(Daemon(settings, parse_config(raw), ledger=ledger)):
            dlq = await broker.read(topics.dlq, expect=5, timeout=60)
            first = await broker.read(topics.results, expect=10, timeout=30)
        assert len(dlq) == 5
        assert collections.Counter(orjson.loads(r.value)["status"] for r in first) == {"succeeded": 5, "failed": 5}

        flaky.faults.clear()  # the vendor is back
        dry = await replay_dlq(settings, ReplayFilter(), dry_run=True)
        assert dry.matched == 5 and dry.replayed == 0
        other = await replay_dlq(settings, ReplayFilter(integrations=frozenset({"good"})))
        assert other.matched == 0 and other.replayed == 0
        report = await replay_dlq(settings, ReplayFilter(integrations=frozenset({"flaky"})), rate=100)
        assert report.replayed == 5
        again = await replay_dlq(settings, ReplayFilter(integrations=frozenset({"flaky"})))
        assert again.replayed == 0, "a dead letter was replayed twice"

        async with running(Daemon(settings, parse_config(raw), ledger=ledger)):
            results = await broker.read(topics.results, expect=20, timeout=60)
    replayed = [orjson.loads(r.value) for r in results[10:]]
    assert collections.Counter((r["integrationId"], r["status"]) for r in replayed) == {
        ("good", "duplicate"): 5,
        ("flaky", "succeeded"): 5,
    }
    assert len(good.deliveries) == 5, "replay created a second record at the target that had it"
    assert len(flaky.deliveries) == 5
