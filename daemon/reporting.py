"""Reporting: the only producer of result, retry and dead-letter records, and the canonical log
line of each pass.

Every send is awaited until the broker acknowledges it (acks=all); a failed send is retried with
backoff until it succeeds or the daemon shuts down, because an event's offset may be committed
only after its results or its dead letter are safely on the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from octopus_crm.core.contracts import SyncResultJson
from octopus_crm.core.redaction import redact, redact_bytes, redact_value
from octopus_crm.core.wire import HEADER_PREFIX, DeadLetterClass, Header
from octopus_crm.daemon import metrics
from octopus_crm.daemon.logs import canonical_scrubbed
from octopus_crm.daemon.outcomes import Outcomes
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retrying import RetryRecord
from octopus_crm.daemon.sync_status import BOOK

__all__ = ["DLQ_HEADERS", "Reporter", "log_outcomes", "report"]

log = structlog.get_logger("octopus.reporting")

DLQ_HEADERS = (
    Header.ERROR_CLASS,
    Header.ERROR_REASON,
    Header.SOURCE_TOPIC,
    Header.SOURCE_PARTITION,
    Header.SOURCE_OFFSET,
    Header.DEAD_LETTERED_AT,
)

# The retry records' header names in the client's form (see ``_client_form``), once.
_DUE_AT, _INTEGRATION, _RETRY_KIND, _ATTEMPT = (
    str(h) for h in (Header.DUE_AT, Header.INTEGRATION, Header.RETRY_KIND, Header.ATTEMPT)
)


class Reporter:
    def __init__(self, producer: AIOKafkaProducer, *, results_topic: str, dlq_topic: str, retry_topic: str) -> None:
        self._producer = producer
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic
        self.retry_topic = retry_topic
        self.config_version = ""  # the configuration version in use, as the results' header
        self._headers: tuple[str, list[tuple[str, bytes]]] = ("", [])

    async def schedule(self, retries: Sequence[RetryRecord]) -> None:
        """Hand deliveries to the retry topic, keyed by original key and integration."""
        producer, topic = self._producer, self.retry_topic
        for retry in retries:
            integration_id = retry.target.integration_id
            key, value = retry.kafka_key(), retry.encode_scrubbed()
            headers = [
                (_DUE_AT, str(int(retry.due * 1000)).encode()),
                (_INTEGRATION, integration_id.encode()),
                (_RETRY_KIND, retry.kind.encode()),
                (_ATTEMPT, str(retry.attempt).encode()),
            ]
            try:  # the first attempt inline, as in publish
                await (await producer.send(topic, value=value, key=key, headers=headers))
            except KafkaError as exc:
                await self._send(topic, key, value, headers, failed=exc)
            BOOK.scheduled(retry.event_id, integration_id)

    async def publish(self, results: Sequence[SyncResultJson]) -> None:
        """Publish results keyed by eventId and wait for every acknowledgement."""
        headers = self._results_headers()
        producer, topic = self._producer, self.results_topic
        for result in results:
            key, value = result["eventId"].encode(), _scrubbed(result)
            try:  # the first attempt inline: it almost always succeeds (``_send`` retries)
                await (await producer.send(topic, value=value, key=key, headers=headers))
            except KafkaError as exc:
                await self._send(topic, key, value, headers, failed=exc)
            metrics.child(metrics.OUTCOMES, result.get("integrationId") or "-", result["status"]).inc()
        BOOK.published(results)

    def _results_headers(self) -> list[tuple[str, bytes]]:
        """The results' headers, in the client's form (exact str names): built once per
        configuration version and shared by every send (neither we nor the client change them)."""
        version, headers = self._headers
        if version != self.config_version:
            version = self.config_version
            headers = [("octopus-config-version", version.encode())] if version else []
            self._headers = (version, headers)
        return headers

    async def dead_letter(
        self,
        record: InboundRecord,
        error_class: str,
        reason: str,
        extra: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """The original key and value bytes, unchanged, with headers naming what went wrong
        (our own headers scrubbed of secrets; the original record's are kept as they came)."""
        headers = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
        headers += [
            (Header.ERROR_CLASS, error_class.encode()),
            (Header.ERROR_REASON, redact_bytes(reason.encode("utf-8", "replace"))[:4096]),
            (Header.SOURCE_TOPIC, record.topic.encode()),
            (Header.SOURCE_PARTITION, str(record.partition).encode()),
            (Header.SOURCE_OFFSET, str(record.offset).encode()),
            (Header.DEAD_LETTERED_AT, str(int(time.time() * 1000)).encode()),
            *((name, redact_bytes(value)) for name, value in extra),
        ]
        await self._send(self.dlq_topic, record.key, record.value, _client_form(headers))
        metrics.DLQ_RECORDS.labels(error_class).inc()

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        failed: KafkaError | None = None,
    ) -> None:
        """Send until acknowledged; ``headers`` in the client's form (see ``_client_form``).
        ``failed``: the error of an attempt already made (the caller's first)."""
        delay = 0.2
        while True:
            if failed is not None:
                metrics.PRODUCE_ERRORS.labels(topic).inc()
                log.warning("produce failed, retrying", topic=topic, error=type(failed).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            try:
                future = await self._producer.send(topic, value=value, key=key, headers=headers)
                await future
                return
            except KafkaError as exc:
                failed = exc


def _client_form(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Header names as exact ``str``: the client's record builder rejects a ``Header`` member."""
    return [(str(k), v) for k, v in headers]


async def report(reporter: Reporter, outcomes: Outcomes) -> None:
    """Publish everything one pass produced; returns once the broker has acknowledged it all.

    Each result is a target's final outcome, published once wherever it was decided (the input
    or the retry topic); the canonical line of that pass logs it, once."""
    if outcomes.retries:  # most passes have none: no coroutine to start for nothing
        await reporter.schedule(outcomes.retries)
    for dead in outcomes.dead_letters:
        await reporter.dead_letter(dead.record, DeadLetterClass.DELIVERY_FAILED, dead.reason, dead.headers)
    if outcomes.results:
        await reporter.publish(outcomes.results)


def _outcome(r: SyncResultJson) -> dict[str, Any]:
    """A result for the canonical line, what its vendor wrote scrubbed (the rest is ours)."""
    outcome: dict[str, Any] = {
        "integration": r.get("integrationId"),
        "object": r.get("objectType"),
        "status": r["status"],
    }
    if external_id := r.get("externalId"):
        outcome["externalId"] = redact(external_id)
    if "error" in r:
        outcome["error"] = redact(r["error"]["code"])
    if detail := r.get("detail"):
        outcome["detail"] = redact_value(detail)
    return outcome


def log_outcomes(message: str, strategy: str, outcomes: Outcomes, started: float) -> None:
    results, retries = outcomes.results, outcomes.retries
    canonical_scrubbed(
        message,
        {
            "strategy": strategy,
            # most passes have one result (a comprehension is a call of its own)
            "outcomes": [_outcome(results[0])] if len(results) == 1 else [_outcome(r) for r in results],
            "scheduled": [_scheduled(r) for r in retries] if retries else [],
            "latency_ms": round((time.monotonic() - started) * 1000, 2),
        },
    )


def _scheduled(r: RetryRecord) -> dict[str, Any]:
    return {
        "integration": r.target.integration_id,
        "kind": r.kind,
        "attempt": r.attempt,
        "inSeconds": round(r.due - time.time(), 1),
    }


# What a vendor or a delivery wrote into a result (error text may echo a secret). The rest is
# the event's validated ids, our configuration's names, the status, numbers and the source.
_FROM_VENDOR = ("externalId", "externalUrl", "reason", "error", "detail")


def _scrubbed(result: SyncResultJson) -> bytes:
    """The result as JSON, every string a vendor or a delivery could have written scrubbed."""
    data: Any = result
    for name in _FROM_VENDOR:
        value = result.get(name)
        if value is not None:  # a result holds no None (left out); a str, the error, the detail
            scrubbed = redact(value) if type(value) is str else redact_value(value)
            if scrubbed != value:  # an unchanged str is the same object: no copy for nothing
                if data is result:
                    data = dict(result)  # a copy: the status book and the log line read the result after
                data[name] = scrubbed
    return orjson.dumps(data)
