"""In-process micro-benchmark of the per-event reporting chain, no broker.

``finished`` -> ``report`` (``Reporter.publish``: scrub and encode, a stubbed ``producer.send``
that computes the partition as the client would and returns a done future, the outcome counter,
the status book) -> ``log_outcomes`` (the canonical line, written to /dev/null). The common case:
one target, succeeded, a unique eventId and externalId per event, nothing that needs scrubbing.

    PYTHONPATH=. python bench/report_chain.py [events] [repeats]

prints ``min median`` CPU µs per event (time.process_time) over ``repeats`` runs. Compare two
trees by alternating runs of each (the machine is shared).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from typing import Any

from octopus_crm.adapters.base import Delivered
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.redaction import register_secret
from octopus_crm.daemon.logs import bind_event, configure_logging, flush
from octopus_crm.daemon.outcomes import finished
from octopus_crm.daemon.partitioner import partition
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.reporting import Reporter, log_outcomes, report
from octopus_crm.daemon.retrying import AttemptRecord, TargetSpec
from octopus_crm.daemon.route import RouteState

PARTITIONS = list(range(12))


class _Producer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> asyncio.Future[None]:
        partition(key, PARTITIONS, PARTITIONS)  # what the client's send computes per record
        future: asyncio.Future[None] = self._loop.create_future()
        future.set_result(None)
        return future


def _inputs(n: int) -> list[tuple[RouteState, ClassifiedMessage, Delivered, dict[str, Any]]]:
    target = TargetSpec(integration_id="crm-main", integration_type="webhook", object_type="contact")
    out = []
    for i in range(n):
        event = ClassifiedMessage.model_validate(
            {
                "schemaVersion": 1,
                "eventId": str(uuid.uuid4()),
                "messageId": f"msg-{i:06d}",
                "tenantId": "t-7",
                "platform": "telegram",
                "sender": {"id": "k0", "name": "n"},
                "content": "c",
                "receivedAt": "2026-11-25T09:00:00Z",
                "classification": {"category": "lead", "confidence": 0.9, "priority": "high"},
            }
        )
        record = InboundRecord("crm.input", 3, 100_000 + i, b"k0", b"{}")
        state = RouteState(event.eventId, record, time.time(), "primary_backup", (target,))
        state.history = [AttemptRecord(integration="crm-main", at=time.time())]
        delivered = Delivered(f"REC-{uuid.uuid4().hex[:12]}", None)
        context = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "eventId": event.eventId,
            "tenantId": event.tenantId,
        }
        out.append((state, event, delivered, context))
    return out


async def _run(n: int) -> float:
    reporter = Reporter(_Producer(asyncio.get_running_loop()), results_topic="r", dlq_topic="d", retry_topic="q")  # type: ignore[arg-type]
    reporter.config_version = "v42"
    inputs = _inputs(n)
    started = time.monotonic()
    t0 = time.process_time()
    for state, event, delivered, context in inputs:
        bind_event(context)
        outcomes = finished(state, event, delivered)
        await report(reporter, outcomes)
        log_outcomes("event processed", state.strategy, outcomes, started)
        if len(inputs) and state.source.offset % 64 == 0:
            await asyncio.sleep(0)  # a loop turn now and then: the pending lines are written
    spent = time.process_time() - t0
    flush()
    return spent / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the canonical lines go nowhere
    configure_logging("json")
    register_secret("s3cr3t-bench-token")
    asyncio.run(_run(2_000))  # warm the memos and the counters
    runs = [asyncio.run(_run(n)) for _ in range(repeats)]
    print(f"{min(runs):.2f} {statistics.median(runs):.2f}")


if __name__ == "__main__":
    main()
