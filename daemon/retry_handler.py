"""The retry topic's side: wait until a record is due, then carry its route on.

Runs under its own consumer group with the same offset, ordering and backpressure machinery as
the input topic (records of one key and integration in order). A record that is not due yet
waits in memory, bounded by the retry loop's in-flight limit; on shutdown, waiting records are
abandoned uncommitted and come back after the restart.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from pydantic import ValidationError

from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.wire import DeadLetterClass
from octopus_crm.daemon.consumer import WorkAbandoned
from octopus_crm.daemon.dispatch import Dispatcher
from octopus_crm.daemon.logs import NO_EVENT, bind_event
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.reporting import Reporter, log_outcomes, report
from octopus_crm.daemon.retrying import InvalidRetryRecord, RetryRecord

__all__ = ["RetryHandler"]

log = structlog.get_logger("octopus.retry")


class RetryHandler:
    def __init__(self, dispatcher: Dispatcher, reporter: Reporter) -> None:
        self.dispatcher = dispatcher
        self.reporter = reporter
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def handle(self, record: InboundRecord) -> None:
        try:
            retry = RetryRecord.decode(record.value or b"")
            event = ClassifiedMessage.model_validate_json(retry.value)
        except (ValidationError, InvalidRetryRecord) as exc:
            bind_event(NO_EVENT)
            await self.reporter.dead_letter(record, DeadLetterClass.INVALID_RETRY_RECORD, str(exc)[:1000])
            return
        bind_event({"eventId": event.eventId, "tenantId": event.tenantId, "retry": retry.kind})
        wait = retry.due - time.time()
        if wait > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except TimeoutError:
                pass
            else:
                raise WorkAbandoned
        started = time.monotonic()
        try:
            outcomes = await self.dispatcher.resume(retry, event)
        except Exception as exc:  # a bug: keep the original event in the DLQ, never stall
            log.exception("retry failed", error=type(exc).__name__)
            await self.reporter.dead_letter(
                retry.original(), DeadLetterClass.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:1000]
            )
            return
        await report(self.reporter, outcomes)
        await self.dispatcher.confirm(outcomes)
        log_outcomes("retry processed", retry.strategy, outcomes, started)
