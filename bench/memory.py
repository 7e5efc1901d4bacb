"""5. Memory: the daemon's RSS while a 200,000-event backlog drains.

The daemon starts on an empty input topic; once it is ready its idle RSS is sampled for a few
seconds (the baseline), then 200,000 events (5,000 in ``--smoke``) are produced as fast as the
broker takes them and the daemon drains them with its default settings (``MAX_IN_FLIGHT`` 1000,
SQLite ledger). RSS is read from ``/proc/<pid>/status`` every second until every offset is
committed. Reported: idle RSS, maximum, RSS at each quarter of the drain, and the least-squares
slope over the second half of the drain (flat ≈ 0 MB/min). Target: flat and ≤ 300 MB.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Broker,
    CommitWatcher,
    CpuAccount,
    DaemonProc,
    Fakes,
    RssSampler,
    bench_main,
    events_for,
    produce,
    slope_per_minute,
    wait_until,
)
from bench.throughput import daemon_config

__all__ = ["run"]

PARTITIONS = 4
TARGET_MB = 300.0


async def run(smoke: bool = False) -> dict[str, Any]:
    events = 5_000 if smoke else 200_000
    out: dict[str, Any] = {"events": events, "target_mb": TARGET_MB}
    with Broker("memory") as broker:
        async with Fakes({"name": "hook", "latency": 0.0}) as fakes:
            topics = await broker.topics("memory", PARTITIONS)
            backlog = events_for("t-mem", events)
            daemon = DaemonProc(broker.bootstrap, topics, daemon_config(fakes.hook("hook")), "memory")
            daemon.start()
            sampler = RssSampler(daemon.pid, every=1.0)
            try:
                await daemon.wait_ready()
                sampler.start()
                await asyncio.sleep(3.0)
                idle = [v for _, v in sampler.samples]
                drain_from = len(sampler.samples)
                cpu = CpuAccount({"daemon": daemon.pid, "broker": broker.pid, "fakes": fakes.pid}).start()
                started = time.monotonic()
                out["produce_s"] = round(await produce(broker.bootstrap, topics.input, backlog), 1)
                progress: list[tuple[float, int]] = []
                async with CommitWatcher(broker.bootstrap, topics.input, topics.group, PARTITIONS) as watcher:

                    async def drained() -> bool:
                        if daemon.proc is not None and daemon.proc.poll() is not None:
                            raise RuntimeError(f"daemon exited with {daemon.proc.returncode}")
                        done = await watcher.total()
                        progress.append((time.monotonic() - started, done))
                        return done >= events

                    await wait_until(drained, 900, f"{events} events committed", every=1.0)
                out["drain_s"] = round(time.monotonic() - started, 1)
                out["cpu"] = cpu.stop()
            finally:
                await sampler.stop()
                out["daemon_exit"] = await daemon.stop()
    during = sampler.samples[drain_from:]
    values = [v for _, v in during]
    half = during[len(during) // 2 :]
    out["rss_idle_mb"] = round(max(idle), 1) if idle else None
    out["rss_max_mb"] = round(max(values), 1) if values else None
    out["rss_end_mb"] = round(values[-1], 1) if values else None
    out["rss_quarters_mb"] = [round(values[min(len(values) - 1, len(values) * q // 4)], 1) for q in (1, 2, 3, 4)]
    slope = slope_per_minute(half)
    out["slope_second_half_mb_per_min"] = round(slope, 2) if slope is not None else None
    out["rate"] = round(events / out["drain_s"], 1)
    out["samples"] = [[round(t, 1), round(v, 1)] for t, v in during]
    out["committed_progress"] = [[round(t, 1), n] for t, n in progress[:: max(1, len(progress) // 60)]]
    out["meets_target"] = bool(out["rss_max_mb"] and out["rss_max_mb"] <= TARGET_MB)
    return out


if __name__ == "__main__":
    bench_main("memory", __doc__ or "", lambda a: run(a.smoke))
