"""3. Isolation: a zero-latency integration keeps its throughput next to a 2-second one.

Two tenants, two webhook integrations (each limited to its tenant, so their events are separate
streams on the same partitions): ``fast`` (a zero-latency fake) and ``slow`` (a fake that answers
after 2 s; at the webhook's 64 connections it can do at most 32 requests/s). In the same run:

- **solo**: a backlog of N fast events only;
- **mixed**: the same N fast events interleaved with slow ones (one slow per ``SLOW_EVERY`` fast
  events: far more than the slow integration can take, so its backlog builds up);
- **paced solo / paced mixed**: the same two phases with the fast integration paced at
  ``PACED_RATE`` requests/s (a real vendor's limit) so that the daemon is not CPU-bound: this is
  isolation as production sees it, where a neighbour's latency must not cost throughput at all;
- **control**: the same interleaving, but the second tenant's integration answers at once. It
  costs the daemon the same extra records without the latency, so mixed over control is the
  effect of the 2-s latency alone (on a CPU-bound 2-core machine, mixed over solo also charges the
  fast integration for the CPU of 10% more events).

The figure is the fast integration's throughput (its results per second, first to last) mixed
over solo; the target is ≥ 90%. A single phase of ~7 s varies by ±10% on a shared 2-core VM
(solo alone ranged 2,228–3,048/s across runs), so the saturated phases run in ``ROUNDS`` rounds,
their order rotated from round to round (solo, mixed, control; mixed, control, solo; ...) so that
no phase always runs first or last; the ratio is taken per round (same minutes) and the figure is
the median of the rounds, every round printed beside it.

The daemon hands a slow integration's backlog to the retry topic so the source partitions keep
flowing: the run reports how many slow deliveries were scheduled there, how many slow deliveries
completed meanwhile, and the fast results' latency.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Broker,
    CpuAccount,
    DaemonProc,
    Fakes,
    bench_main,
    events_for,
    produce,
    quantiles,
    read_all,
    wait_until,
    webhook_integration,
)

__all__ = ["run"]

PARTITIONS = 4
SLOW_LATENCY_S = 2.0
SLOW_EVERY = 10


PACED_RATE = 400
ROUNDS = 3
SATURATED = ("solo", "mixed", "control")


def _config(fakes: Fakes, neighbour: str = "slow", fast_rate: float | None = None) -> dict[str, Any]:
    limit = {"requests": fast_rate, "perSeconds": 1, "concurrency": 64} if fast_rate else None
    return {
        "crmIntegrations": [
            webhook_integration("fast", fakes.hook("fast"), tenants=["t-fast"], rate_limit=limit),
            webhook_integration("slow", fakes.hook(neighbour), tenants=["t-slow"]),
        ]
    }


def _integration(record: Any) -> str:
    return str(orjson.loads(record.value).get("integrationId"))


async def _phase(
    broker: Broker,
    fakes: Fakes,
    name: str,
    fast: int,
    slow: int,
    neighbour: str = "slow",
    fast_rate: float | None = None,
    suffix: str = "",
) -> dict[str, Any]:
    topics = await broker.topics(f"isolation-{name}{suffix}", PARTITIONS)
    fast_events = events_for("t-fast", fast)
    slow_events = events_for("t-slow", slow, keys=200)
    backlog: list[tuple[bytes, bytes]] = []
    for index, record in enumerate(fast_events):  # interleaved: one slow per SLOW_EVERY fast
        backlog.append(record)
        if slow and index % SLOW_EVERY == 0 and index // SLOW_EVERY < len(slow_events):
            backlog.append(slow_events[index // SLOW_EVERY])
    await produce(broker.bootstrap, topics.input, backlog)
    before_fast = (await fakes.counts("fast"))["created"]
    before_slow = (await fakes.counts(neighbour))["created"]
    daemon = DaemonProc(broker.bootstrap, topics, _config(fakes, neighbour, fast_rate), f"isolation-{name}{suffix}")
    daemon.start()
    cpu = CpuAccount({"daemon": daemon.pid, "broker": broker.pid, "fakes": fakes.pid})
    try:
        await daemon.wait_ready()
        cpu.start()

        async def fast_done() -> bool:
            return (await fakes.counts("fast"))["created"] - before_fast >= fast

        await wait_until(fast_done, 300, f"{fast} fast deliveries", every=0.25)
        cpu.stop()
        slow_done = (await fakes.counts(neighbour))["created"] - before_slow
        retries = await _retries(daemon)
        records = await read_all(
            broker.bootstrap, topics.results, expect=fast, timeout=60, match=lambda r: _integration(r) == "fast"
        )
    finally:
        exit_code = await daemon.stop()
    stamps = sorted(r.timestamp / 1000 for r in records)
    span = max(stamps[-1] - stamps[0], 1e-3) if stamps else 0.0
    latencies = [orjson.loads(r.value).get("latencyMs", 0.0) for r in records]
    return {
        "fast_events": fast,
        "slow_events": len(slow_events) if slow else 0,
        "fast_results": len(records),
        "fast_seconds": round(span, 3),
        "fast_rate": round(len(records) / span, 1) if span else None,
        "fast_result_latency_ms": quantiles(latencies),
        "slow_delivered_meanwhile": slow_done,
        "retries_scheduled": retries,
        "cpu": cpu.result,
        "daemon_exit": exit_code,
        "at": time.strftime("%H:%M:%S"),
    }


async def _retries(daemon: DaemonProc) -> dict[str, float]:
    _, body = await daemon.get("/metrics")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("octopus_crm_retries_scheduled_total{"):
            integration = line.split('integration="', 1)[1].split('"', 1)[0]
            reason = line.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in line else "all"
            out[f"{integration}/{reason}"] = float(line.rsplit(" ", 1)[1])
    return out


async def _saturated(broker: Broker, fakes: Fakes, phase: str, fast: int, suffix: str) -> dict[str, Any]:
    slow = fast // SLOW_EVERY
    if phase == "solo":
        return await _phase(broker, fakes, "solo", fast, 0, suffix=suffix)
    if phase == "mixed":
        return await _phase(broker, fakes, "mixed", fast, slow, suffix=suffix)
    return await _phase(broker, fakes, "control", fast, slow, neighbour="quick", suffix=suffix)


def _pct(part: float | None, whole: float | None) -> float | None:
    return round(100 * part / whole, 1) if part and whole else None


async def run(smoke: bool = False, rounds: int | None = None) -> dict[str, Any]:
    fast = 1_000 if smoke else 20_000
    rounds = rounds or (1 if smoke else ROUNDS)
    out: dict[str, Any] = {
        "slow_latency_s": SLOW_LATENCY_S,
        "slow_every": SLOW_EVERY,
        "target_pct": 90.0,
        "rounds": rounds,
    }
    runs: list[dict[str, Any]] = []
    with Broker("isolation") as broker:
        async with Fakes(
            {"name": "fast", "latency": 0.0},
            {"name": "slow", "latency": SLOW_LATENCY_S},
            {"name": "quick", "latency": 0.0},
        ) as fakes:
            for index in range(rounds):
                # rotated: over three rounds each phase runs once first, once second, once last
                order = SATURATED[index % 3 :] + SATURATED[: index % 3]
                phases = {phase: await _saturated(broker, fakes, phase, fast, f"-r{index}") for phase in order}
                solo, mixed, control = (phases[p]["fast_rate"] for p in SATURATED)
                runs.append(
                    {
                        "order": list(order),
                        **phases,
                        "kept_pct": _pct(mixed, solo),
                        "kept_vs_control_pct": _pct(mixed, control),
                        "control_vs_solo_pct": _pct(control, solo),
                    }
                )
            paced = fast // 4  # ~12 s at PACED_RATE
            out["paced_solo"] = await _phase(broker, fakes, "paced-solo", paced, 0, fast_rate=PACED_RATE)
            out["paced_mixed"] = await _phase(
                broker, fakes, "paced-mixed", paced, paced // SLOW_EVERY, fast_rate=PACED_RATE
            )
    out["runs"] = runs
    kept = [r["kept_pct"] for r in runs if r["kept_pct"] is not None]
    out["kept_pct"] = round(statistics.median(kept), 1) if kept else None
    out["kept_pct_rounds"] = [r["kept_pct"] for r in runs]
    out["kept_pct_mean"] = round(statistics.fmean(kept), 1) if kept else None
    vs_control = [r["kept_vs_control_pct"] for r in runs if r["kept_vs_control_pct"] is not None]
    out["kept_vs_control_pct"] = round(statistics.median(vs_control), 1) if vs_control else None
    out["kept_vs_control_pct_rounds"] = [r["kept_vs_control_pct"] for r in runs]
    # the phases of the round whose kept figure is the median, for the table's rates
    by_kept = sorted(runs, key=lambda r: r["kept_pct"] or 0.0)
    middle = by_kept[len(by_kept) // 2]
    for phase in SATURATED:
        out[phase] = middle[phase]
    out["paced_kept_pct"] = _pct(out["paced_mixed"]["fast_rate"], out["paced_solo"]["fast_rate"])
    out["meets_target"] = bool(out["kept_pct"] and out["kept_pct"] >= 90.0)
    return out


if __name__ == "__main__":
    bench_main("isolation", __doc__ or "", lambda a: run(a.smoke))
