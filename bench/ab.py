"""A/B of the daemon's CPU per event: two or more checkouts on one broker, one fake, one backlog.

    python bench/ab.py --rounds 4 --events 15000 /tmp/before /work/wt/cpu

Each root is a checkout of this repository (``git archive <commit> | tar -x -C /tmp/before``
makes one); the daemon runs from it through ``BENCH_DAEMON_ROOT``. Every round drains the same
backlog (``events_for``, 1,000 keys, 4 partitions) once per root, into fresh topics, against the
same zero-latency webhook fake; the order alternates from round to round (A B, B A, ...) so that
a drift of the machine's load does not favour one side. With ``--raw`` the raw loop runs first
in each round as well, on the same broker and fake.

Per run it prints events/s, CPU µs per event (``common.drain``: the daemon's user + system time
between its first and last result), the machine's load average, and the hand-offs to the retry
topic by reason (``octopus_crm_retries_scheduled_total``); then the mean and the spread per root.
On a shared 2-core machine a single run varies by ±15 %: compare means over several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, Broker, DaemonProc, Fakes, RawProc, drain, events_for, produce
from bench.throughput import PARTITIONS, daemon_config

__all__ = ["run"]


async def _handoffs(daemon: DaemonProc) -> dict[str, int]:
    _, body = await daemon.get("/metrics")
    out: dict[str, int] = {}
    for line in body.decode().splitlines():
        if line.startswith("octopus_crm_retries_scheduled_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


async def run(roots: list[str], *, rounds: int, events: int, raw: bool) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {root: [] for root in (["raw"] if raw else []) + roots}
    with Broker("ab") as broker:
        async with Fakes({"name": "hook", "latency": 0.0}) as fakes:
            url = fakes.hook("hook")
            backlog = events_for("t-bench", events)
            others = {"broker": broker.pid, "fakes": fakes.pid}
            for index in range(rounds):
                order = roots if index % 2 == 0 else roots[::-1]
                for root in (["raw"] if raw else []) + order:
                    topics = await broker.topics(f"ab{index}", PARTITIONS)
                    await produce(broker.bootstrap, topics.input, backlog)
                    handoffs: dict[str, int] = {}
                    if root == "raw":
                        proc: Any = RawProc(broker.bootstrap, topics, url, PARTITIONS)
                    else:
                        os.environ["BENCH_DAEMON_ROOT"] = root
                        proc = DaemonProc(broker.bootstrap, topics, daemon_config(url), f"ab{index}")
                    try:
                        measured = await drain(
                            broker.bootstrap, topics, [proc], events=events, partitions=PARTITIONS, others=others
                        )
                        if root != "raw":
                            handoffs = await _handoffs(proc)
                    finally:
                        await proc.stop()
                    row = {
                        "rate": measured["rate"],
                        "cpu_us_per_event": measured["cpu_us_per_event"],
                        "load": round(os.getloadavg()[0], 2),
                        "handoffs": handoffs,
                    }
                    runs[root].append(row)
                    print(f"round {index + 1} {root}: {row}", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="checkouts to run the daemon from")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--events", type=int, default=15_000)
    parser.add_argument("--raw", action="store_true", help="run the raw loop too, first in each round")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs = asyncio.run(run(args.roots, rounds=args.rounds, events=args.events, raw=args.raw))
    for root, rows in runs.items():
        cpu = [r["cpu_us_per_event"] for r in rows]
        rate = [r["rate"] for r in rows]
        print(
            f"{root}: CPU µs/event mean {statistics.mean(cpu):.1f} (min {min(cpu):.1f}, max {max(cpu):.1f});"
            f" events/s mean {statistics.mean(rate):.1f} (min {min(rate):.1f}, max {max(rate):.1f})"
        )


if __name__ == "__main__":
    main()
