"""``octopus-crm dlq replay``: re-inject dead letters into the input topic.

Three steps: :func:`scan_dlq` reads the DLQ up to its end as it was when the replay began,
:func:`select` keeps what the :class:`ReplayFilter` matches (each source record once), and
:func:`replay` re-produces it.

Filters by integration, error class and time range; rate-limited. Each selection has its own
replay group (named after the filter), whose offsets are committed as records are re-injected, so
running the same replay twice takes each dead letter once; within a run, a source record is
replayed once. Targets that already hold the record are not written again: the daemon's ledger turns
them into ``duplicate`` results, so a replay only fills what is missing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiolimiter import AsyncLimiter

from octopus_crm.core.wire import HEADER_PREFIX, REPLAYABLE_BY_DEFAULT, Header
from octopus_crm.daemon.partitioner import partition
from octopus_crm.daemon.settings import Settings

__all__ = ["ReplayFilter", "ReplayReport", "replay", "replay_dlq", "scan_dlq", "select"]


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
        partitioner=partition,
    )
    report = ReplayReport()
    pace = AsyncLimiter(1, 1.0 / rate)
    target = to_topic or settings.input_topic
    await consumer.start()
    await producer.start()
    try:
        await _assign(consumer, settings.dlq_topic, committed=group is not None)
        seen: set[bytes] = set()
        # Scan to the end as it was when we started (later dead letters are the next replay's).
        scan = scan_dlq(consumer, before_ms=time.time() * 1000, more=lambda: limit is None or report.replayed < limit)
        async for tp, records, last_offset in scan:
            chosen = select(records, selection, seen, report)
            if not dry_run:
                await replay(producer, target, chosen, pace, report, limit)
            if group:
                await consumer.commit({tp: last_offset + 1})
    finally:
        await producer.stop()
        await consumer.stop()
    return report


async def _assign(consumer: AIOKafkaConsumer, topic: str, *, committed: bool) -> None:
    """Every partition of the DLQ, from the replay group's committed offset or the beginning."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    for tp in partitions:
        if (await consumer.committed(tp) if committed else None) is None:
            await consumer.seek_to_beginning(tp)


async def scan_dlq(
    consumer: AIOKafkaConsumer, *, before_ms: float, more: Callable[[], bool], max_seconds: float = 600
) -> AsyncIterator[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]], int]]:
    """Scan: per fetched batch of a partition, its dead letters written before ``before_ms`` and
    the batch's last offset (to commit), until the topic has nothing more for us (three empty
    polls), ``more()`` says stop, or ``max_seconds`` have passed.

    (Polling until idle rather than trusting ListOffsets, which some brokers answer late.)"""
    idle_polls = 0
    deadline = time.monotonic() + max_seconds
    while idle_polls < 3 and time.monotonic() < deadline and more():
        batch = await consumer.getmany(timeout_ms=500)
        idle_polls = 0 if batch else idle_polls + 1
        for tp, records in batch.items():
            if records:
                yield tp, [r for r in records if r.timestamp <= before_ms], records[-1].offset


def select(
    records: Iterable[ConsumerRecord[bytes, bytes]],
    selection: ReplayFilter,
    seen: set[bytes],
    report: ReplayReport,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Filter: the records ``selection`` matches, each source record once per run (``seen``
    holds the sources taken so far); counts what was scanned, matched and repeated."""
    chosen = []
    for record in records:
        report.scanned += 1
        headers = {k: v for k, v in record.headers}
        if not selection.matches(headers):
            continue
        report.matched += 1
        error_class = headers.get(Header.ERROR_CLASS, b"").decode()
        report.by_class[error_class] = report.by_class.get(error_class, 0) + 1
        origin = b":".join(
            headers.get(h, b"") for h in (Header.SOURCE_TOPIC, Header.SOURCE_PARTITION, Header.SOURCE_OFFSET)
        )
        if origin in seen:
            report.repeats += 1
            continue
        seen.add(origin)
        chosen.append(record)
    return chosen


async def replay(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[ConsumerRecord[bytes, bytes]],
    pace: AsyncLimiter,
    report: ReplayReport,
    limit: int | None = None,
) -> None:
    """Replay: each record to ``topic`` as it was consumed (our headers replaced by where it came
    from), at the pace of ``pace`` and up to ``limit`` records in the whole run."""
    for record in records:
        if limit is not None and report.replayed >= limit:
            return
        await pace.acquire()
        headers = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
        headers.append((Header.REPLAYED_FROM.value, f"{record.topic}:{record.partition}:{record.offset}".encode()))
        await producer.send_and_wait(topic, value=record.value, key=record.key, headers=headers)
        report.replayed += 1
