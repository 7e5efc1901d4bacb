"""Hostile events through the running daemon on a real broker: bounded cost, clear dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from octopus_crm.daemon.app import Daemon
from octopus_crm.daemon.config import parse_config
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.salesforce import SalesforceFake
from octopus_crm_sandbox.webhook import WebhookFake
from tests.adapters.seed import seed_entry
from tests.daemon.test_pipeline import run_until
from tests.events import keyed, make_event, webhook_config

CATASTROPHIC = "^(a+)+$"  # exponential on a backtracking engine when the text almost matches


# A backtracking engine never returns from this pattern, and a frozen loop cannot time itself
# out: the thread method ends the session instead of hanging it.
@pytest.mark.timeout(180, method="thread")
async def test_a_catastrophic_rule_pattern_keeps_the_loop_responsive(broker: Any, topics: Any) -> None:
    await broker.create(topics, partitions=1)
    hook = WebhookFake()
    async with SandboxServer(hook):
        raw = webhook_config(
            {"hook": f"{hook.base_url}/hooks/a"},
            rules={"conditions": [{"field": "content", "operator": "regex", "value": CATASTROPHIC}]},
        )
        config = parse_config(raw)
        hostile = make_event(0, content="a" * 41 + "!")
        matching = make_event(1, content="a" * 41)
        await broker.produce(topics.input, keyed([hostile, matching]))

        gaps: list[float] = []

        async def heartbeat() -> None:
            loop = asyncio.get_running_loop()
            last = loop.time()
            while True:
                await asyncio.sleep(0.05)
                now = loop.time()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        try:
            daemon = Daemon(broker.settings(topics), config)
            await run_until(daemon, lambda: len(hook.deliveries) >= 1)
            results = await broker.read(topics.results, expect=2)
        finally:
            beat.cancel()
    by_event = {orjson.loads(r.value)["eventId"]: orjson.loads(r.value) for r in results}
    assert by_event[matching["eventId"]]["status"] == "succeeded"
    assert by_event[hostile["eventId"]]["status"] == "skipped"
    assert [d["body"]["eventId"] for d in hook.deliveries] == [matching["eventId"]]
    assert max(gaps) < 10.0  # generous for a loaded machine; the old engine froze for minutes


@pytest.mark.parametrize(
    "field,value",
    [
        ("eventId", "ev-1\r\nX-Injected: yes"),
        ("messageId", "msg\n1"),
        ("tenantId", "t-acme\x00"),
        ("tenantId", "t acme"),
    ],
)
async def test_ids_that_are_not_header_safe_are_schema_violations(
    broker: Any, topics: Any, field: str, value: str
) -> None:
    await broker.create(topics, partitions=1)
    hook = WebhookFake()
    async with SandboxServer(hook):
        config = parse_config(webhook_config({"hook": f"{hook.base_url}/hooks/a"}))
        bad = orjson.dumps({**make_event(0), field: value})
        await broker.produce(topics.input, [(b"bad", bad), *keyed([make_event(1)])])
        daemon = Daemon(broker.settings(topics), config)
        await run_until(daemon, lambda: len(hook.deliveries) >= 1)
        dlq = await broker.read(topics.dlq, expect=1)
    assert len(dlq) == 1 and dlq[0].value == bad
    headers = dict(dlq[0].headers)
    assert headers["octopus-error-class"] == b"schema_violation"
    assert field.encode() in headers["octopus-error-reason"]


async def test_a_body_blown_up_by_the_template_fails_permanently_and_is_not_sent(broker: Any, topics: Any) -> None:
    await broker.create(topics, partitions=1)
    hook = WebhookFake()
    async with SandboxServer(hook):
        raw = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        raw["crmIntegrations"][0]["config"]["mappings"]["message"]["text"] = "{{messageContent}}" * 100
        config = parse_config(raw)
        big = make_event(0, content="x" * 400_000)
        small = make_event(1)
        await broker.produce(topics.input, keyed([big, small]))
        daemon = Daemon(broker.settings(topics), config)
        await run_until(daemon, lambda: len(hook.deliveries) >= 1)
        results = await broker.read(topics.results, expect=2)
    by_event = {orjson.loads(r.value)["eventId"]: orjson.loads(r.value) for r in results}
    failed = by_event[big["eventId"]]
    assert failed["status"] == "failed"
    assert failed["error"]["class"] == "permanent" and failed["error"]["code"] == "body_too_large"
    assert "over the 1,048,576-byte limit" in failed["error"]["message"]
    assert by_event[small["eventId"]]["status"] == "succeeded"
    assert [d["body"]["eventId"] for d in hook.deliveries] == [small["eventId"]]


@pytest.mark.parametrize("answer", [[1, 2], "token", {"access_token": ["not", "a", "string"]}])
async def test_a_token_endpoint_of_the_wrong_shape_fails_only_its_target(broker: Any, topics: Any, answer: Any) -> None:
    await broker.create(topics, partitions=1)
    crm, hook = SalesforceFake(), WebhookFake()
    async with SandboxServer(crm, hook):
        raw = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        entry = seed_entry("salesforce", crm.ENV)
        entry["config"]["endpoints"] = {**entry["config"]["endpoints"], **crm.endpoints()}
        raw["crmIntegrations"].append(entry)
        raw["strategy"] = {"strategy": "parallel_sync", "targets": [{"id": "hook"}, {"id": entry["id"]}]}
        config = parse_config(raw)
        crm.inject(Fault(200, body=answer, path_contains="/oauth2/token"))
        event = make_event(0)
        await broker.produce(topics.input, keyed([event]))
        daemon = Daemon(broker.settings(topics), config)
        await run_until(daemon, lambda: len(hook.deliveries) >= 1)
        results = await broker.read(topics.results, expect=2)
        dlq = await broker.read(topics.dlq, expect=1, timeout=5)
    by_target = {orjson.loads(r.value)["integrationId"]: orjson.loads(r.value) for r in results}
    assert by_target["hook"]["status"] == "succeeded"
    failed = by_target[entry["id"]]
    assert failed["status"] == "failed"
    assert failed["error"]["class"] in ("permanent", "auth"), failed
    assert failed["error"]["code"] in ("unexpected_response", "token_rejected"), failed
    assert all(dict(r.headers).get("octopus-error-class") != b"internal_error" for r in dlq)
    assert crm.records == {}
