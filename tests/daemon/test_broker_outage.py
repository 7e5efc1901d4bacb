"""A broker that is not there yet: the daemon waits (alive, not ready), then works once it is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm.daemon.net import free_port
from octopus_crm.daemon.topics import create_topics
from octopus_crm_sandbox.broker import EmbeddedBroker
from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.events import keyed, make_event, webhook_config
from tests.kafka import TestBroker
from tests.process import DaemonProcess

pytestmark = pytest.mark.slow


async def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_down_at_start_is_retried_and_reported_on_readyz(topics: Any, tmp_path: Path) -> None:
    port = free_port()
    late = TestBroker(f"127.0.0.1:{port}", idempotence=False, kind="tansu")
    hook = WebhookFake()
    async with SandboxServer(hook):
        config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        daemon = DaemonProcess(late, topics, config, tmp_path, "early").start()
        try:
            await wait_for(lambda: daemon.get("/healthz")[0] == 200, 30)
            status, body = daemon.get("/readyz")
            assert status == 503 and b"broker" in body
            await asyncio.sleep(2)
            assert daemon.proc is not None and daemon.proc.poll() is None, "crashed instead of waiting"
            assert daemon.get("/healthz")[0] == 200
            with EmbeddedBroker(port=port):
                await create_topics(late.bootstrap, [topics.input, topics.results, topics.dlq, topics.retry])
                await late.produce(topics.input, keyed([make_event(0)]))
                await wait_for(lambda: daemon.get("/readyz")[0] == 200, 60)
                results = await late.read(topics.results, expect=1, timeout=60)
                code, _ = daemon.terminate()
        finally:
            daemon.stop()
    assert orjson.loads(results[0].value)["status"] == "succeeded"
    assert code == 0


async def test_sigterm_while_the_broker_is_unreachable_exits_zero(topics: Any, tmp_path: Path) -> None:
    nowhere = TestBroker(f"127.0.0.1:{free_port()}", idempotence=False, kind="tansu")
    config = webhook_config({"hook": "http://127.0.0.1:9/hooks/a"})
    daemon = DaemonProcess(nowhere, topics, config, tmp_path, "nowhere").start()
    try:
        await wait_for(lambda: daemon.get("/healthz")[0] == 200, 30)
        code, took = daemon.terminate()
    finally:
        daemon.stop()
    assert code == 0 and took < 10, daemon.log()[-2000:]


# -- an outage of a running broker: each test freezes (SIGSTOP) or kills its OWN Tansu, never the
# -- session broker other tests share.

OUTAGE_SETTINGS = {
    "stall_timeout_s": 3,
    "broker_timeout_s": 5,
    "broker_probe_interval_s": 1,
    "grace_period_s": 5,
}


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as embedded:
        yield embedded


def aiokafka_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if '"logger":"aiokafka' in line or '"logger": "aiokafka' in line]


async def result_ids(broker: TestBroker, topic: str, expect: int, timeout: float = 90) -> set[str]:
    """Event ids with a result, read until ``expect`` distinct ones (redelivery may add repeats)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    records = 0
    while len(seen) < expect and time.monotonic() < deadline:
        results = await broker.read(
            topic, expect=max(expect, records + 1), timeout=max(1.0, deadline - time.monotonic())
        )
        records = len(results)
        seen = {orjson.loads(r.value)["eventId"] for r in results}
    return seen


async def busy_daemon(
    own_broker: EmbeddedBroker, topics: Any, tmp_path: Path, hook: WebhookFake, name: str, events: int
) -> tuple[TestBroker, DaemonProcess]:
    """A ready daemon busy with a backlog of slow deliveries, its lag measured above zero."""
    broker = TestBroker(own_broker.bootstrap, idempotence=False, kind="tansu")
    await broker.create(topics)
    config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
    daemon = DaemonProcess(broker, topics, config, tmp_path, name, **OUTAGE_SETTINGS).start()
    await wait_for(lambda: daemon.get("/readyz")[0] == 200, 60)
    await broker.produce(topics.input, keyed([make_event(i, key=f"k{i % 4}") for i in range(events)]))
    await wait_for(
        lambda: (
            daemon.metric("octopus_crm_in_flight_events") > 0 and daemon.metric("octopus_crm_consumer_lag_records") > 0
        ),
        30,
    )
    return broker, daemon


async def test_readyz_fails_while_the_broker_is_frozen_and_recovers(
    own_broker: EmbeddedBroker, topics: Any, tmp_path: Path
) -> None:
    broker = TestBroker(own_broker.bootstrap, idempotence=False, kind="tansu")
    await broker.create(topics)
    config = webhook_config({"hook": "http://127.0.0.1:9/hooks/a"})
    daemon = DaemonProcess(broker, topics, config, tmp_path, "frozen", **OUTAGE_SETTINGS).start()
    try:
        await wait_for(lambda: daemon.get("/readyz")[0] == 200, 60)
        own_broker.freeze()
        try:
            await wait_for(lambda: daemon.get("/readyz")[0] == 503, 30)
            status, body = daemon.get("/readyz")
            assert status == 503 and b"broker" in body, body
            assert daemon.metric("octopus_crm_broker_reachable") == 0
            assert daemon.get("/healthz")[0] == 200, "an outage is not a reason to restart the pod"
            await wait_for(lambda: "broker unreachable since" in daemon.log(), 30)
        finally:
            own_broker.thaw()
        await wait_for(lambda: daemon.get("/readyz")[0] == 200, 60)
        assert daemon.metric("octopus_crm_broker_reachable") == 1
        await wait_for(lambda: "broker reachable again" in daemon.log(), 30)
    finally:
        daemon.stop()


async def test_healthz_stays_ok_through_an_outage_with_a_backlog(
    own_broker: EmbeddedBroker, topics: Any, tmp_path: Path
) -> None:
    hook = WebhookFake(latency=0.2)
    async with SandboxServer(hook):
        broker, daemon = await busy_daemon(own_broker, topics, tmp_path, hook, "backlog", events=160)
        try:
            own_broker.freeze()
            try:
                # well past BROKER_TIMEOUT_S + STALL_TIMEOUT_S without progress
                deadline = (
                    time.monotonic() + OUTAGE_SETTINGS["broker_timeout_s"] + 4 * OUTAGE_SETTINGS["stall_timeout_s"]
                )
                while time.monotonic() < deadline:
                    status, body = daemon.get("/healthz")
                    assert status == 200, f"restarted for an outage: {body!r}"
                    await asyncio.sleep(0.5)
            finally:
                own_broker.thaw()
            assert len(await result_ids(broker, topics.results, 160)) == 160
            assert daemon.get("/healthz")[0] == 200
        finally:
            daemon.stop()


async def test_aiokafka_errors_are_summarised_while_the_broker_is_killed(
    own_broker: EmbeddedBroker, topics: Any, tmp_path: Path
) -> None:
    broker = TestBroker(own_broker.bootstrap, idempotence=False, kind="tansu")
    await broker.create(topics)
    config = webhook_config({"hook": "http://127.0.0.1:9/hooks/a"})
    daemon = DaemonProcess(broker, topics, config, tmp_path, "killed", **OUTAGE_SETTINGS).start()
    try:
        await wait_for(lambda: daemon.get("/readyz")[0] == 200, 60)
        before = len(aiokafka_lines(daemon.log()))
        own_broker.stop()
        await asyncio.sleep(20)
        during = aiokafka_lines(daemon.log())[before:]
        code, took = daemon.terminate()
    finally:
        daemon.stop()
    log = daemon.log()
    # the first line per logger and 30 s, not one per failed connect or fetch (~200 a second before)
    assert len(during) <= 12, f"{len(during)} aiokafka lines in 20 s of outage:\n" + "\n".join(during[:20])
    assert "broker unreachable since" in log
    # SIGTERM with the broker gone (aiokafka's stop() raised CancelledError here before)
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert took < OUTAGE_SETTINGS["grace_period_s"] + 5, f"took {took:.1f}s"


async def test_sigterm_during_an_outage_exits_zero_within_the_grace_period(
    own_broker: EmbeddedBroker, topics: Any, tmp_path: Path
) -> None:
    hook = WebhookFake(latency=0.2)
    async with SandboxServer(hook):
        broker, daemon = await busy_daemon(own_broker, topics, tmp_path, hook, "sigterm", events=160)
        own_broker.freeze()
        try:
            await asyncio.sleep(3)  # the in-flight events now wait for the broker to take their results
            code, took = daemon.terminate(timeout=60)
        finally:
            own_broker.thaw()
            daemon.stop()
        log = daemon.log()
        assert code == 0, log[-3000:]
        assert took < OUTAGE_SETTINGS["grace_period_s"] + 5, f"took {took:.1f}s"
        assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
        assert "redelivered" in log  # says what it abandoned and what becomes of it

        # nothing lost: what was abandoned is consumed again by the next daemon
        second = DaemonProcess(broker, topics, webhook_config({"hook": f"{hook.base_url}/hooks/a"}), tmp_path, "next")
        second.start()
        try:
            assert len(await result_ids(broker, topics.results, 160)) == 160
        finally:
            second.stop()
