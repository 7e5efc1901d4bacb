"""4. Added latency: produce → result at half of the measured maximum load, minus the fake's own.

The load generator produces events at a steady rate (half the daemon's measured maximum: passed
in by ``run_all`` from the throughput benchmark, else measured here with a short drain), each
stamped with its send time; a consumer reads the results topic as they arrive. The webhook fake
answers after ``FAKE_LATENCY_S``. For every event after a warm-up:

- ``to_result_ms``: the result record's timestamp (set by the daemon's producer as it hands the
  result over) minus the event's send time, minus the fake's latency — what the daemon adds;
- ``observed_ms``: when the load generator's own consumer saw the result, minus the send time,
  minus the fake's latency (adds the consumer's fetch round trip).

The raw baseline (``bench/raw.py``) runs the same load against the same fake in the same run, so
the floor set by the broker, the clients and this machine is visible beside the daemon's figure.
Both consume with a 20 ms fetch wait (``OCTOPUS_CRM_FETCH_MAX_WAIT_MS``): Tansu holds a fetch
for its whole wait instead of answering when data arrives, which at the default 500 ms adds up to
a quarter of a second to every event; the daemon also runs once at the default to show that
share (not in ``--smoke``). Target: the daemon's p99 added latency ≤ 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Broker,
    CpuAccount,
    DaemonProc,
    Fakes,
    RawProc,
    bench_main,
    drain,
    events_for,
    make_event,
    produce,
    quantiles,
    wait_until,
)
from bench.throughput import daemon_config

__all__ = ["run"]

PARTITIONS = 4
FAKE_LATENCY_S = 0.010
WARMUP_S = 3.0
# Tansu holds a fetch until its max wait even when data arrives (a Kafka broker answers as soon as
# there is data), which adds up to the wait to every event: both sides run with a short one, and
# the daemon once more at its default to show the broker's share.
FETCH_WAIT_MS = 20


async def _load(bootstrap: str, topic: str, results: str, rate: float, seconds: float, tenant: str) -> dict[str, Any]:
    """Produce at ``rate``/s for ``seconds`` while reading results; return latency figures."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0)
    consumer = AIOKafkaConsumer(
        results,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )
    await producer.start()
    await consumer.start()
    sent: dict[str, float] = {}
    seen: dict[str, tuple[float, float]] = {}  # eventId → (result timestamp, observed at)
    total = int(rate * seconds)
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for record in records:
                    seen[record.key.decode()] = (record.timestamp / 1000, now)

    reader = asyncio.create_task(read())
    started = time.time()
    try:
        for i in range(total):
            due = started + i / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            conv = f"c{i % 1000}"
            event = make_event(i, tenant, conv, sent_at=now)
            sent[event["eventId"]] = now
            await producer.send(topic, value=orjson.dumps(event), key=f"{tenant}:{conv}".encode())
        achieved = total / max(time.time() - started, 1e-3)

        async def all_seen() -> bool:
            return len(seen) >= total

        with contextlib.suppress(TimeoutError):  # missing results are reported, not fatal
            await wait_until(all_seen, 30, "every result", every=0.1)
    finally:
        stop.set()
        await reader
        await producer.stop()
        await consumer.stop()
    measured = [e for e, at in sent.items() if at >= started + WARMUP_S]
    to_result = [1000 * (seen[e][0] - sent[e] - FAKE_LATENCY_S) for e in measured if e in seen]
    observed = [1000 * (seen[e][1] - sent[e] - FAKE_LATENCY_S) for e in measured if e in seen]
    return {
        "offered_rate": round(rate, 1),
        "achieved_send_rate": round(achieved, 1),
        "events": total,
        "measured": len(measured),
        "missing_results": len([e for e in measured if e not in seen]),
        "to_result_ms": quantiles(to_result),
        "observed_ms": quantiles(observed),
    }


async def run(smoke: bool = False, *, max_rate: float | None = None) -> dict[str, Any]:
    seconds = 4.0 if smoke else 20.0
    out: dict[str, Any] = {"fake_latency_ms": FAKE_LATENCY_S * 1000, "warmup_s": WARMUP_S, "seconds": seconds}
    with Broker("latency") as broker:
        async with Fakes({"name": "hook", "latency": FAKE_LATENCY_S}) as fakes:
            url = fakes.hook("hook")
            if max_rate is None:  # measure the maximum here: a short drain
                topics = await broker.topics("latency-max", PARTITIONS)
                count = 2_000 if smoke else 10_000
                await produce(broker.bootstrap, topics.input, events_for("t-max", count))
                probe = DaemonProc(broker.bootstrap, topics, daemon_config(url), "latency-max")
                try:
                    max_rate = (await drain(broker.bootstrap, topics, [probe], events=count))["rate"]
                finally:
                    await probe.stop()
                out["max_rate_source"] = f"measured here (drain of {count} events, fake latency {FAKE_LATENCY_S}s)"
            else:
                out["max_rate_source"] = "throughput benchmark of the same run"
            out["max_rate"] = max_rate
            rate = max_rate / 2

            for name, fetch_wait in (("daemon", FETCH_WAIT_MS), ("daemon_default_fetch_wait", None)):
                if smoke and fetch_wait is None:
                    continue
                settings = {"fetch_max_wait_ms": fetch_wait} if fetch_wait is not None else {}
                topics = await broker.topics(f"latency-{name}", PARTITIONS)
                daemon = DaemonProc(broker.bootstrap, topics, daemon_config(url), f"latency-{name}", settings)
                daemon.start()
                cpu = CpuAccount({"daemon": daemon.pid, "broker": broker.pid, "fakes": fakes.pid})
                try:
                    await daemon.wait_ready()
                    await asyncio.sleep(1.0)
                    cpu.start()
                    out[name] = await _load(broker.bootstrap, topics.input, topics.results, rate, seconds, "t-lat")
                    out[name]["fetch_max_wait_ms"] = fetch_wait or 500
                    out[name]["cpu"] = cpu.stop()
                finally:
                    await daemon.stop()

            topics = await broker.topics("latency-raw", PARTITIONS)
            raw = RawProc(broker.bootstrap, topics, url, PARTITIONS, fetch_max_wait_ms=FETCH_WAIT_MS).start()
            cpu = CpuAccount({"raw": raw.pid, "broker": broker.pid, "fakes": fakes.pid})
            try:
                await asyncio.sleep(3.0)  # start-up and partition assignment
                cpu.start()
                out["raw"] = await _load(broker.bootstrap, topics.input, topics.results, rate, seconds, "t-lat")
                out["raw"]["fetch_max_wait_ms"] = FETCH_WAIT_MS
                out["raw"]["cpu"] = cpu.stop()
            finally:
                await raw.stop()
            out["fake_service_ms"] = (await fakes.stats("hook"))["service_ms"]
    p99 = out["daemon"]["to_result_ms"]["p99"]
    out["target_p99_ms"] = 20.0
    out["meets_target"] = p99 is not None and p99 <= 20.0
    return out


def _options(parser: Any) -> None:
    parser.add_argument("--max-rate", type=float, help="the daemon's maximum events/s (else measured)")


if __name__ == "__main__":
    bench_main("latency", __doc__ or "", lambda a: run(a.smoke, max_rate=a.max_rate), _options)
