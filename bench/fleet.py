"""7. Fleet-wide limits: three daemon processes share one vendor limit through Redis.

Three daemons in one consumer group (6 partitions, 2 each) deliver to two rate-limited fakes (10
requests per second; 100 per 10 seconds), each integration configured at its fake's limit (paced
at 97%) with ``OCTOPUS_CRM_EXPECTED_REPLICAS=3``. The fleet limits live in a redis-server this
benchmark starts (the ledger in a second one, so that killing the first tests the limits alone).
A backlog keeps both integrations saturated for the whole run. Phases:

1. **steady** — deliveries per second over a window of whole seconds (60 s; a few in
   ``--smoke``), starting one second after the first delivery, against the limit (baseline: the
   vendor's limit; target ≥ 95%); 429s counted over the whole run.
2. **Retry-After** — the 10/s fake answers its next request with 429 and ``Retry-After: 30``;
   the requests the fake receives in the 30 s after that answer are counted (target 0: all three
   processes stop, not just the one that saw it).
3. **Redis killed** — the fleet Redis is killed: deliveries per second and 429s over the next
   window (each process falls back to limit / 3), then it is restarted and every daemon reports
   ``octopus_crm_fleet_limits_shared 1`` again.

At the end the daemons stop gracefully and the results topic is read: every delivery the fakes
took has exactly one result (nothing lost, nothing doubled), no event failed.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Broker,
    DaemonProc,
    Fakes,
    bench_main,
    events_for,
    produce,
    read_all,
    wait_until,
    webhook_integration,
)
from octopus_crm_sandbox.redis_server import RedisServer

__all__ = ["LIMITS", "run"]

LIMITS: dict[str, tuple[int, float]] = {"r10-per-1s": (10, 1.0), "r100-per-10s": (100, 10.0)}
REPLICAS = 3
PARTITIONS = 6
RETRY_AFTER = 30


async def _post(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(url) as resp:
        resp.raise_for_status()


async def _arrivals(fakes: Fakes, name: str, since: float) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{fakes.urls[name]}/_bench/arrivals?since={since}") as r,
    ):
        data: dict[str, Any] = orjson.loads(await r.read())
    return data


def _window(per_second: dict[int, int], start: int, seconds: int) -> int:
    return sum(per_second.get(s, 0) for s in range(start, start + seconds))


async def run(smoke: bool = False) -> dict[str, Any]:
    window = 3 if smoke else 60
    pause = 5 if smoke else RETRY_AFTER
    outage = 3 if smoke else 20
    out: dict[str, Any] = {"replicas": REPLICAS, "window_s": window, "headroom": 0.97, "target_pct": 95.0}
    spec = [{"name": name, "latency": 0.0, "rate_limit": [n, per]} for name, (n, per) in LIMITS.items()]
    fleet_redis, ledger_redis = RedisServer().start(), RedisServer().start()
    daemons: list[DaemonProc] = []
    try:
        with Broker("fleet") as broker:
            async with Fakes(*spec) as fakes:
                try:
                    topics = await broker.topics("fleet", PARTITIONS)
                    integrations = []
                    backlog: list[tuple[bytes, bytes]] = []
                    run_s = window + pause + outage + 60
                    for name, (n, per) in LIMITS.items():
                        tenant = f"t-{name}"
                        integrations.append(
                            webhook_integration(
                                name, fakes.hook(name), rate_limit={"requests": n, "perSeconds": per}, tenants=[tenant]
                            )
                        )
                        backlog += events_for(tenant, math.ceil(n / per * run_s * 1.2), keys=200)
                    settings = {"expected_replicas": REPLICAS, "fleet_redis_url": fleet_redis.url}
                    config = {"crmIntegrations": integrations}
                    daemons = [
                        DaemonProc(
                            broker.bootstrap, topics, config, f"fleet-{i}", settings=settings, ledger=ledger_redis.url
                        )
                        for i in range(REPLICAS)
                    ]
                    for daemon in daemons:
                        daemon.start()
                    for daemon in daemons:
                        await daemon.wait_ready(120)
                    await produce(broker.bootstrap, topics.input, backlog)
                    out["events_produced"] = len(backlog)

                    # 1. steady: both limits, all three processes
                    first: dict[str, int] = {}

                    async def delivering() -> bool:
                        for name in LIMITS:
                            seconds = (await fakes.stats(name))["per_second"]
                            if seconds and name not in first:
                                first[name] = min(seconds)
                        return len(first) == len(LIMITS)

                    await wait_until(delivering, 120, "first deliveries")
                    start = steady_start = max(first.values()) + 1
                    await asyncio.sleep(max(0.0, start + window + 1.5 - time.time()))
                    stats = {name: await fakes.stats(name) for name in LIMITS}
                    out["steady"] = {}
                    for name, (n, per) in LIMITS.items():
                        accepted = _window(stats[name]["per_second"], start, window)
                        rate = n / per
                        out["steady"][name] = {
                            "limit": f"{n} per {per:g} s",
                            "limit_rate": rate,
                            "accepted_in_window": accepted,
                            "achieved_rate": round(accepted / window, 3),
                            "achieved_pct": round(100 * accepted / window / rate, 1),
                            "rejected_429_in_window": _window(stats[name]["rejected_per_second"], start, window),
                            "deliveries_per_daemon": None,
                        }
                    shares = [
                        await d.metric('octopus_crm_delivery_attempts_total{integration="r10-per-1s"') for d in daemons
                    ]
                    out["steady"]["r10-per-1s"]["deliveries_per_daemon"] = shares

                    # 2. a 429 with Retry-After seen by one process stops all of them
                    name = "r10-per-1s"
                    asked = time.time()
                    await fakes_post(fakes, name, pause)

                    async def answered() -> bool:
                        return (await _arrivals(fakes, name, asked))["throttled_at"] is not None

                    await wait_until(answered, 30, "the injected 429 is answered")
                    throttled_at = float((await _arrivals(fakes, name, asked))["throttled_at"])
                    await asyncio.sleep(3)  # every daemon's view of the pause (refreshed each second)
                    parked = [
                        await d.metric('octopus_crm_parked_until_seconds{integration="r10-per-1s"') for d in daemons
                    ]
                    await asyncio.sleep(max(0.0, throttled_at + pause + 5 - time.time()))
                    arrivals = [t - throttled_at for t in (await _arrivals(fakes, name, throttled_at))["arrivals"]]
                    during = [round(t, 3) for t in arrivals if 0 < t < pause]
                    resumed = [t for t in arrivals if t >= pause]
                    out["retry_after"] = {
                        "retry_after_s": pause,
                        "requests_in_pause": len(during),
                        "request_offsets_in_pause_s": during[:20],
                        "first_request_after_s": round(min(resumed), 3) if resumed else None,
                        "parked_until_minus_429_per_daemon_s": [round(p - throttled_at, 1) if p else 0 for p in parked],
                        "met": not during,
                    }

                    # 3. the fleet Redis goes away, then comes back
                    before = {n: await fakes.stats(n) for n in LIMITS}
                    fleet_redis.kill()
                    killed = time.time()
                    start = int(killed) + 1
                    await asyncio.sleep(max(0.0, start + outage + 1.5 - time.time()))
                    stats = {n: await fakes.stats(n) for n in LIMITS}
                    shared_down = [await d.metric("octopus_crm_fleet_limits_shared") for d in daemons]
                    out["redis_killed"] = {"window_s": outage, "shared_metric_per_daemon": shared_down}
                    for n_name, (n, per) in LIMITS.items():
                        accepted = _window(stats[n_name]["per_second"], start, outage)
                        out["redis_killed"][n_name] = {
                            "achieved_rate": round(accepted / outage, 3),
                            "achieved_pct": round(100 * accepted / outage / (n / per), 1),
                            "rejected_429_since_kill": stats[n_name]["rejected"] - before[n_name]["rejected"],
                        }
                    fleet_redis.start()
                    back = time.time()

                    async def shared_again() -> bool:
                        return all([await d.metric("octopus_crm_fleet_limits_shared") == 1 for d in daemons])

                    await wait_until(shared_again, 60, "every daemon back on the fleet schedule")
                    out["redis_restarted"] = {"back_on_fleet_after_s": round(time.time() - back, 1)}
                    out["daemon_exit"] = [await d.stop() for d in daemons]
                    daemons = []
                    final = {n: await fakes.stats(n) for n in LIMITS}
                    # the fakes' own window rejections over the whole run (the injected 429 is not one)
                    out["rejected_429_excluding_injected"] = {n: final[n]["rejected"] for n in LIMITS}
                    out["all_429_at_s"] = {  # seconds since the steady window began (injected one included)
                        n: {s - steady_start: c for s, c in sorted(final[n]["rejected_per_second"].items())}
                        for n in LIMITS
                    }
                    out["phase_starts_s"] = {
                        "retry_after": round(throttled_at - steady_start, 1),
                        "redis_killed": round(killed - steady_start, 1),
                        "redis_restarted": round(back - steady_start, 1),
                    }
                    created = sum(final[n]["created"] for n in LIMITS)
                    unique = sum(final[n]["unique_keys"] for n in LIMITS)
                    results = await read_all(broker.bootstrap, topics.results, expect=len(backlog), timeout=30)
                    dead = await read_all(broker.bootstrap, topics.dlq, expect=1, timeout=5)
                    statuses: dict[str, int] = {}
                    delivered_ids: set[str] = set()
                    for record in results:
                        result = orjson.loads(record.value)
                        statuses[result["status"]] = statuses.get(result["status"], 0) + 1
                        if result["status"] in ("succeeded", "duplicate"):
                            delivered_ids.add(result["eventId"])
                    out["accounting"] = {
                        "fake_deliveries": created,
                        "fake_unique_idempotency_keys": unique,
                        "results": len(results),
                        "results_by_status": statuses,
                        "events_with_a_delivered_result": len(delivered_ids),
                        "dead_letters": len(dead),
                        "nothing_lost_or_doubled": created == unique == len(delivered_ids) and not dead,
                    }
                finally:
                    for daemon in daemons:  # before the broker goes away
                        await daemon.stop()
    finally:
        fleet_redis.kill()
        ledger_redis.kill()
    steady = out["steady"]
    out["meets_target"] = (
        all(v["achieved_pct"] >= 95 for k, v in steady.items())
        and all(v == 0 for v in out["rejected_429_excluding_injected"].values())
        and out["retry_after"]["met"]
        and out["accounting"]["nothing_lost_or_doubled"]
    )
    return out


async def fakes_post(fakes: Fakes, name: str, retry_after: int) -> None:
    await _post(f"{fakes.urls[name]}/_bench/throttle?retry_after={retry_after}")


if __name__ == "__main__":
    bench_main("fleet", __doc__ or "", lambda a: run(a.smoke))
