"""``octopus-crm dlq replay``: re-inject dead letters into the input topic.

Filters by integration, error class and time range; rate-limited. Each selection has its own
replay group (named after the filter), whose offsets are committed as records are re-injected, so
running the same replay twice takes each dead letter once; within a run, a source record is
replayed once. Targets that already hold the record are not written again: the daemon's ledger turns
them into ``duplicate`` results, so a replay only fills what is missing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiolimiter import AsyncLimiter

from daemon.settings import Settings
from octopus_crm.core.wire import HEADER_PREFIX, REPLAYABLE_BY_DEFAULT, Header

__all__ = ["ReplayFilter", "ReplayReport", "replay_dlq"]


@dataclass(frozen=True)
class ReplayFilter:
    integrations: frozenset[str] = frozenset()
    error_classes: frozenset[str] = REPLAYABLE_BY_DEFAULT
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, headers: dict[str, bytes]) -> bool:
        error_class = headers.get(Header.ERROR_CLASS, b"").decode()
        if self.error_classes and "all" not in self.error_classes and error_class not in self.error_classes:
            return False
        integration = headers.get(Header.INTEGRATION, b"").decode()
        if self.integrations and integration not in self.integrations:
            return False
        at_ms = int(headers.get(Header.DEAD_LETTERED_AT, b"0") or 0)
        if self.since is not None and at_ms < self.since.timestamp() * 1000:
            return False
        return not (self.until is not None and at_ms > self.until.timestamp() * 1000)

    def fingerprint(self) -> str:
        """Names the replay group: the same selection replayed twice takes each record once."""
        text = "|".join(
            [
                ",".join(sorted(self.integrations)),
                ",".join(sorted(self.error_classes)),
                self.since.isoformat() if self.since else "",
                self.until.isoformat() if self.until else "",
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class ReplayReport:
    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    repeats: int = 0
    by_class: dict[str, int] = field(default_factory=dict)


async def replay_dlq(
    settings: Settings,
    selection: ReplayFilter,
    *,
    rate: float = 50.0,
    limit: int | None = None,
    dry_run: bool = False,
    from_beginning: bool = False,
    to_topic: str | None = None,
) -> ReplayReport:
    """Scan the DLQ up to its current end and re-produce matching records to the input topic."""
    group = None if from_beginning or dry_run else f"{settings.group_id}.dlq-replay.{selection.fingerprint()}"
    consumer = AIOKafkaConsumer(
        **settings.kafka_common(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(1024 * 1024, settings.max_value_bytes * 2),
    )
    producer = AIOKafkaProducer(
        **settings.kafka_common(),
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        max_request_size=settings.max_request_size,
    )
    report = ReplayReport()
    pace = AsyncLimiter(1, 1.0 / rate)
    target = to_topic or settings.input_topic
    await consumer.start()
    await producer.start()
    try:
        partitions = [
            TopicPartition(settings.dlq_topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.dlq_topic) or [])
        ]
        consumer.assign(partitions)
        for tp in partitions:
            committed = await consumer.committed(tp) if group else None
            if committed is None:
                await consumer.seek_to_beginning(tp)
        seen: set[bytes] = set()
        started_ms = time.time() * 1000
        idle_polls = 0
        deadline = time.monotonic() + 600
        # Scan to the end as it was when we started: until the topic has nothing more for us.
        # (Polling until idle rather than trusting ListOffsets, which some brokers answer late.)
        while idle_polls < 3 and time.monotonic() < deadline and (limit is None or report.replayed < limit):
            batch = await consumer.getmany(timeout_ms=500)
            idle_polls = 0 if batch else idle_polls + 1
            for tp, records in batch.items():
                for record in records:
                    if record.timestamp > started_ms:
                        continue  # dead-lettered after the replay began: the next replay's
                    report.scanned += 1
                    headers = {k: v for k, v in record.headers}
                    if not selection.matches(headers):
                        continue
                    report.matched += 1
                    error_class = headers.get(Header.ERROR_CLASS, b"").decode()
                    report.by_class[error_class] = report.by_class.get(error_class, 0) + 1
                    origin = b":".join(
                        headers.get(h, b"")
                        for h in (Header.SOURCE_TOPIC, Header.SOURCE_PARTITION, Header.SOURCE_OFFSET)
                    )
                    if origin in seen:
                        report.repeats += 1
                        continue
                    seen.add(origin)
                    if dry_run or (limit is not None and report.replayed >= limit):
                        continue
                    await pace.acquire()
                    replay_headers = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
                    replay_headers.append(
                        (Header.REPLAYED_FROM.value, f"{tp.topic}:{tp.partition}:{record.offset}".encode())
                    )
                    await producer.send_and_wait(target, value=record.value, key=record.key, headers=replay_headers)
                    report.replayed += 1
                if group and records:
                    await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await producer.stop()
        await consumer.stop()
    return report
