"""The reporter on a real broker: results keyed by eventId on the partition Kafka's default
partitioner gives them, headers in the client's exact form, and a send the broker does not
acknowledge retried until it is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import pytest
from aiokafka.partitioner import DefaultPartitioner

from octopus_crm.core.contracts import SyncResultJson
from octopus_crm.core.wire import Header
from octopus_crm.daemon import metrics
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.reporting import Reporter
from octopus_crm_sandbox.broker import EmbeddedBroker
from tests.daemon.conftest import started_producer
from tests.events import retry_record
from tests.kafka import TestBroker


def result(event_id: str) -> SyncResultJson:
    return cast(
        SyncResultJson, {"eventId": event_id, "integrationId": "hub", "objectType": "contact", "status": "succeeded"}
    )


async def test_results_are_keyed_by_event_id_on_the_default_partitioners_partition(
    reporter: Reporter, broker: TestBroker, topics: Any
) -> None:
    reporter.config_version = "v7"
    ids = [f"e{i}" for i in range(12)]
    await reporter.publish([result(i) for i in ids])
    records = await broker.read(topics.results, expect=len(ids))
    assert sorted(r.key for r in records) == sorted(i.encode() for i in ids)
    default = DefaultPartitioner()
    for record in records:
        assert record.partition == default(record.key, [0, 1, 2, 3], [0, 1, 2, 3])
        assert list(record.headers) == [("octopus-config-version", b"v7")]


async def test_results_without_a_config_version_carry_no_header(
    reporter: Reporter, broker: TestBroker, topics: Any
) -> None:
    await reporter.publish([result("e1")])
    (record,) = await broker.read(topics.results, expect=1)
    assert list(record.headers) == []


async def test_dead_letters_and_retries_name_headers_with_exact_strings(
    reporter: Reporter, broker: TestBroker, topics: Any
) -> None:
    record = InboundRecord(
        topic="in", partition=2, offset=9, key=b"k", value=b"{}", headers=(("trace", b"t"), ("octopus-old", b"x"))
    )
    await reporter.dead_letter(record, "delivery_failed", "boom", [(Header.INTEGRATION, b"hub")])
    retry = retry_record("hub", attempt=1)
    await reporter.schedule([retry])
    (dead,) = await broker.read(topics.dlq, expect=1)
    (scheduled,) = await broker.read(topics.retry, expect=1)
    assert dead.key == b"k" and dead.value == b"{}"
    names = [name for name, _ in dead.headers]
    assert names[0] == "trace" and "octopus-old" not in names
    assert {Header.ERROR_CLASS.value, Header.SOURCE_OFFSET.value, Header.INTEGRATION.value} <= set(names)
    assert dict(scheduled.headers)[Header.ATTEMPT.value] == b"1"


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as embedded:
        yield embedded


@pytest.mark.slow
async def test_a_send_the_frozen_broker_does_not_acknowledge_is_retried_until_it_is(
    own_broker: EmbeddedBroker, topics: Any
) -> None:
    broker = TestBroker(own_broker.bootstrap, idempotence=False, kind="tansu")
    await broker.create(topics)
    producer = await started_producer(own_broker.bootstrap, request_timeout_ms=1000)
    reporter = Reporter(producer, results_topic=topics.results, dlq_topic=topics.dlq, retry_topic=topics.retry)
    errors = metrics.PRODUCE_ERRORS.labels(topics.results)
    before = errors._value.get()
    try:
        own_broker.freeze()
        try:
            publishing = asyncio.create_task(reporter.publish([result("e1")]))

            async def failed_once() -> None:  # the reporter saw the send fail, and retries
                while errors._value.get() == before:
                    assert not publishing.done(), "published while the broker was frozen"
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(failed_once(), 30)
        finally:
            own_broker.thaw()
        await asyncio.wait_for(publishing, 60)
    finally:
        await producer.stop()
    records = await broker.read(topics.results, expect=1)
    assert {r.key for r in records} == {b"e1"}  # at least once: a timed-out send may have landed too
