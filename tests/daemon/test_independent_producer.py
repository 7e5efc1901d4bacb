"""1,000 events from an independent Kafka client through the real daemon process.

The producer is kafka-python, a Kafka protocol implementation that shares no code with aiokafka.
(kcat's librdkafka cannot negotiate API versions with the embedded Tansu broker; against a real
cluster, ``OCTOPUS_TEST_KAFKA=testcontainers`` or ``OCTOPUS_TEST_BOOTSTRAP``, kcat is used when
installed.)"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.events import make_event, webhook_config
from tests.process import DaemonProcess

pytestmark = pytest.mark.slow


def produce_independently(broker: Any, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    if broker.kind != "tansu" and shutil.which("kcat"):
        lines = b"".join(key + b"\t" + value + b"\n" for key, value in records)
        done = subprocess.run(
            ["kcat", "-P", "-b", broker.bootstrap, "-t", topic, "-K", "\t"], input=lines, capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode()
        return
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


async def test_independently_produced_events_yield_one_result_per_target_in_key_order(
    broker: Any, topics: Any, tmp_path: Path
) -> None:
    await broker.create(topics)
    a, b = WebhookFake(dedupe=False), WebhookFake(dedupe=False)
    a.name, b.name = "a", "b"
    events = [make_event(i, key=f"conv-{i % 25}") for i in range(1000)]
    records = [(f"t-test:{e['sender']['id']}".encode(), orjson.dumps(e)) for e in events]
    await asyncio.to_thread(produce_independently, broker, topics.input, records)
    async with SandboxServer(a, b):
        config = webhook_config({"hook-a": f"{a.base_url}/hooks/a", "hook-b": f"{b.base_url}/hooks/b"})
        daemon = DaemonProcess(broker, topics, config, tmp_path, "independent").start()
        try:
            results = await broker.read(topics.results, expect=2000, timeout=120)
            code, _ = daemon.terminate()
        finally:
            daemon.stop()
    assert code == 0
    pairs = collections.Counter((r.key, orjson.loads(r.value)["integrationId"]) for r in results)
    assert len(pairs) == 2000 and set(pairs.values()) == {1}, "not exactly one result per (event, target)"
    for fake in (a, b):
        assert len(fake.deliveries) == 1000
        seen: dict[str, list[int]] = collections.defaultdict(list)
        for delivery in fake.deliveries:
            seen[delivery["body"]["key"]].append(delivery["body"]["seq"])
        assert all(seq == sorted(seq) for seq in seen.values()), "per-key order broken at the receiver"
