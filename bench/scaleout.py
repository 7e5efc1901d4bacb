"""6. Scale-out: one daemon process against two in the same consumer group, 4 partitions.

For each arm (1 process, then 2), the daemons start on an empty 4-partition topic and the arm
waits until the group is stable (every partition assigned, 2 each with two processes), then a
backlog of N events is produced and drained against a zero-latency fake. Throughput is counted
from the results' timestamps (first to last), so group joins are not in it. Each process has its
own SQLite ledger (the README asks for a shared Redis ledger with several replicas; a shared
Redis would add a process and a round trip per call to both arms alike). The CPU of every process
(daemons, broker, fakes, this load generator) and of the whole machine is reported beside the
ratio: on a 2-core machine the processes compete for the same two cores.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Broker,
    CommitWatcher,
    CpuAccount,
    DaemonProc,
    Fakes,
    bench_main,
    events_for,
    produce,
    read_all,
    wait_until,
)
from bench.throughput import daemon_config

__all__ = ["run"]

PARTITIONS = 4


async def _arm(broker: Broker, fakes: Fakes, processes: int, events: int) -> dict[str, Any]:
    topics = await broker.topics(f"scale{processes}", PARTITIONS)
    backlog = events_for("t-scale", events)
    daemons = [
        DaemonProc(broker.bootstrap, topics, daemon_config(fakes.hook("hook")), f"scale{processes}-{i}")
        for i in range(processes)
    ]
    for daemon in daemons:
        daemon.start()
    try:
        for daemon in daemons:
            await daemon.wait_ready()
        share = PARTITIONS // processes

        async def stable() -> bool:
            bodies = [await d.get("/readyz") for d in daemons]
            return all(
                status == 200 and orjson.loads(body)["reason"].startswith(f"{share} partitions")
                for status, body in bodies
            )

        await wait_until(stable, 60, "a stable group", every=0.25)
        cpu = CpuAccount({"broker": broker.pid, "fakes": fakes.pid})
        for i, daemon in enumerate(daemons):
            cpu.add(f"daemon {i + 1}", daemon.pid)
        cpu.start()
        await produce(broker.bootstrap, topics.input, backlog)
        async with CommitWatcher(broker.bootstrap, topics.input, topics.group, PARTITIONS) as watcher:

            async def drained() -> bool:
                return await watcher.total() >= events

            await wait_until(drained, 300, f"{events} events committed", every=0.25)
        usage = cpu.stop()
        consumed = [await d.metric("octopus_crm_events_consumed_total") for d in daemons]
    finally:
        codes = [await d.stop() for d in daemons]
    records = await read_all(broker.bootstrap, topics.results, expect=events, timeout=60)
    stamps = sorted(r.timestamp / 1000 for r in records)
    span = max(stamps[-1] - stamps[0], 1e-3)
    statuses = {str(orjson.loads(r.value).get("status")) for r in records}
    return {
        "processes": processes,
        "events": events,
        "results": len(records),
        "statuses": sorted(statuses),
        "seconds": round(span, 3),
        "rate": round(len(records) / span, 1),
        "consumed_per_process": consumed,
        "cpu": usage,
        "exit_codes": codes,
    }


async def run(smoke: bool = False) -> dict[str, Any]:
    events = 1_000 if smoke else 30_000
    out: dict[str, Any] = {"partitions": PARTITIONS}
    with Broker("scaleout") as broker:
        async with Fakes({"name": "hook", "latency": 0.0}) as fakes:
            out["one"] = await _arm(broker, fakes, 1, events)
            await asyncio.sleep(1.0)
            out["two"] = await _arm(broker, fakes, 2, events)
    out["ratio"] = round(out["two"]["rate"] / out["one"]["rate"], 3)
    return out


if __name__ == "__main__":
    bench_main("scaleout", __doc__ or "", lambda a: run(a.smoke))
