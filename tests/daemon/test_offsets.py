"""Offset tracking: only the contiguous prefix of finished offsets is ever committed."""

from __future__ import annotations

import random

from octopus_crm.daemon.offsets import OffsetTracker


def tracker_with(*offsets: int) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.add(offset)
    return tracker


def test_nothing_to_commit_until_the_first_offset_finishes() -> None:
    tracker = tracker_with(10, 11, 12)
    assert tracker.to_commit() is None
    tracker.done(11)
    tracker.done(12)
    assert tracker.to_commit() is None  # 10 still running: committing 13 would lose it
    tracker.done(10)
    assert tracker.to_commit() == 13
    assert len(tracker) == 0


def test_out_of_order_completion_advances_only_the_contiguous_prefix() -> None:
    tracker = tracker_with(0, 1, 2, 3, 4)
    tracker.done(0)
    assert tracker.to_commit() == 1
    tracker.done(2)
    tracker.done(4)
    assert tracker.to_commit() == 1
    tracker.done(1)
    assert tracker.to_commit() == 3
    assert len(tracker) == 2
    tracker.done(3)
    assert tracker.to_commit() == 5


def test_gaps_in_offsets_are_fine() -> None:
    # Compacted topics and transaction markers leave holes in the offsets we see.
    tracker = tracker_with(5, 9, 20)
    tracker.done(9)
    tracker.done(5)
    assert tracker.to_commit() == 10
    tracker.done(20)
    assert tracker.to_commit() == 21


def test_to_commit_reports_each_position_once() -> None:
    tracker = tracker_with(0, 1, 2)
    tracker.done(0)
    assert tracker.to_commit() == 1
    tracker.mark_committed(1)
    assert tracker.to_commit() is None
    tracker.done(1)
    tracker.done(2)
    assert tracker.to_commit() == 3
    tracker.mark_committed(3)
    assert tracker.to_commit() is None
    assert tracker.committed == 3


def test_a_failed_commit_is_offered_again() -> None:
    tracker = tracker_with(0)
    tracker.done(0)
    assert tracker.to_commit() == 1
    # commit failed: mark_committed is not called, so the next round retries it
    assert tracker.to_commit() == 1


def test_random_completion_order_never_commits_past_an_unfinished_offset() -> None:
    rng = random.Random(7)
    offsets = list(range(200))
    tracker = tracker_with(*offsets)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for offset in order:
        tracker.done(offset)
        finished.add(offset)
        position = tracker.to_commit()
        expected = next((o for o in offsets if o not in finished), 200)
        assert (position or 0) == expected
    assert tracker.to_commit() == 200
    assert len(tracker) == 0
