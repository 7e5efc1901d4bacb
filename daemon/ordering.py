"""Per-key ordering under concurrency.

Work for different keys runs concurrently; work for one key runs strictly in submission order.
There is one worker task per key that has pending work, and none for idle keys, so memory is
bounded by the work in flight, not by the number of keys ever seen.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["KeyedExecutor"]

W = TypeVar("W")


class KeyedExecutor(Generic[W]):
    """``handler`` runs each piece of work; ``finished``, if given, is told how each one ended
    (the error it raised, else ``None``; not when cancelled) — a plain call rather than a
    coroutine wrapped around the handler, which every resumption of the handler would pass
    through. Without ``finished`` a handler's error ends its key's worker (a fresh one takes
    over the key's remaining work)."""

    def __init__(
        self,
        handler: Callable[[W], Awaitable[None]],
        finished: Callable[[W, Exception | None], None] | None = None,
    ) -> None:
        self._handler = handler
        self._finished = finished
        self._queues: dict[Hashable, collections.deque[W]] = {}
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._unkeyed = 0

    @property
    def active_keys(self) -> int:
        return len(self._tasks)

    def submit(self, key: Hashable | None, work: W) -> None:
        if key is None:
            self._unkeyed += 1
            key = ("\0unkeyed", self._unkeyed)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
        queue.append(work)
        if key not in self._tasks:
            # a constant name: formatting the key into it cost about 1.5 µs per event
            self._tasks[key] = asyncio.create_task(self._drain(key, queue), name="keyed-work")

    async def _drain(self, key: Hashable, queue: collections.deque[W]) -> None:
        try:
            while queue:
                work = queue[0]
                error: Exception | None = None
                try:
                    await self._handler(work)
                except Exception as exc:
                    if self._finished is None:
                        raise
                    error = exc
                finally:
                    # Done, failed or cancelled: never run it again (a handler that raised would
                    # otherwise be retried by a fresh worker in a tight loop). cancel() may have
                    # dropped it already.
                    if queue and queue[0] is work:
                        queue.popleft()
                if self._finished is not None:
                    self._finished(work, error)
        finally:
            self._tasks.pop(key, None)
            if not queue:
                self._queues.pop(key, None)
            elif not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self._tasks[key] = asyncio.create_task(self._drain(key, queue))

    def discard(self, predicate: Callable[[W], bool]) -> list[W]:
        """Drop queued work that has not started (e.g. of revoked partitions); return it."""
        dropped: list[W] = []
        for key, queue in list(self._queues.items()):
            running = key in self._tasks
            head = [queue[0]] if running and queue else []
            rest: list[W] = []
            for work in list(queue)[len(head) :]:
                (dropped if predicate(work) else rest).append(work)
            queue.clear()
            queue.extend(head + rest)
            if not queue:
                self._queues.pop(key, None)
        return dropped

    def cancel(self, predicate: Callable[[W], bool]) -> int:
        """Cancel workers whose current work matches (abandoned after a bounded wait)."""
        cancelled = 0
        for key, task in list(self._tasks.items()):
            queue = self._queues.get(key)
            if queue and predicate(queue[0]):
                queue.popleft()  # abandoned: it must not run again when the key gets new work
                task.cancel()
                cancelled += 1
        return cancelled

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._queues.clear()
        self._tasks.clear()
