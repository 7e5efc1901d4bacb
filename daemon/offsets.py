"""Per-partition offset tracking: commit only the contiguous prefix of finished offsets.

Events finish out of order (many in flight, different keys); the committable offset of a
partition is one past the highest offset below which every offset has finished.
"""

from __future__ import annotations

import collections

__all__ = ["OffsetTracker"]


class OffsetTracker:
    __slots__ = ("_done", "_pending", "committable", "committed")

    def __init__(self) -> None:
        self._pending: collections.deque[int] = collections.deque()
        self._done: set[int] = set()
        self.committable: int | None = None
        self.committed: int | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, offset: int) -> None:
        """Record a consumed offset (offsets arrive in increasing order per partition)."""
        self._pending.append(offset)

    def done(self, offset: int) -> None:
        self._done.add(offset)
        pending, finished = self._pending, self._done
        while pending and pending[0] in finished:
            head = pending.popleft()
            finished.discard(head)
            self.committable = head + 1

    def to_commit(self) -> int | None:
        """The offset to commit now, or None when nothing new finished since the last commit."""
        if self.committable is None or self.committable == self.committed:
            return None
        return self.committable

    def mark_committed(self, offset: int) -> None:
        self.committed = offset
