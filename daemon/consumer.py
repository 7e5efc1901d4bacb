"""Consuming: the only user of the Kafka consumer. Owns offsets, pause/resume and rebalances.

Records are handed to a per-key ordered executor; many are in flight at once, bounded by
``max_in_flight``. When the bound is reached every assigned partition is paused (the fetcher stops
prefetching) and resumed when half the work has drained, so memory stays bounded however large the
backlog. Per partition only the contiguous prefix of finished offsets is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from daemon import metrics
from daemon.offsets import OffsetTracker
from daemon.ordering import KeyedExecutor
from daemon.records import InboundRecord
from daemon.settings import Settings

__all__ = ["ConsumerLoop", "Health", "WorkAbandoned"]

log = structlog.get_logger("octopus.consumer")


class WorkAbandoned(Exception):
    """A handler gave a record up (shutting down before it was due): leave it uncommitted."""


@dataclass
class Health:
    """What ``/healthz`` and ``/readyz`` report."""

    stall_timeout: float = 300.0
    connected: bool = False
    joined: bool = False
    assigned: int = 0
    running: bool = False
    crashed: str | None = None
    last_progress: float = field(default_factory=time.monotonic)
    lag: int = 0
    last_error: str | None = None
    watch_lag: bool = True  # the retry topic's lag is waiting work by design, not a stall

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        if self.crashed:
            return False, f"consumer loop crashed: {self.crashed}"
        idle_for = time.monotonic() - self.last_progress
        if self.watch_lag and self.running and self.lag > 0 and idle_for > self.stall_timeout:
            return False, f"stuck: no progress for {idle_for:.0f}s while lag is {self.lag}"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.connected:
            return False, f"broker not connected{f': {self.last_error}' if self.last_error else ''}"
        if not self.joined:
            return False, "not yet a member of the consumer group"
        return True, f"{self.assigned} partitions assigned"


@dataclass
class _Partition:
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    running: int = 0
    revoked: bool = False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._loop.assign(set(assigned))


class ConsumerLoop:
    def __init__(
        self,
        settings: Settings,
        handle: Callable[[InboundRecord], Awaitable[None]],
        *,
        topics: tuple[str, ...] | None = None,
        group_id: str | None = None,
        max_in_flight: int | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics or (settings.input_topic,)
        self.group_id = group_id or settings.group_id
        self.max_in_flight = max_in_flight or settings.max_in_flight
        self.handle = handle
        self.health = health or Health(stall_timeout=settings.stall_timeout_s)
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._executor: KeyedExecutor[InboundRecord] = KeyedExecutor(self._work)
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._paused = False
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- lifecycle ---------------------------------------------------------------------------

    def _make_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **s.kafka_common(),
            group_id=self.group_id,
            group_instance_id=(
                f"{s.group_instance_id}{self.group_id.removeprefix(s.group_id)}" if s.group_instance_id else None
            ),
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            rebalance_timeout_ms=s.rebalance_timeout_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=max(1024 * 1024, s.max_value_bytes * 2),
            fetch_max_bytes=max(16 * 1024 * 1024, s.max_value_bytes * 4),
        )

    async def connect(self) -> None:
        """Start the consumer, retrying with backoff while the broker is unreachable."""
        delay = 0.5
        while not self._stopping.is_set():
            consumer = self._make_consumer()
            try:
                await consumer.start()
            except KafkaError as exc:
                self.health.connected = False
                self.health.last_error = type(exc).__name__
                log.warning("broker unreachable, retrying", error=type(exc).__name__, retry_in=delay)
                await consumer.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            consumer.subscribe(list(self.topics), listener=_Listener(self))
            self._consumer = consumer
            self.health.connected = True
            self.health.last_error = None
            return

    async def run(self) -> None:
        """Fetch and dispatch until :meth:`stop`; then drain, commit and leave the group."""
        await self.connect()
        consumer = self._consumer
        if consumer is None:
            return
        self.health.running = True
        last_commit = last_lag = time.monotonic()
        try:
            while not self._stopping.is_set():
                self._apply_backpressure(consumer)
                room = max(1, self.max_in_flight - self._in_flight)
                try:
                    batch = await consumer.getmany(timeout_ms=200, max_records=min(room, 500))
                    self.health.connected = True
                except KafkaError as exc:
                    self.health.connected = False
                    self.health.last_error = type(exc).__name__
                    log.warning("fetch failed", error=type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                now = time.monotonic()
                for tp, records in batch.items():
                    self._dispatch(tp, records, now)
                if now - last_commit >= self.settings.commit_interval_s:
                    await self.commit()
                    last_commit = now
                if now - last_lag >= 5.0:
                    await self._update_lag(consumer)
                    last_lag = now
        except Exception as exc:
            self.health.crashed = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.health.running = False
            await self._shutdown(consumer)

    def stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        grace = self.settings.grace_period_s
        log.info("stopping: finishing in-flight work", in_flight=self._in_flight, grace_s=grace)
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            log.warning("grace period over, abandoning unfinished work", in_flight=self._in_flight)
        await self._executor.cancel_all()
        await self.commit()
        await consumer.stop()
        self._consumer = None
        log.info("consumer stopped")

    # -- work --------------------------------------------------------------------------------

    def _dispatch(self, tp: TopicPartition, records: list[object], now: float) -> None:
        state = self._partitions.get(tp)
        if state is None or state.revoked:
            return
        metrics.CONSUMED.labels(tp.topic).inc(len(records))
        self.health.progress()
        for raw in records:
            record = InboundRecord(
                topic=raw.topic,  # type: ignore[attr-defined]
                partition=raw.partition,  # type: ignore[attr-defined]
                offset=raw.offset,  # type: ignore[attr-defined]
                key=raw.key,  # type: ignore[attr-defined]
                value=raw.value,  # type: ignore[attr-defined]
                headers=tuple(raw.headers or ()),  # type: ignore[attr-defined]
                timestamp_ms=raw.timestamp,  # type: ignore[attr-defined]
                received_at=now,
            )
            state.tracker.add(record.offset)
            state.running += 1
            self._in_flight += 1
            self._drained.clear()
            self._executor.submit((record.topic, record.key) if record.key is not None else None, record)
        metrics.IN_FLIGHT.set(self._in_flight)

    async def _work(self, record: InboundRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        try:
            await self.handle(record)
        except WorkAbandoned:  # not finished: stays uncommitted, comes back after a restart
            if (state := self._partitions.get(tp)) is not None:
                state.running -= 1
                self._release(1)
            return
        state = self._partitions.get(tp)
        if state is None:  # revoked meanwhile; its slot was released by revoke()
            return
        state.tracker.done(record.offset)
        state.running -= 1
        self._release(1)
        self.health.progress()

    def _release(self, count: int) -> None:
        self._in_flight -= count
        metrics.IN_FLIGHT.set(self._in_flight)
        if self._in_flight <= 0:
            self._in_flight = 0
            self._drained.set()

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        limit = self.max_in_flight
        assigned = consumer.assignment()
        if self._in_flight >= limit:
            to_pause = [tp for tp in assigned if tp not in consumer.paused()]
            if to_pause:
                consumer.pause(*to_pause)
            self._paused = True
        elif self._paused and self._in_flight <= limit // 2:
            consumer.resume(*consumer.paused())
            self._paused = False
        metrics.PAUSED.set(len(consumer.paused()))

    # -- offsets and rebalances --------------------------------------------------------------

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {
            tp: offset
            for tp, state in self._partitions.items()
            if (only is None or tp in only) and (offset := state.tracker.to_commit()) is not None
        }
        if not offsets:
            return
        started = time.perf_counter()
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("commit failed; will retry", error=type(exc).__name__)
            return
        finally:
            metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
        for tp, offset in offsets.items():
            self._partitions[tp].tracker.mark_committed(offset)

    def assign(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._partitions.setdefault(tp, _Partition())
        self.health.joined = True
        self.health.assigned = len(self._partitions)
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Stop taking work for ``revoked``, finish or abandon theirs (bounded), commit."""
        states = {tp: self._partitions[tp] for tp in revoked if tp in self._partitions}
        if not states:
            return
        for state in states.values():
            state.revoked = True

        def of_revoked(record: InboundRecord) -> bool:
            return TopicPartition(record.topic, record.partition) in states

        dropped = self._executor.discard(of_revoked)
        for record in dropped:  # never started; the next owner will consume it again
            states[TopicPartition(record.topic, record.partition)].running -= 1
        self._release(len(dropped))
        deadline = time.monotonic() + self.settings.revoke_timeout_s
        while any(s.running > 0 for s in states.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # bounded wait inside the rebalance callback
        abandoned = self._executor.cancel(of_revoked)
        self._release(sum(s.running for s in states.values()))
        await self.commit(set(states))
        for tp in states:
            self._partitions.pop(tp, None)
            with contextlib.suppress(KeyError):  # no lag sample yet for this partition
                metrics.CONSUMER_LAG.remove(tp.topic, str(tp.partition))
        self.health.assigned = len(self._partitions)
        log.info(
            "partitions revoked",
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in states),
            dropped_queued=len(dropped),
            abandoned=abandoned,
        )

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag from the broker's end offsets (ListOffsets), not the fetcher, which may be stuck."""
        tps = [tp for tp in self._partitions if tp in consumer.assignment()]
        if not tps:
            self.health.lag = 0
            return
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), 5.0)
        except (KafkaError, TimeoutError) as exc:
            log.warning("end offsets unavailable", error=type(exc).__name__)
            return
        total = 0
        for tp, end in ends.items():
            state = self._partitions.get(tp)
            if state is None:
                continue
            committed = state.tracker.committed
            if committed is None:
                committed = await _committed(consumer, tp)
                if committed is not None:
                    state.tracker.mark_committed(committed)
            lag = max(0, end - (committed or 0))
            total += lag
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
        self.health.lag = total


async def _committed(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    try:
        return await consumer.committed(tp)  # type: ignore[no-any-return]
    except KafkaError:
        return None

