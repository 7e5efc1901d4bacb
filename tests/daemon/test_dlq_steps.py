"""``dlq replay`` as scan → select → replay: the filter and the replay step without a broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import ConsumerRecord
from aiolimiter import AsyncLimiter

from octopus_crm.core.wire import REPLAYABLE_BY_DEFAULT, DeadLetterClass, Header
from octopus_crm.daemon.dlq import ReplayFilter, ReplayReport, replay, select


@dataclass
class Record:
    offset: int
    headers: list[tuple[str, bytes]]
    topic: str = "dlq"
    partition: int = 0
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    timestamp: int = 0


def dead(offset: int, error_class: str, *, source_offset: int | None = None, integration: str = "crm") -> Record:
    return Record(
        offset,
        [
            ("trace", b"t-1"),
            (Header.ERROR_CLASS, error_class.encode()),
            (Header.INTEGRATION, integration.encode()),
            (Header.SOURCE_TOPIC, b"input"),
            (Header.SOURCE_PARTITION, b"0"),
            (Header.SOURCE_OFFSET, str(offset if source_offset is None else source_offset).encode()),
            (Header.DEAD_LETTERED_AT, str(int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)).encode()),
        ],
    )


def records(*items: Record) -> list[ConsumerRecord[bytes, bytes]]:
    return cast(list[ConsumerRecord[bytes, bytes]], list(items))


def test_select_keeps_the_replayable_classes_once_per_source_and_counts() -> None:
    report = ReplayReport()
    seen: set[bytes] = set()
    batch = records(
        dead(0, DeadLetterClass.DELIVERY_FAILED),
        dead(1, DeadLetterClass.INVALID_JSON),
        dead(2, DeadLetterClass.INTERNAL_ERROR),
        dead(3, DeadLetterClass.DELIVERY_FAILED, source_offset=0),  # the same source again
    )
    chosen = select(batch, ReplayFilter(), seen, report)
    assert [r.offset for r in chosen] == [0, 2]
    assert (report.scanned, report.matched, report.repeats) == (4, 3, 1)
    assert report.by_class == {"delivery_failed": 2, "internal_error": 1}
    assert select(records(dead(4, "delivery_failed", source_offset=2)), ReplayFilter(), seen, report) == []


def test_select_by_integration_and_time() -> None:
    report = ReplayReport()
    selection = ReplayFilter(
        integrations=frozenset({"crm"}),
        error_classes=frozenset({"all"}),
        since=datetime(2026, 11, 30, tzinfo=UTC),
    )
    batch = records(dead(0, "too_large"), dead(1, "delivery_failed", integration="other"))
    assert [r.offset for r in select(batch, selection, set(), report)] == [0]
    late = ReplayFilter(since=datetime(2026, 12, 2, tzinfo=UTC))
    assert select(records(dead(2, "delivery_failed")), late, set(), report) == []


def test_the_default_classes_are_what_a_later_attempt_may_fix() -> None:
    assert {str(c) for c in REPLAYABLE_BY_DEFAULT} == {"delivery_failed", "internal_error"}


@dataclass
class FakeProducer:
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def send_and_wait(self, topic: str, **kw: Any) -> None:
        self.sent.append((topic, kw))


async def test_replay_replaces_our_headers_and_stops_at_the_limit() -> None:
    producer = FakeProducer()
    report = ReplayReport()
    batch = records(dead(5, "delivery_failed"), dead(6, "delivery_failed"))
    await replay(cast(Any, producer), "input", batch, AsyncLimiter(100, 1), report, limit=1)
    assert report.replayed == 1
    [(topic, kw)] = producer.sent
    assert topic == "input" and kw["key"] == b"k" and kw["value"] == b"{}"
    assert kw["headers"] == [("trace", b"t-1"), ("octopus-replayed-from", b"dlq:0:5")]
    assert all(type(k) is str for k, _ in kw["headers"])  # the client wants exact str keys
