"""Whether a delivery's result already reached the results topic.

Asked only when a copy adopts a delivery whose holder is gone and the ledger says "not
published": that copy may have died between the broker's acknowledgement of the result and the
ledger's note of it, and reporting the delivery again would give its (event, target) two
``succeeded`` results. Results are keyed by ``eventId``, so an event's results sit in one
partition; the scan starts at the first record written since the delivery (ListOffsets by
timestamp) and what it saw is kept, so the adoptions after a restart share one pass per partition.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from octopus_crm.daemon import partitioner

__all__ = ["PublishedResults"]

log = structlog.get_logger("octopus.published")

_REPORTED = frozenset({"succeeded", "fallback"})
SCAN_LIMIT_S = 30.0


@dataclass
class _Seen:
    start: int  # scanned from here ...
    end: int  # ... up to here (exclusive)
    pairs: set[tuple[str, str, str]] = field(default_factory=set)  # (eventId, integration, object)


class PublishedResults:
    def __init__(self, topic: str, kafka: dict[str, Any]) -> None:
        self.topic = topic
        self._kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._seen: dict[int, _Seen] = {}

    async def contains(self, event_id: str, integration_id: str, object_type: str, since: float) -> bool:
        """True when a result for (event, integration, object type) was published since ``since``
        (epoch seconds). False when none is there, or when the topic cannot be read (the caller
        then reports the delivery, at least once, as before)."""
        try:
            async with self._lock:
                return await self._contains((event_id, integration_id, object_type), since)
        except KafkaError as exc:
            log.warning("results topic unreadable: reporting the delivery again", error=type(exc).__name__)
            return False

    async def _contains(self, pair: tuple[str, str, str], since: float) -> bool:
        consumer = await self._started()
        partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
        if not partitions:
            return False
        partition = partitioner.partition(pair[0].encode(), partitions, partitions)
        tp = TopicPartition(self.topic, partition)
        found = await consumer.offsets_for_times({tp: int(since * 1000)})
        end = (await consumer.end_offsets([tp]))[tp]
        start = found[tp].offset if found.get(tp) is not None else end
        seen = self._seen.get(partition)
        if seen is None or start < seen.start:
            seen = self._seen[partition] = _Seen(start, start)
        if seen.end < end:
            await self._scan(consumer, tp, seen, end)
        return pair in seen.pairs

    async def _scan(self, consumer: AIOKafkaConsumer, tp: TopicPartition, seen: _Seen, end: int) -> None:
        consumer.assign([tp])
        consumer.seek(tp, seen.end)
        deadline = asyncio.get_running_loop().time() + SCAN_LIMIT_S
        while seen.end < end and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            for record in batch.get(tp, ()):
                seen.end = record.offset + 1
                try:
                    result = orjson.loads(record.value or b"")
                except orjson.JSONDecodeError:
                    continue
                if isinstance(result, dict) and result.get("status") in _REPORTED:
                    seen.pairs.add(
                        (str(result.get("eventId")), str(result.get("integrationId")), str(result.get("objectType")))
                    )
            if not batch:
                seen.end = max(seen.end, await consumer.position(tp))

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **self._kafka)
            await consumer.start()
            await consumer.topics()  # metadata: the topic's partitions
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
