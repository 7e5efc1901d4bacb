"""2. Rate-limit use: achieved rate against a fake that enforces N requests per window.

Two fakes enforce a sliding-window limit and answer 429 with ``Retry-After`` above it: 10 requests
per second, and HubSpot-like 100 requests per 10 seconds. One daemon serves both at once (two
tenants, each integration limited to its tenant), each integration's ``config.rateLimit`` set to
its fake's limit; the kit paces at 97% of it. A backlog larger than either limit can serve keeps
both saturated. Over a window of whole seconds (60 s; a few in ``--smoke``) starting one second
after the first delivery, the achieved rate is the fake's accepted deliveries divided by the
window, compared with N (the baseline: the vendor's limit) and with the 95% target; every 429
of the whole run is counted.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Broker, DaemonProc, Fakes, bench_main, events_for, produce, webhook_integration

__all__ = ["LIMITS", "run"]

# name → (requests, per seconds)
LIMITS: dict[str, tuple[int, float]] = {"r10-per-1s": (10, 1.0), "r100-per-10s": (100, 10.0)}
PARTITIONS = 4


async def run(smoke: bool = False) -> dict[str, Any]:
    window = 3 if smoke else 60
    out: dict[str, Any] = {"window_s": window, "headroom": 0.97, "target_pct": 95.0, "limits": {}}
    spec = [{"name": name, "latency": 0.0, "rate_limit": [n, per]} for name, (n, per) in LIMITS.items()]
    with Broker("ratelimit") as broker:
        async with Fakes(*spec) as fakes:
            topics = await broker.topics("ratelimit", PARTITIONS)
            integrations = []
            backlog: list[tuple[bytes, bytes]] = []
            for name, (n, per) in LIMITS.items():
                tenant = f"t-{name}"
                integrations.append(
                    webhook_integration(
                        name, fakes.hook(name), rate_limit={"requests": n, "perSeconds": per}, tenants=[tenant]
                    )
                )
                backlog += events_for(tenant, math.ceil(n / per * (window + 15) * 1.2), keys=200)
            await produce(broker.bootstrap, topics.input, backlog)
            daemon = DaemonProc(broker.bootstrap, topics, {"crmIntegrations": integrations}, "ratelimit")
            daemon.start()
            try:
                await daemon.wait_ready()
                first: dict[str, int] = {}
                deadline = time.monotonic() + 60
                while len(first) < len(LIMITS) and time.monotonic() < deadline:
                    for name in LIMITS:
                        seconds = (await fakes.stats(name))["per_second"]
                        if seconds and name not in first:
                            first[name] = min(seconds)
                    await asyncio.sleep(0.2)
                if len(first) < len(LIMITS):
                    raise RuntimeError(f"no deliveries within 60 s: {sorted(set(LIMITS) - set(first))}")
                end = max(first.values()) + 1 + window
                await asyncio.sleep(max(0.0, end + 1.5 - time.time()))  # + slack for stragglers
                stats = {name: await fakes.stats(name) for name in LIMITS}
                retries = await daemon.metric("octopus_crm_retries_scheduled_total")
                failed_attempts = await _failed_attempts(daemon)
            finally:
                out["daemon_exit"] = await daemon.stop()
    for name, (n, per) in LIMITS.items():
        data = stats[name]
        start = first[name] + 1
        seconds = range(start, start + window)
        accepted = sum(data["per_second"].get(s, 0) for s in seconds)
        limit_rate = n / per
        achieved = accepted / window
        out["limits"][name] = {
            "limit": f"{n} per {per:g} s",
            "limit_rate": limit_rate,
            "paced_rate": round(limit_rate * 0.97, 3),
            "accepted_in_window": accepted,
            "achieved_rate": round(achieved, 3),
            "achieved_pct": round(100 * achieved / limit_rate, 1),
            "rejected_429_total": data["rejected"],
            "accepted_total": data["accepted"],
            "busiest_window": _busiest(data["per_second"], per),
            "meets_target": achieved >= 0.95 * limit_rate and data["rejected"] == 0,
        }
    out["daemon_retries_scheduled"] = retries
    out["daemon_failed_attempts"] = failed_attempts
    return out


def _busiest(per_second: dict[int, int], per: float) -> int:
    """The most deliveries in any window of ``per`` whole seconds (must stay ≤ the limit)."""
    span = max(1, round(per))
    if not per_second:
        return 0
    lo, hi = min(per_second), max(per_second)
    return max(sum(per_second.get(s, 0) for s in range(t, t + span)) for t in range(lo, hi + 1))


async def _failed_attempts(daemon: DaemonProc) -> float:
    """Delivery attempts the daemon counted as anything but ``ok`` (a 429 would be one)."""
    _, body = await daemon.get("/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("octopus_crm_delivery_attempts_total{") and 'outcome="ok"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


if __name__ == "__main__":
    bench_main("ratelimit", __doc__ or "", lambda a: run(a.smoke))
