"""The reporter hands the client headers in its exact form, awaits every send until it is
acknowledged, and retries a failed send until it is."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from octopus_crm.core.contracts import SyncResultJson
from octopus_crm.core.wire import Header
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.reporting import Reporter
from octopus_crm.daemon.retrying import RetryRecord, TargetSpec


class FakeProducer:
    """Acknowledges a send one loop turn later; the first ``failures`` sends fail, alternately
    when sent and when acknowledged (the two ways a real send fails)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[dict[str, Any]] = []
        self.unacked = 0
        self.sent_while_unacked = 0

    async def send(self, topic: str, *, value: bytes | None, key: bytes | None, headers: Any) -> asyncio.Future[None]:
        if self.unacked:
            self.sent_while_unacked += 1
        if self.failures and self.failures % 2:
            self.failures -= 1
            raise KafkaTimeoutError()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failing = self.failures > 0
        self.failures -= failing
        self.unacked += 1

        def settle() -> None:
            self.unacked -= 1
            if failing:
                future.set_exception(KafkaError("not acknowledged"))
            else:
                self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers})
                future.set_result(None)

        asyncio.get_running_loop().call_soon(settle)
        return future


def reporter(producer: FakeProducer) -> Reporter:
    return Reporter(cast(AIOKafkaProducer, producer), results_topic="res", dlq_topic="dlq", retry_topic="retry")


def result(event_id: str) -> SyncResultJson:
    return cast(
        SyncResultJson, {"eventId": event_id, "integrationId": "hub", "objectType": "contact", "status": "succeeded"}
    )


def exact_str_names(headers: list[tuple[str, bytes]]) -> bool:
    return all(type(name) is str for name, _ in headers)


async def test_results_are_keyed_by_event_id_and_each_acknowledged_before_the_next() -> None:
    producer = FakeProducer()
    rep = reporter(producer)
    rep.config_version = "v7"
    await rep.publish([result("e1"), result("e2"), result("e3")])
    assert [s["key"] for s in producer.sent] == [b"e1", b"e2", b"e3"]
    assert producer.unacked == 0 and producer.sent_while_unacked == 0
    for sent in producer.sent:
        assert sent["topic"] == "res"
        assert sent["headers"] == [("octopus-config-version", b"v7")]
        assert exact_str_names(sent["headers"])


async def test_results_without_a_config_version_carry_no_header() -> None:
    producer = FakeProducer()
    await reporter(producer).publish([result("e1")])
    assert producer.sent[0]["headers"] == []


async def test_a_failed_send_is_retried_until_acknowledged() -> None:
    producer = FakeProducer(failures=2)  # refused once when sent, once when acknowledged
    await reporter(producer).publish([result("e1"), result("e2")])
    assert [s["key"] for s in producer.sent] == [b"e1", b"e2"]
    assert producer.failures == 0 and producer.sent_while_unacked == 0


async def test_dead_letters_and_retries_name_headers_with_exact_strings() -> None:
    producer = FakeProducer()
    rep = reporter(producer)
    record = InboundRecord(
        topic="in", partition=2, offset=9, key=b"k", value=b"{}", headers=(("trace", b"t"), ("octopus-old", b"x"))
    )
    await rep.dead_letter(record, "delivery_failed", "boom", [(Header.INTEGRATION, b"hub")])
    retry = RetryRecord(
        kind="retry",
        event_id="e1",
        value="{}",
        source_topic="in",
        source_partition=0,
        source_offset=1,
        received_at=1.0,
        strategy="s",
        chain=[TargetSpec(integration_id="hub", integration_type="webhook", object_type="message")],
        attempt=1,
    )
    await rep.schedule([retry])
    dead, scheduled = producer.sent
    assert dead["topic"] == "dlq" and dead["key"] == b"k" and dead["value"] == b"{}"
    names = [name for name, _ in dead["headers"]]
    assert names[0] == "trace" and "octopus-old" not in names
    assert {Header.ERROR_CLASS.value, Header.SOURCE_OFFSET.value, Header.INTEGRATION.value} <= set(names)
    assert scheduled["topic"] == "retry"
    assert dict(scheduled["headers"])[Header.ATTEMPT.value] == b"1"
    assert exact_str_names(dead["headers"]) and exact_str_names(scheduled["headers"])
