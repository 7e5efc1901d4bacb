"""Keep this replica in step with the fleet: pauses, open circuits and the metrics' fleet view.

A replica learns a fleet-wide pause on its next paced request anyway; this loop also learns it
(and open circuits) while the replica sends nothing, so the dispatcher parks instead of waiting,
and every pod's ``/metrics`` shows the fleet's tokens and parked-until per integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import structlog

from octopus_crm.adapters.base import Adapter
from octopus_crm.adapters.fleet import FleetStore
from octopus_crm.daemon import metrics
from octopus_crm.daemon.settings import Settings
from octopus_crm.strategies.breaker import BreakerState, CircuitBreaker

__all__ = ["FleetSync", "open_fleet"]

log = structlog.get_logger("octopus.fleet")


def open_fleet(settings: Settings) -> FleetStore | None:
    url = settings.fleet_url()
    if url is None:
        return None
    return FleetStore(
        url,
        expected_replicas=settings.expected_replicas,
        prefix=settings.fleet_redis_prefix,
        timeout=settings.fleet_redis_timeout_s,
    )


class FleetSync:
    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        breakers: Mapping[str, CircuitBreaker],
        fleet: FleetStore | None,
        *,
        every: float = 1.0,
    ) -> None:
        self.adapters = adapters
        self.breakers = breakers
        self.fleet = fleet
        self.every = every

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.every)

    async def tick(self) -> None:
        for integration_id, adapter in self.adapters.items():
            limiter = adapter.current_limiter()
            if limiter is not None:
                await limiter.refresh()
                paused_for = limiter.paused_for
                metrics.PARKED_UNTIL.labels(integration_id).set(time.time() + paused_for if paused_for > 0 else 0)
                tokens = limiter.tokens
                if tokens is not None:
                    metrics.RATE_LIMIT_TOKENS.labels(integration_id).set(tokens)
                else:
                    with contextlib.suppress(KeyError):  # pacing locally: no fleet view to show
                        metrics.RATE_LIMIT_TOKENS.remove(integration_id)
            breaker = self.breakers.get(integration_id)
            if self.fleet is not None and breaker is not None:
                await self._follow(integration_id, breaker)
        metrics.FLEET_SHARED.set(1 if self.fleet is not None and self.fleet.available else 0)

    async def _follow(self, integration_id: str, breaker: CircuitBreaker) -> None:
        """Open this replica's circuit while another replica holds it open."""
        assert self.fleet is not None
        open_for = await self.fleet.circuit_open_for(integration_id)
        if open_for is None or open_for <= 0:
            return
        if breaker.state is not BreakerState.OPEN or open_for > breaker.retry_in + 0.5:
            log.info("circuit opened by another replica", integration=integration_id, open_for=round(open_for, 1))
            breaker.trip(open_for)
