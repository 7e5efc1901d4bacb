"""Processing of one inbound record: decode, route, deliver, report.

Bad input never raises: it becomes a dead-letter record with the original bytes and a reason.
Each target's result is published as soon as that target is final (a slow sibling does not hold
it back); when this coroutine returns, every result or the dead letter of the record is on the
broker, so its offset may be committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import structlog
from pydantic import ValidationError

from octopus_crm.core.contracts import SUPPORTED_SCHEMA_VERSIONS, ClassifiedMessage
from octopus_crm.core.wire import DeadLetterClass
from octopus_crm.daemon import metrics
from octopus_crm.daemon.dispatch import Dispatcher
from octopus_crm.daemon.logs import bind_event
from octopus_crm.daemon.outcomes import Outcomes
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.reporting import Reporter, log_outcomes, report
from octopus_crm.strategies.routing import Plan

__all__ = ["BadInput", "Processor", "decode"]

log = structlog.get_logger("octopus.processing")


class BadInput(Exception):
    """A record that can never be processed; ``error_class`` is a bounded metric label."""

    def __init__(self, error_class: DeadLetterClass, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


def _pydantic_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        path = ".".join(str(p) for p in error["loc"]) or "<root>"
        parts.append(f"{path}: {error['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def decode(record: InboundRecord, max_bytes: int) -> ClassifiedMessage:
    """Bytes → event, or :class:`BadInput` naming the class of problem."""
    value = record.value
    if value is None:
        raise BadInput(DeadLetterClass.EMPTY_VALUE, "record has no value (tombstone)")
    if len(value) > max_bytes:
        raise BadInput(DeadLetterClass.TOO_LARGE, f"value is {len(value)} bytes, over the {max_bytes}-byte limit")
    # one parse for a good event (pydantic checks the UTF-8 and the JSON itself); what fails is
    # looked at again below, to name the problem
    try:
        event = ClassifiedMessage.model_validate_json(value)
    except ValidationError:
        pass
    else:
        if event.schemaVersion in SUPPORTED_SCHEMA_VERSIONS:
            return event
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(DeadLetterClass.UNDECODABLE, f"value is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadInput(DeadLetterClass.INVALID_JSON, f"value is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadInput(DeadLetterClass.SCHEMA_VIOLATION, f"value is a JSON {type(raw).__name__}, not an object")
    version = raw.get("schemaVersion")
    if isinstance(version, int) and not isinstance(version, bool) and version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BadInput(
            DeadLetterClass.UNSUPPORTED_SCHEMA_VERSION,
            f"schemaVersion {version} is not supported (supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})",
        )
    try:
        return ClassifiedMessage.model_validate_json(value)
    except ValidationError as exc:
        raise BadInput(DeadLetterClass.SCHEMA_VIOLATION, _pydantic_reason(exc)) from None


class Processor:
    def __init__(
        self,
        *,
        planner: Callable[[ClassifiedMessage], Plan],
        dispatcher: Dispatcher,
        reporter: Reporter,
        max_value_bytes: int = 1024 * 1024,
    ) -> None:
        self.planner = planner
        self.dispatcher = dispatcher
        self.reporter = reporter
        self.max_value_bytes = max_value_bytes

    async def handle(self, record: InboundRecord) -> None:
        started = record.received_at or time.monotonic()
        try:
            event = decode(record, self.max_value_bytes)  # pure: logs nothing under the previous event's context
        except BadInput as bad:
            bind_event({"topic": record.topic, "partition": record.partition, "offset": record.offset})
            await self.reporter.dead_letter(record, bad.error_class, bad.reason)
            log.warning("dead-lettered", error_class=bad.error_class, reason=bad.reason)
            return
        bind_event(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "eventId": event.eventId,
                "tenantId": event.tenantId,
            }
        )

        try:
            plan = self.planner(event)
            outcomes = await self.dispatcher.run(plan, event, record, on_route=self._publish)
        except Exception as exc:  # a bug, not bad input: keep the record, never stall the partition
            log.exception("processing failed", error=type(exc).__name__)
            await self.reporter.dead_letter(
                record, DeadLetterClass.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:1000]
            )
            return
        metrics.EVENT_LATENCY.observe(time.monotonic() - started)
        log_outcomes("event processed", plan.strategy, outcomes, started)

    async def _publish(self, route: Outcomes) -> None:
        """A route's outcomes, once final: on the broker, then confirmed in the ledger."""
        await report(self.reporter, route)
        await self.dispatcher.confirm(route)
