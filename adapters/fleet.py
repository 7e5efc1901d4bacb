"""Fleet-wide limits: one vendor rate limit, pause and open circuit shared by every replica.

A vendor's limit belongs to the customer's account, not to our pod count. With a coordination
Redis (by default the ledger's), every replica paces one integration (or one vendor scope, e.g. a
HubSpot account) through one GCRA schedule kept in Redis, computed in a Lua script on Redis's
clock, so N replicas together stay at the configured fraction of the limit whatever N is. Each
replica holds at most one reserved turn per scope (its other requests queue locally), so a pause
or an outage never meets turns handed out long in advance; the price is one Redis round trip per
request (two when it had to wait), one after the other per scope and replica. A
``Retry-After`` or a parked quota is one Redis key with a PX expiry, and an open circuit one hash
with an expiry: learned by one replica, honoured by all.

Redis may go away: each call has short socket timeouts, and on the first failure the store is
marked unreachable (logged once) and every limiter paces locally at ``limit / expected
replicas`` (never unlimited); one call per ``retry_every`` seconds tries Redis again, and the
first that succeeds switches every limiter back (logged once).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from octopus_crm.adapters.ratelimit import Limiter, RateLimit

__all__ = ["FleetLimiter", "FleetStore", "scope_of_secret"]

T = TypeVar("T")
log = structlog.get_logger("octopus.fleet")

# KEYS: schedule, pause. ARGV: interval µs, burst tolerance µs, reserve (1) or look (0).
# Answers {wait µs before this request may go (0: now), pause left ms (0: none), tokens × 1000}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local tokens = math.floor(1000 * (tolerance + interval - (tat - now)) / interval)
if tokens < 0 then tokens = 0 end
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {0, pause, tokens} end
if ARGV[3] ~= '1' then return {0, 0, tokens} end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1000)
return {wait, 0, tokens}
"""

# KEYS: the key. ARGV: ms. Sets the key to expire in ms unless it already lives longer.
_EXTEND = """
local left = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[1])
if left >= want then return left end
redis.call('HSET', KEYS[1], 'held_ms', want)
redis.call('PEXPIRE', KEYS[1], want)
return want
"""


def scope_of_secret(kind: str, secret: str) -> str:
    """A limit scope for a vendor account known by its credential (never the credential itself)."""
    return f"{kind}:{hashlib.sha256(b'octopus-crm-fleet:' + secret.encode()).hexdigest()[:16]}"


class FleetStore:
    """The coordination Redis shared by every replica, and whether it answers right now."""

    def __init__(
        self,
        url: str,
        *,
        expected_replicas: int = 1,
        prefix: str = "octopus-crm:fleet:",
        timeout: float = 0.25,
        retry_every: float = 1.0,
    ) -> None:
        import redis.asyncio as redis
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from redis.retry import Retry

        self._redis = redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._errors: tuple[type[BaseException], ...] = (
            RedisConnectionError,
            RedisTimeoutError,
            RedisError,
            OSError,
            TimeoutError,
        )
        self.expected_replicas = max(1, expected_replicas)
        self.prefix = prefix
        self.timeout = timeout
        self.retry_every = retry_every
        self.available = True
        self._next_try = 0.0
        self._back_at = -math.inf  # when Redis last came back
        self._gcra = self._redis.register_script(_GCRA)
        self._extend = self._redis.register_script(_EXTEND)
        self._pending: set[asyncio.Task[Any]] = set()

    async def call(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """``op`` on Redis, or None (at once while Redis is known to be unreachable)."""
        if not self.available and time.monotonic() < self._next_try:
            return None
        try:
            try:
                result = await asyncio.wait_for(op(), self.timeout * 2)
            except self._errors:
                # once more at once, on a fresh connection: a pooled one from before a Redis
                # restart fails once (an unreachable Redis fails fast again: refused or timeout)
                result = await asyncio.wait_for(op(), self.timeout * 2)
        except self._errors as exc:
            self._next_try = time.monotonic() + self.retry_every
            if self.available:
                self.available = False
                log.warning(
                    "fleet limits: redis unreachable, pacing locally at limit / expected replicas",
                    error=type(exc).__name__,
                    expected_replicas=self.expected_replicas,
                )
            return None
        if not self.available:
            self.available = True
            self._back_at = time.monotonic()
            log.info("fleet limits: redis reachable again, pacing fleet-wide")
        return result

    @property
    def rejoining(self) -> bool:
        """Just back from an outage: other replicas may still pace locally for up to
        ``retry_every`` (until their next try), so keep to the local share too until then."""
        return time.monotonic() - self._back_at < 2 * self.retry_every

    def limiter(self, limit: RateLimit, scope: str) -> FleetLimiter:
        return FleetLimiter(limit, self, scope)

    # -- the limiter's calls -----------------------------------------------------------------

    async def schedule(self, scope: str, limit: RateLimit, *, reserve: bool) -> tuple[float, float, float] | None:
        """(seconds to wait, seconds paused, fleet tokens) for ``scope``; reserves a turn if asked."""
        interval = 1_000_000 / limit.rate
        keys = [f"{self.prefix}rate:{scope}", f"{self.prefix}pause:{scope}"]
        args = [round(interval), round((limit.burst - 1) * interval), 1 if reserve else 0]
        answer = await self.call(lambda: self._gcra(keys=keys, args=args))
        if answer is None:
            return None
        wait_us, pause_ms, tokens = (int(x) for x in answer)
        return wait_us / 1e6, pause_ms / 1000, tokens / 1000

    async def pause(self, scope: str, seconds: float) -> None:
        await self._hold(f"{self.prefix}pause:{scope}", seconds)

    # -- circuit breakers --------------------------------------------------------------------

    async def open_circuit(self, integration_id: str, seconds: float) -> None:
        await self._hold(f"{self.prefix}circuit:{integration_id}", seconds)

    async def close_circuit(self, integration_id: str) -> None:
        key = f"{self.prefix}circuit:{integration_id}"
        await self.call(lambda: self._redis.delete(key))

    async def circuit_open_for(self, integration_id: str) -> float | None:
        """Seconds the fleet keeps ``integration_id``'s circuit open (0: closed; None: unknown)."""
        key = f"{self.prefix}circuit:{integration_id}"
        left = await self.call(lambda: self._redis.pttl(key))
        return None if left is None else max(0, int(left)) / 1000

    async def _hold(self, key: str, seconds: float) -> None:
        ms = max(1, round(seconds * 1000))
        await self.call(lambda: self._extend(keys=[key], args=[ms]))

    def in_background(self, op: Awaitable[Any]) -> None:
        """Write without making the caller wait (the caller already acts on what it learned)."""
        task = asyncio.ensure_future(op)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=self.timeout * 4)
        await self._redis.aclose()


class FleetLimiter(Limiter):
    """A :class:`Limiter` whose turns, pauses and tokens are the fleet's (see the module doc)."""

    def __init__(self, limit: RateLimit, store: FleetStore, scope: str) -> None:
        super().__init__(limit)
        self.store = store
        self.scope = scope
        self._fallback = _Pacer(limit.rate / store.expected_replicas)
        self._tokens: float | None = None
        # One turn reserved at a time per replica: the others queue here, not in the shared
        # schedule, so a pause or an outage never meets a backlog of turns already handed out.
        self._head: asyncio.Lock | None = None

    @property
    def tokens(self) -> float | None:
        """Turns the whole fleet could take right now (last seen), None until known."""
        return self._tokens if self.store.available else None

    def slow_down(self, seconds: float) -> None:
        super().slow_down(seconds)
        self.store.in_background(self.store.pause(self.scope, seconds))

    async def refresh(self) -> None:
        """Learn the fleet's pause and tokens without taking a turn."""
        self._learn(await self.store.schedule(self.scope, self.limit, reserve=False))

    def _learn(self, answer: tuple[float, float, float] | None) -> None:
        if answer is None:
            return
        _, paused, self._tokens = answer
        if paused > 0:
            super().slow_down(paused)

    async def pace(self) -> None:
        if self._head is None:
            self._head = asyncio.Lock()
        self._waiting += 1
        try:
            async with self._head:
                await self._take_turn()
        finally:
            self._waiting -= 1

    async def _take_turn(self) -> None:
        local_turn_taken = False
        while True:
            while (wait := self.paused_for) > 0:  # noqa: ASYNC110 - a later 429 may extend the pause
                await asyncio.sleep(wait)
            answer = await self.store.schedule(self.scope, self.limit, reserve=True)
            if answer is None:  # Redis unreachable: this replica's share, locally
                await self._fallback.acquire()
                if self.paused_for <= 0:
                    return
                continue
            self._learn(answer)
            turn_in, paused, _ = answer
            if paused > 0:
                continue
            if not local_turn_taken:
                # Just back from pacing locally: not before the local turn this replica would have
                # had, and while the others may still pace locally, within the local share too.
                # Going later than a shared turn would crowd the turns after it, so the shared
                # turn is given up and a fresh one taken then (erring on the slow side).
                local = self._fallback.reserve() if self.store.rejoining else self._fallback.next_turn_in()
                if local > turn_in:
                    local_turn_taken = True
                    await asyncio.sleep(local)
                    continue
            if turn_in <= 0:
                return
            await asyncio.sleep(turn_in)
            # a replica may have met a 429 while this one waited for its turn: look before
            # going (the turn is given up if so)
            await self.refresh()
            if self.paused_for <= 0:
                return


class _Pacer:
    """Evenly spaced turns, without a burst: the first turn after an idle spell (or after the
    switch from the shared schedule, whose last turn may have just gone) waits one interval too."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate
        self._next = 0.0

    def next_turn_in(self) -> float:
        return max(0.0, self._next - time.monotonic())

    def reserve(self) -> float:
        """Take the next turn: seconds until it."""
        now = time.monotonic()
        at = self._next if self._next >= now else now + self.interval
        self._next = at + self.interval
        return at - now

    async def acquire(self) -> None:
        await asyncio.sleep(self.reserve())
