"""Reporting: the only producer of result and dead-letter records.

Every send is awaited until the broker acknowledges it (acks=all); a failed send is retried with
backoff until it succeeds or the daemon shuts down, because an event's offset may be committed
only after its results or its dead letter are safely on the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from daemon import metrics
from daemon.records import InboundRecord
from daemon.retrying import RetryRecord
from daemon.sync_status import BOOK
from octopus_crm.core.contracts import SyncResult
from octopus_crm.core.redaction import redact_bytes, redact_value

__all__ = ["DLQ_HEADERS", "Reporter"]

log = structlog.get_logger("octopus.reporting")

DLQ_HEADERS = (
    "octopus-error-class",
    "octopus-error-reason",
    "octopus-source-topic",
    "octopus-source-partition",
    "octopus-source-offset",
    "octopus-dead-lettered-at",
)


class Reporter:
    def __init__(self, producer: AIOKafkaProducer, *, results_topic: str, dlq_topic: str, retry_topic: str) -> None:
        self._producer = producer
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic
        self.retry_topic = retry_topic
        self.config_version = ""  # the configuration version in use, as the results' header

    async def schedule(self, retries: Sequence[RetryRecord]) -> None:
        """Hand deliveries to the retry topic, keyed by original key and integration."""
        for retry in retries:
            headers = [
                ("octopus-due-at", str(int(retry.due * 1000)).encode()),
                ("octopus-integration", retry.target.integration_id.encode()),
                ("octopus-retry-kind", retry.kind.encode()),
                ("octopus-attempt", str(retry.attempt).encode()),
            ]
            await self._send(self.retry_topic, retry.kafka_key(), retry.encode_scrubbed(), headers)
            BOOK.scheduled(retry.event_id, retry.target.integration_id)

    async def publish(self, results: Sequence[SyncResult]) -> None:
        """Publish results keyed by eventId and wait for every acknowledgement."""
        headers = [("octopus-config-version", self.config_version.encode())] if self.config_version else []
        for result in results:
            await self._send(self.results_topic, result.eventId.encode(), _scrubbed(result), headers)
            metrics.child(metrics.OUTCOMES, result.integrationId or "-", result.status).inc()
        BOOK.published(results)

    async def dead_letter(
        self,
        record: InboundRecord,
        error_class: str,
        reason: str,
        extra: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """The original key and value bytes, unchanged, with headers naming what went wrong
        (our own headers scrubbed of secrets; the original record's are kept as they came)."""
        headers = [(k, v) for k, v in record.headers if not k.startswith("octopus-")]
        headers += [
            ("octopus-error-class", error_class.encode()),
            ("octopus-error-reason", redact_bytes(reason.encode("utf-8", "replace"))[:4096]),
            ("octopus-source-topic", record.topic.encode()),
            ("octopus-source-partition", str(record.partition).encode()),
            ("octopus-source-offset", str(record.offset).encode()),
            ("octopus-dead-lettered-at", str(int(time.time() * 1000)).encode()),
            *((name, redact_bytes(value)) for name, value in extra),
        ]
        await self._send(self.dlq_topic, record.key, record.value, headers)
        metrics.DLQ_RECORDS.labels(error_class).inc()

    async def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        delay = 0.2
        while True:
            try:
                future = await self._producer.send(topic, value=value, key=key, headers=headers)
                await future
                return
            except KafkaError as exc:
                metrics.PRODUCE_ERRORS.labels(topic).inc()
                log.warning("produce failed, retrying", topic=topic, error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


# What a vendor or a delivery wrote into a result (error text may echo a secret). The rest is
# the event's validated ids, our configuration's names, the status, numbers and the source.
_FROM_VENDOR = ("externalId", "externalUrl", "reason", "error", "detail")


def _scrubbed(result: SyncResult) -> bytes:
    """The result as JSON, every string a vendor or a delivery could have written scrubbed."""
    data = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name in _FROM_VENDOR:
        if name in data:
            data[name] = redact_value(data[name])
    return orjson.dumps(data)
