"""Small helpers over a real broker for tests: settings, produce, read a topic to the end."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from octopus_crm.daemon.settings import Settings
from octopus_crm.daemon.topics import create_topics


@dataclass(frozen=True)
class TestBroker:
    __test__ = False
    bootstrap: str
    idempotence: bool
    kind: str

    def settings(self, topics: Any, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "input_topic": topics.input,
            "results_topic": topics.results,
            "dlq_topic": topics.dlq,
            "retry_topic": topics.retry,
            "group_id": topics.group,
            "producer_idempotence": self.idempotence,
            "metrics_port": 0,
            "admin_port": 0,
            "metrics_host": "127.0.0.1",
            "ledger_url": "memory://",
            "commit_interval_s": 0.2,
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 1_000,
            "rebalance_timeout_ms": 15_000,
            "grace_period_s": 10.0,
            "revoke_timeout_s": 5.0,
        }
        values.update(overrides)
        return Settings(**values)

    async def create(self, topics: Any, partitions: int = 4) -> None:
        await create_topics(self.bootstrap, [topics.input, topics.results, topics.dlq, topics.retry], partitions)

    async def produce(
        self,
        topic: str,
        records: list[tuple[bytes | None, bytes | None]],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=self.idempotence,
            acks="all",
            max_request_size=8 * 1024 * 1024,
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, value=v, key=k, headers=headers) for k, v in records]
            for future in futures:
                await future
        finally:
            await producer.stop()

    async def read(self, topic: str, *, expect: int, timeout: float = 60.0) -> list[Any]:
        """Read ``topic`` from the beginning until ``expect`` records arrived (or time runs out)."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
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
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out.extend(records)
            await asyncio.sleep(0)
        finally:
            await consumer.stop()
        return out

    async def committed(self, topic: str, group: str, partitions: int = 4) -> dict[int, int | None]:
        from aiokafka import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
        finally:
            await consumer.stop()
