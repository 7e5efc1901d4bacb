"""The event's log context: every line written while an event is processed carries its ids, and
none of the previous event's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import structlog

from octopus_crm.daemon.logs import NO_EVENT, _Canonical, bind_event, canonical, configure_logging, flush
from octopus_crm.daemon.outcomes import Outcomes
from octopus_crm.daemon.processing import Processor
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retry_handler import RetryHandler
from octopus_crm.daemon.retrying import RetryRecord
from octopus_crm.strategies.routing import Plan
from tests.events import encode, make_event, retry_record

IDS = ("topic", "partition", "offset", "eventId", "tenantId")

log = structlog.get_logger("octopus.test")


class Dispatcher:
    """Warns as an adapter would, from the event's task and from a task it starts."""

    async def run(self, plan: Plan, event: Any, record: InboundRecord, *, on_route: Any) -> Outcomes:
        log.warning("vendor slow", vendor="v")
        await asyncio.create_task(self._child())
        return Outcomes()

    async def resume(self, retry: RetryRecord, event: Any) -> Outcomes:
        log.warning("vendor slow", vendor="v")
        return Outcomes()

    async def confirm(self, outcomes: Outcomes) -> None:
        pass

    async def _child(self) -> None:
        log.warning("child task")


class Reporter:
    async def dead_letter(self, record: InboundRecord, error_class: str, reason: str, extra: Any = ()) -> None:
        log.warning("dead letter sent", source=record.offset)

    async def schedule(self, retries: Any) -> None:
        pass

    async def publish(self, results: Any) -> None:
        pass


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    configure_logging("json", "INFO")

    def lines() -> list[dict[str, Any]]:
        flush()
        return [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]

    try:
        yield lines
    finally:
        bind_event(NO_EVENT)
        _Canonical.install(None)
        structlog.reset_defaults()


def _record(offset: int, value: bytes) -> InboundRecord:
    return InboundRecord(topic="in", partition=1, offset=offset, key=b"k", value=value)


async def test_lines_written_while_an_event_is_processed_carry_its_ids(
    json_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    first, second = make_event(1), make_event(2, tenant="t-other")
    processor = Processor(planner=lambda e: Plan(strategy="s"), dispatcher=Dispatcher(), reporter=Reporter())  # type: ignore[arg-type]

    async def worker() -> None:  # one key's worker task: several events in a row
        for record in (_record(7, encode(first)), _record(8, b"{broken"), _record(9, encode(second))):
            await processor.handle(record)

    await asyncio.create_task(worker())
    lines = json_lines()
    assert [line["event"] for line in lines] == [
        *("vendor slow", "child task", "event processed"),
        *("dead letter sent", "dead-lettered"),
        *("vendor slow", "child task", "event processed"),
    ]
    ids = [{key: line.get(key) for key in IDS} for line in lines]
    assert (
        ids[:3] == [{"topic": "in", "partition": 1, "offset": 7, "eventId": first["eventId"], "tenantId": "t-test"}] * 3
    )
    # a record dead-lettered before it is decoded has no event ids, not the previous event's
    assert ids[3:5] == [{"topic": "in", "partition": 1, "offset": 8, "eventId": None, "tenantId": None}] * 2
    assert (
        ids[5:]
        == [{"topic": "in", "partition": 1, "offset": 9, "eventId": second["eventId"], "tenantId": "t-other"}] * 3
    )
    assert lines[3]["source"] == 8
    assert list(lines[2]) == ["strategy", "outcomes", "scheduled", "latency_ms", "event", *IDS, "level", "timestamp"]


async def test_the_retry_handler_binds_the_event_and_the_retry_kind(
    json_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    event = make_event(1)
    retry = retry_record(event_id=event["eventId"], value=encode(event).decode(), due=0.0)
    handler = RetryHandler(Dispatcher(), Reporter())  # type: ignore[arg-type]

    async def worker() -> None:
        await handler.handle(_record(3, retry.encode()))
        await handler.handle(_record(4, b"not a retry record"))

    await asyncio.create_task(worker())
    lines = json_lines()
    assert [line["event"] for line in lines] == ["vendor slow", "retry processed", "dead letter sent"]
    for line in lines[:2]:
        assert (line["eventId"], line["tenantId"], line["retry"]) == (event["eventId"], "t-test", "retry")
        assert "topic" not in line
    assert not {"eventId", "tenantId", "retry"} & set(lines[2])


def test_an_explicit_key_wins_over_the_event_context(json_lines: Callable[[], list[dict[str, Any]]]) -> None:
    bind_event({"topic": "in", "offset": 7})
    log.warning("moved", offset=99)
    canonical("event processed", offset=98)
    warning, line = json_lines()
    assert (warning["offset"], warning["topic"]) == (99, "in")
    assert (line["offset"], line["topic"]) == (98, "in")


SAMPLE = (
    '{"strategy":"s","outcomes":[{"integration":"hook","object":"message","status":"succeeded"}],'
    '"event":"event processed","topic":"in","partition":1,"offset":7,"eventId":"e1","tenantId":"t1",'
    '"level":"info","timestamp":"TS"}'
)


def test_the_canonical_line_of_a_sample_event_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    """The line the daemon wrote when the ids were bound in structlog's contextvars (whose order
    was the context's hash order), now in the order they are bound; the structlog chain renders
    the same bytes. Keys bound in structlog's contextvars still follow."""
    outcome = {"integration": "hook", "object": "message", "status": "succeeded"}
    fields: dict[str, Any] = {"strategy": "s", "outcomes": [outcome]}
    ids = {"topic": "in", "partition": 1, "offset": 7, "eventId": "e1", "tenantId": "t1"}
    configure_logging("json", "INFO")
    try:
        structlog.contextvars.bind_contextvars(**ids)  # as before
        canonical("event processed", **fields)
        structlog.contextvars.clear_contextvars()
        bind_event(ids)
        canonical("event processed", **fields)
        structlog.get_logger("octopus.processing").info("event processed", **fields)
        structlog.contextvars.bind_contextvars(request="r1")
        canonical("event processed", **fields)
        structlog.get_logger("octopus.processing").info("event processed", **fields)
        flush()
    finally:
        structlog.contextvars.clear_contextvars()
        bind_event(NO_EVENT)
        _Canonical.install(None)
        structlog.reset_defaults()
    before, fast, slow, fast_bound, slow_bound = capsys.readouterr().err.splitlines()

    def untimed(line: str) -> str:
        head, _, tail = line.rpartition('"timestamp":"')
        return head + '"timestamp":"TS"}' if tail.endswith('Z"}') else line

    assert untimed(fast) == untimed(slow) == SAMPLE
    assert orjson.loads(untimed(before)) == orjson.loads(SAMPLE)
    assert untimed(fast_bound) == untimed(slow_bound) == SAMPLE.replace('"level"', '"request":"r1","level"')


def test_the_context_is_scrubbed_on_every_canonical_line(json_lines: Callable[[], list[dict[str, Any]]]) -> None:
    """A customer's id may hold a secret, a secret-named key's value is masked whatever it holds,
    and a number is kept: on the first line and on the lines after (the key's kind is kept)."""
    from octopus_crm.core.redaction import REDACTED, register_secret

    secret = f"ctx-secret-{id(json_lines)}"
    register_secret(secret)
    for offset in (7, 8):
        bind_event({"topic": "in", "offset": offset, "eventId": f"e-{secret}", "api_token": "plain", "ok": True})
        canonical("event processed", strategy="s")
    for offset, line in zip((7, 8), json_lines(), strict=True):
        assert line["offset"] == offset and line["topic"] == "in" and line["ok"] is True
        assert (line["eventId"], line["api_token"]) == (f"e-{REDACTED}", REDACTED)
