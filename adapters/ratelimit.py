"""Per-integration rate limiting: pace requests just under the vendor's limit.

One :class:`Limiter` per integration instance (per credentials), created inside the running loop.
Requests are spaced evenly (a leaky bucket with a burst of ``burst``) at ``headroom`` of the
documented rate, because a bucket that allows a full burst on top of a full rate sends twice the
limit in one window. A 429 or a vendor quota signal pauses only this integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType

from aiolimiter import AsyncLimiter

from octopus_crm.core.policies import RateLimit

__all__ = ["Limiter", "RateLimit", "waits_measured"]

# Seconds this task spent waiting in limiters (its turn in the pace, a pause, a slot), when a
# caller asked to know: the time a delivery took minus this is the vendor's own latency.
_waited: ContextVar[list[float] | None] = ContextVar("octopus_limiter_waited", default=None)


class _WaitsMeasured:
    # A plain context manager: entered once per delivery attempt, where a generator-based one
    # costs about a microsecond more.
    __slots__ = ("_token", "_waited")

    def __enter__(self) -> list[float]:
        self._waited: list[float] = []
        self._token = _waited.set(self._waited)
        return self._waited

    def __exit__(self, *exc: object) -> None:
        _waited.reset(self._token)


def waits_measured() -> _WaitsMeasured:
    """Collect, in the list it yields, every limiter wait of the code run inside (this task)."""
    return _WaitsMeasured()


def _note_wait(since: float) -> None:
    waited = _waited.get()
    if waited is not None:
        waited.append(time.monotonic() - since)


@dataclass
class _Pause:
    until: float = 0.0


class Limiter:
    """Async context manager: ``async with limiter:`` around each vendor request."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        # Read on every admission check: RateLimit.rate is a computed property (~0.4 µs a read).
        self._rate = limit.rate
        self._concurrency = limit.concurrency
        self._bucket = AsyncLimiter(limit.burst, limit.burst / limit.rate)
        # The concurrency slots: free ones, and the queue of those waiting (FIFO). A slot given
        # back goes straight to the first live waiter; asyncio.Semaphore instead scans past every
        # waiter already woken but not yet run (tens per release with hundreds queued).
        self._free = limit.concurrency
        self._queue: deque[asyncio.Future[None]] = deque()
        self._pause = _Pause()
        self._waiting = 0
        self._service = 0.0  # smoothed seconds a request holds its slot; 0.0 until one finished
        # Start times of the requests begun, oldest first, from the oldest still in progress on:
        # request n's is at n - _first; one that ended is -1.0 until it reaches the front. The
        # oldest is read in O(1) (a dict popped from the front is scanned over its deleted entries
        # on every read) and a request's token is a plain int.
        self._started: deque[float] = deque()
        self._first = 0
        self._in_progress = 0
        self._promised: deque[float] = deque()  # admitted by serves_within, not yet pacing: expiry
        # A subclass that paces elsewhere (the fleet's shared schedule) always goes through pace().
        self._local_pace = type(self).pace is Limiter.pace

    def turn_in(self, ahead: int = 0) -> float:
        """Seconds until a request queued now (behind ``ahead`` more) would pass the pace, from
        the pause, the bucket's level and the requests already waiting; no request's duration is
        guessed: before the first answer, the oldest request's age stands for a request's time."""
        return self._turn_in(time.monotonic(), ahead)

    def admits(self, budget: float) -> bool:
        """``expected_latency <= budget and serves_within(budget)``, in one pass over the state
        (the question the dispatcher asks of every fresh delivery)."""
        now = time.monotonic()
        service = self._service
        if self._in_progress:  # _service_time's answer, inline
            service = max(service, now - self._started[0])
        if service and self._waiting / min(self._rate, self._concurrency / service) + service > budget:
            return False
        if self._turn_in(now, 0, service) > budget:
            return False
        self._promised.append(now + budget + 1.0)
        return True

    def _turn_in(self, now: float, ahead: int, service: float | None = None) -> float:
        while self._promised and self._promised[0] < now:
            self._promised.popleft()
        queued = self._waiting + len(self._promised) + ahead
        bucket = self._bucket
        rate = self._rate
        level = max(0.0, bucket._level - (asyncio.get_running_loop().time() - bucket._last_check) * rate)
        pacing = max(0.0, level + queued + 1 - bucket.max_rate) / rate
        busy = self._in_progress + queued - self._concurrency + 1
        slot = 0.0
        if busy > 0:
            slot = busy * (self._service_time(now) if service is None else service) / self._concurrency
        return max(0.0, self._pause.until - now) + max(pacing, slot)

    def _service_time(self, now: float) -> float:
        """Seconds a request holds its slot: the smoothed time of those answered, or the age of
        the oldest one in progress when that is longer (the only fact before the first answer:
        a vendor that hangs from the start is seen hanging as soon as that age passes a budget)."""
        if self._in_progress:
            return max(self._service, now - self._started[0])
        return self._service

    def serves_within(self, budget: float) -> bool:
        """Whether a request queued now gets its turn within ``budget`` seconds. A yes holds the
        turn for the caller briefly (until its request starts pacing, at most ``budget`` + 1 s),
        so that many callers asking at once are not all told yes. Takes no capacity."""
        if self.turn_in() > budget:
            return False
        self._promised.append(time.monotonic() + budget + 1.0)
        return True

    def _arrive(self) -> None:
        """A request starts waiting: it takes over the turn serves_within promised (most likely to it)."""
        self._waiting += 1
        if self._promised:
            self._promised.popleft()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._pause.until - time.monotonic())

    def slow_down(self, seconds: float) -> None:
        """Hold every request of this integration for ``seconds`` (429, Retry-After, quota)."""
        self._pause.until = max(self._pause.until, time.monotonic() + max(seconds, 0.0))

    @property
    def tokens(self) -> float | None:
        """Turns free right now across the fleet (see ``octopus_crm.adapters.fleet``); None for a local limiter."""
        return None

    async def refresh(self) -> None:
        """Catch up with state kept elsewhere (a fleet-wide pause); a local limiter has none."""

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Around one request holding its slot: feeds :attr:`expected_latency`."""
        token = self.began()
        try:
            yield
        finally:
            self.ended(token)

    def began(self) -> int:
        """One request holding its slot starts (what :meth:`timed` does, as two plain calls);
        pass what it returns to :meth:`ended`."""
        started = self._started
        started.append(time.monotonic())
        self._in_progress += 1
        return self._first + len(started) - 1

    def ended(self, token: int) -> None:
        started = self._started
        at = token - self._first
        took = time.monotonic() - started[at]
        started[at] = -1.0
        self._in_progress -= 1
        while started and started[0] < 0.0:
            started.popleft()
            self._first += 1
        self._service = took if self._service == 0.0 else self._service + 0.1 * (took - self._service)

    @property
    def expected_latency(self) -> float:
        """Seconds until a request queued now would be answered: its wait for a turn (the backlog
        over what this integration drains per second: its paced rate, or its concurrency over one
        request's time) plus one request's time. A request's time is the smoothed one, or the age
        of the oldest request in progress when that is longer (before the first answer, that age
        is all there is to go by)."""
        service = self._service_time(time.monotonic())
        if service == 0.0:
            return 0.0
        return self._waiting / min(self._rate, self._concurrency / service) + service

    def _turn_now(self) -> bool:
        """Take this request's turn in the rate on the spot, as AsyncLimiter.acquire would (without
        its coroutine, second leak and wake-up pass), when the bucket has room, nobody is queued in
        it and no pause holds; False: the request must wait in :meth:`pace`."""
        bucket = self._bucket
        until = self._pause.until
        if bucket._waiters or (until and until > time.monotonic()):
            return False
        # AsyncLimiter.has_capacity's leak, inline (its loop property and two calls cost more
        # than the arithmetic).
        now = asyncio.get_running_loop().time()
        level = bucket._level
        if level:
            level = max(level - (now - bucket._last_check) * bucket._rate_per_sec, 0)
        bucket._last_check = now
        if level + 1 > bucket.max_rate:
            bucket._level = level
            return False
        bucket._level = level + 1
        return True

    async def pace(self) -> None:
        """Wait for this request's turn in the rate (and for any pause to end)."""
        if self._turn_now():
            return  # no wait to note
        self._waiting += 1
        since = time.monotonic()
        try:
            while (wait := self.paused_for) > 0:  # noqa: ASYNC110 - a later 429 may extend the pause
                await asyncio.sleep(wait)
            await self._bucket.acquire()
        finally:
            self._waiting -= 1
            _note_wait(since)

    async def _wait_for_slot(self) -> None:
        """Queue for a slot, counted as waiting and the wait noted."""
        self._arrive()
        since = time.monotonic()
        try:
            if self._free > 0 and not self._queue:
                self._free -= 1
                return
            slot = asyncio.get_running_loop().create_future()
            self._queue.append(slot)
            try:
                await slot
            except asyncio.CancelledError:
                if slot.done() and not slot.cancelled():
                    self.release()  # handed this slot as the task was cancelled: pass it on
                raise
        finally:
            self._waiting -= 1
            _note_wait(since)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``concurrency`` slots (without pacing)."""
        await self._wait_for_slot()
        try:
            yield
        finally:
            self.release()

    def take(self) -> bool:
        """What :meth:`acquire` does when it would not wait (a free slot nobody queues for, and
        this request's turn on the spot), without a coroutine; False: nothing taken, await
        :meth:`acquire`."""
        if self._free > 0 and not self._queue and self._local_pace and self._turn_now():
            self._free -= 1
            if self._promised:
                self._promised.popleft()
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot and this request's turn in the rate (``async with`` does it, and
        :meth:`release` after the request)."""
        if self._free > 0 and not self._queue:
            # A free slot nobody queues for is taken without suspending: no wait to note, nobody
            # sees _waiting.
            self._free -= 1
            if self._promised:
                self._promised.popleft()
        else:
            await self._wait_for_slot()
        if self._local_pace and self._turn_now():
            return
        try:
            await self.pace()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give back the slot :meth:`acquire` took: to the first live waiter, else to the free ones."""
        queue = self._queue
        while queue:
            slot = queue.popleft()
            if not slot.done():  # a cancelled waiter's is done
                slot.set_result(None)
                return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
