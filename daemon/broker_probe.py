"""Does the broker answer? A metadata request for our own topics every few seconds.

aiokafka's consumer and producer retry forever and swallow the errors, so nothing in them tells
an outage from a quiet topic. This cheap request, through an existing client connection and with
a timeout, is the one signal ``/readyz`` and the stall detection trust.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from octopus_crm.daemon import metrics
from octopus_crm.daemon.health import Health

__all__ = ["BrokerProbe"]

log = structlog.get_logger("octopus.broker")

REMIND_EVERY_S = 30.0


class BrokerProbe:
    def __init__(
        self,
        client: Any,  # aiokafka.client.AIOKafkaClient (untyped)
        topics: Sequence[str],
        healths: Sequence[Health],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._client = client
        self._topics = list(topics)
        self._healths = healths
        self._interval = interval
        self._timeout = timeout
        self._down_since: float | None = None
        self._down_since_wall: str = ""
        self._last_reminder = 0.0
        metrics.BROKER_REACHABLE.set_function(lambda: float(any(h.broker_reachable() for h in healths)))

    async def run(self) -> None:
        """Probe until cancelled."""
        while True:
            await self.once()
            await asyncio.sleep(self._interval)

    async def once(self) -> bool:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._ask(), self._timeout)
        except (KafkaError, TimeoutError, OSError) as exc:
            self._failed(type(exc).__name__, started)
            return False
        self._answered()
        return True

    async def _ask(self) -> None:
        node = self._client.get_random_node()
        if node is None:
            raise KafkaError("no broker known")
        await self._client.send(node, MetadataRequest(self._topics, allow_auto_topic_creation=False))

    def _answered(self) -> None:
        now = time.monotonic()
        for health in self._healths:
            health.broker_answered(now)
        if self._down_since is not None:
            log.info("broker reachable again", unreachable_for_s=round(now - self._down_since, 1))
            self._down_since = None

    def _failed(self, error: str, started: float) -> None:
        now = time.monotonic()
        for health in self._healths:
            health.last_error = error
        if any(health.broker_reachable(now) for health in self._healths):
            return  # one missed answer within BROKER_TIMEOUT_S is not an outage yet
        if self._down_since is None:
            answered = [h.broker_answered_at for h in self._healths if h.broker_answered_at is not None]
            self._down_since = max(answered) if answered else started
            wall = datetime.now(UTC).timestamp() - (now - self._down_since)
            self._down_since_wall = datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")
        elif now - self._last_reminder < REMIND_EVERY_S:
            return
        self._last_reminder = now
        log.warning(
            f"broker unreachable since {self._down_since_wall}",
            since=self._down_since_wall,
            down_for_s=round(now - self._down_since, 1),
            error=error,
        )
