"""Live reload, measured on the real daemon process: a new configuration version is swapped in
while events are in flight — none lost, none delivered twice, no consumer-group rebalance (the
broker's own log shows no second JoinGroup) — an invalid version is refused and the running one
kept, SIGHUP checks at once, and the reload metrics and results' version header follow."""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm.daemon.config_versions import version_of
from octopus_crm_sandbox.broker import EmbeddedBroker
from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.events import keyed, make_event, webhook_config
from tests.kafka import TestBroker
from tests.process import DaemonProcess, wait_until

EVENTS = 300


@pytest.fixture
def logged_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestBroker, Path]]:
    """A broker of this test's own, logging every request it decodes (JoinGroup among them)."""
    log = tmp_path / "tansu.log"
    monkeypatch.setenv("TANSU_LOG", "warn,tansu_sans_io=debug")
    with EmbeddedBroker(log_path=str(log)) as embedded:
        yield TestBroker(embedded.bootstrap, idempotence=False, kind="tansu"), log


def joins(log: Path, group: str) -> int:
    needle = f'JoinGroupRequest {{ group_id: "{group}"'
    with log.open(errors="replace") as handle:
        return sum(1 for line in handle if "request_from_bytes" in line and needle in line)


def config_of(*hooks: tuple[str, str]) -> dict[str, Any]:
    tree = webhook_config(dict(hooks))
    del tree["strategy"]  # every enabled integration gets every event
    return tree


@pytest.mark.slow
async def test_reload_in_flight_loses_nothing_duplicates_nothing_and_never_rebalances(
    logged_broker: tuple[TestBroker, Path], topics: Any, tmp_path: Path
) -> None:
    broker, broker_log = logged_broker
    await broker.create(topics, partitions=4)
    a, b = WebhookFake(latency=0.05, dedupe=False), WebhookFake(dedupe=False)
    async with SandboxServer(a, b):
        first = config_of(("a", f"{a.base_url}/hooks/a"))
        daemon = DaemonProcess(broker, topics, first, tmp_path, "reload", max_in_flight=20)
        path = daemon.config_path
        v1 = version_of(path)
        events = [make_event(i, key=f"k{i % 30}") for i in range(EVENTS)]
        daemon.start()
        try:
            await wait_until(lambda: daemon.get("/readyz")[0] == 200, 60)
            await broker.produce(topics.input, keyed(events))
            await wait_until(lambda: len(a.deliveries) >= 60, 60)
            joins_before = joins(broker_log, topics.group)
            assigned_before = daemon.log().count("partitions assigned")

            # 1. an invalid version: refused, the running one kept, deliveries go on
            path.write_text('{"crmIntegrations": [{"id": "a", "type": "nope"}]}')
            await wait_until(lambda: daemon.metric("octopus_crm_config_last_reload_success") == 0, 20)
            delivered_meanwhile = len(a.deliveries)
            await wait_until(lambda: len(a.deliveries) > delivered_meanwhile, 20)

            # 2. a valid version adding integration b, written as configure writes (temp + rename)
            second = config_of(("a", f"{a.base_url}/hooks/a"), ("b", f"{b.base_url}/hooks/b"))
            temp = path.with_suffix(".tmp")
            temp.write_bytes(orjson.dumps(second))
            os.replace(temp, path)
            v2 = version_of(path)
            assert daemon.proc is not None
            in_flight_at_reload = daemon.metric("octopus_crm_in_flight_events")
            daemon.proc.send_signal(signal.SIGHUP)  # checks at once (the watcher would within 1 s)
            await wait_until(lambda: daemon.metric("octopus_crm_config_last_reload_success") == 1, 20)
            reloaded_at = daemon.metric("octopus_crm_config_last_reload_timestamp_seconds")
            delivered_at_reload = len(a.deliveries)

            await wait_until(lambda: len({d["eventId"] for d in a.deliveries}) >= EVENTS, 120)
            results = await broker.read(topics.results, expect=EVENTS + len(b.deliveries), timeout=60)
            _, listed = daemon.call(
                "GET", "/api/crm/integrations", headers={"Host": "127.0.0.1"}
            )  # no token: loopback only
            joins_after = joins(broker_log, topics.group)
            assigned_after = daemon.log().count("partitions assigned")
            code, _ = daemon.terminate()
        finally:
            daemon.stop()
    per_target = collections.Counter(
        (orjson.loads(r.value)["eventId"], orjson.loads(r.value)["integrationId"]) for r in results
    )
    sent_a = collections.Counter(d["eventId"] for d in a.deliveries)
    lost = {e["eventId"] for e in events} - set(sent_a)
    duplicated = [event_id for event_id, n in sent_a.items() if n > 1]
    report = (
        f"reload measurement: {EVENTS} events, {in_flight_at_reload:.0f} in flight and {delivered_at_reload} delivered"
        f" when v{v2} replaced v{v1}; lost {len(lost)}, duplicated {len(duplicated)} (vendor side),"
        f" results per (event, target) > 1: {sum(1 for n in per_target.values() if n > 1)};"
        f" JoinGroup requests for the group before/after: {joins_before}/{joins_after};"
        f" 'partitions assigned' before/after: {assigned_before}/{assigned_after};"
        f" new integration b delivered {len(b.deliveries)}"
    )
    print(report)
    assert code == 0
    assert not lost and not duplicated, report
    assert all(n == 1 for n in per_target.values()), report
    assert joins_after == joins_before >= 1, report  # no rebalance: nobody joined the group again
    assert assigned_after == assigned_before >= 1, report  # the daemon's own view: no new assignment
    assert b.deliveries, report  # the new integration delivers once swapped in
    assert reloaded_at > 0
    versions = {dict(r.headers).get("octopus-config-version", b"").decode() for r in results}
    assert v2 in versions, versions
    assert v2 in listed.decode()
    assert "configuration refused; the running version is kept" in daemon.log()


async def test_the_watcher_refuses_invalid_versions_and_survives_a_failed_swap(tmp_path: Path) -> None:
    from octopus_crm.daemon import metrics
    from octopus_crm.daemon.config import CrmConfig
    from octopus_crm.daemon.reload import ConfigReloader

    path = tmp_path / "crm-config.json"
    path.write_bytes(orjson.dumps(config_of(("a", "https://hooks.example.com/a"))))
    applied: list[str] = []
    fail = [False]

    async def apply(config: CrmConfig, version: str) -> None:
        if fail[0]:
            raise RuntimeError("adapter would not start")
        applied.append(version)

    reloader = ConfigReloader(str(path), apply)
    v1 = reloader.version
    assert (await reloader.check()).applied is False  # unchanged

    path.write_text('{"crmIntegrations": []}')
    refused = await reloader.check()
    assert not refused.applied and refused.version == v1 and refused.errors
    assert metrics.CONFIG_RELOAD_SUCCESS._value.get() == 0

    fail[0] = True
    path.write_bytes(orjson.dumps(config_of(("b", "https://hooks.example.com/b"))))
    failed = await reloader.check()
    assert not failed.applied and failed.version == v1 and "adapter would not start" in failed.errors[0][1]

    fail[0] = False
    path.write_bytes(orjson.dumps(config_of(("c", "https://hooks.example.com/c"))))
    done = await reloader.check()
    assert done.applied and done.version == version_of(path) != v1 and applied == [done.version]
    assert metrics.CONFIG_RELOAD_SUCCESS._value.get() == 1
    assert metrics.CONFIG_RELOAD_TIMESTAMP._value.get() > 0
