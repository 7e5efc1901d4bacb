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

from octopus_crm.daemon import metrics
from octopus_crm.daemon.health import LAG_INTERVAL_S, Health
from octopus_crm.daemon.offsets import OffsetTracker
from octopus_crm.daemon.ordering import KeyedExecutor
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.settings import Settings

__all__ = ["ConsumerLoop", "Health", "WorkAbandoned", "shutdown_reserve", "unless_stopped"]

log = structlog.get_logger("octopus.consumer")


class WorkAbandoned(Exception):
    """A handler gave a record up (shutting down before it was due): leave it uncommitted."""


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
        self.health = health or Health(stall_timeout=settings.stall_timeout_s, broker_timeout=settings.broker_timeout_s)
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._executor: KeyedExecutor[InboundRecord] = KeyedExecutor(handle, self._finished)
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._stop_at: float | None = None
        self._paused = False
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._room = asyncio.Event()  # set once paused work drained to half of max_in_flight

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
                started = await unless_stopped(self._stopping, consumer.start())
            except KafkaError as exc:
                self.health.connected = False
                self.health.last_error = type(exc).__name__
                log.warning("broker unreachable, retrying", error=type(exc).__name__, retry_in=delay)
                await consumer.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            if not started:  # stopped while a hung broker kept start() waiting
                with contextlib.suppress(KafkaError, TimeoutError):
                    await asyncio.wait_for(consumer.stop(), 2.0)
                return
            consumer.subscribe(list(self.topics), listener=_Listener(self))
            self._consumer = consumer
            self.health.broker_answered()
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
                metrics.IN_FLIGHT.set(self._in_flight)
                self._apply_backpressure(consumer)
                room = max(1, self.max_in_flight - self._in_flight)
                try:
                    if self._paused:  # nothing comes until half the work drained: wait for that
                        batch = {}
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._room.wait(), 0.2)
                    else:
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
                # both wait for the broker; a stop() must not wait for them (the shutdown commits)
                if now - last_commit >= self.settings.commit_interval_s:
                    await unless_stopped(self._stopping, self.commit())
                    last_commit = now
                if now - last_lag >= LAG_INTERVAL_S:
                    await unless_stopped(self._stopping, self._update_lag(consumer))
                    last_lag = now
        except Exception as exc:
            self.health.crashed = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.health.running = False
            await self._shutdown(consumer)

    def stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stopping.set()

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        """Drain, commit and leave the group, every stage bounded so the whole fits the grace period.

        With the broker down nothing can finish: what is abandoned stays uncommitted and is
        consumed again after the restart (the ledger turns deliveries that had already succeeded
        into ``duplicate``).
        """
        grace = self.settings.grace_period_s
        stop_at = self._stop_at or time.monotonic()
        reserve = shutdown_reserve(grace)
        drain_until, close_until = stop_at + grace - reserve, stop_at + grace - reserve / 2
        log.info("stopping: finishing in-flight work", in_flight=self._in_flight, grace_s=grace)
        try:
            if not self._drained.is_set():
                await asyncio.wait_for(self._drained.wait(), max(0.0, drain_until - time.monotonic()))
        except TimeoutError:
            log.warning(
                "grace period over, abandoning unfinished work: not committed, will be redelivered",
                in_flight=self._in_flight,
                broker_reachable=self.health.broker_reachable(),
            )
        await self._executor.cancel_all()
        await self.commit(timeout=max(0.5, close_until - time.monotonic()), final=True)
        try:
            await asyncio.wait_for(consumer.stop(), max(0.5, close_until - time.monotonic()))
        except TimeoutError:
            log.warning(
                "leaving the consumer group timed out; the broker reassigns our partitions after the session timeout",
                session_timeout_ms=self.settings.session_timeout_ms,
            )
        except KafkaError as exc:
            log.warning("leaving the consumer group failed", error=type(exc).__name__)
        except asyncio.CancelledError:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise  # we are being cancelled ourselves
            # aiokafka's stop() lets its own cancelled coordinator task escape when the broker is down
            log.warning("leaving the consumer group failed: the broker is unreachable")
        self._consumer = None
        log.info("consumer stopped")

    # -- work --------------------------------------------------------------------------------

    def _dispatch(self, tp: TopicPartition, records: list[object], now: float) -> None:
        state = self._partitions.get(tp)
        if state is None or state.revoked:
            return
        metrics.child(metrics.CONSUMED, tp.topic).inc(len(records))
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

    def _finished(self, record: InboundRecord, error: Exception | None) -> None:
        # a TopicPartition is a named tuple: the plain tuple finds it (and costs less to build)
        state = self._partitions.get((record.topic, record.partition))
        if error is not None:  # not finished: stays uncommitted, comes back after a restart
            if not isinstance(error, WorkAbandoned):
                log.error("handler failed: the record stays uncommitted", error=type(error).__name__, exc_info=error)
            if state is not None:
                state.running -= 1
                self._release(1)
            return
        if state is None:  # revoked meanwhile; its slot was released by revoke()
            return
        state.tracker.done(record.offset)
        state.running -= 1
        self._release(1)
        self.health.progress()

    def _release(self, count: int) -> None:
        self._in_flight -= count  # the gauge is set once per fetch (run loop), not per event
        if self._paused and self._in_flight <= self.max_in_flight // 2:
            self._room.set()
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
            self._room.clear()
        elif self._paused and self._in_flight <= limit // 2:
            consumer.resume(*consumer.paused())
            self._paused = False
        metrics.PAUSED.set(len(consumer.paused()))

    # -- offsets and rebalances --------------------------------------------------------------

    async def commit(
        self, only: set[TopicPartition] | None = None, *, timeout: float | None = None, final: bool = False
    ) -> None:
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
            await asyncio.wait_for(consumer.commit(offsets), timeout or self.settings.broker_timeout_s)
        except (KafkaError, TimeoutError) as exc:
            if final:
                log.warning(
                    "final commit failed: events finished since the last commit will be redelivered",
                    error=type(exc).__name__,
                    partitions=len(offsets),
                )
            else:
                log.warning("commit failed; will retry", error=type(exc).__name__)
            return
        finally:
            metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)  # revoked while the commit was in flight
            if state is not None:
                state.tracker.mark_committed(offset)

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
            self.health.lag_sampled(0)
            return
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), 5.0)
        except (KafkaError, TimeoutError) as exc:
            if self.health.broker_reachable():  # else the broker probe already says so
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
        self.health.lag_sampled(total)


async def unless_stopped(stopping: asyncio.Event, work: Awaitable[None]) -> bool:
    """Await ``work`` unless ``stopping`` is set first, then cancel it: False. Its errors propagate."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stopping.wait())
    given_up = False
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            given_up = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if given_up:
        return False
    task.result()
    return True


def shutdown_reserve(grace: float) -> float:
    """The end of the grace period kept for committing, leaving the group and flushing results."""
    return min(5.0, max(1.0, grace * 0.3))


async def _committed(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    try:
        return await asyncio.wait_for(consumer.committed(tp), 5.0)
    except (KafkaError, TimeoutError):
        return None
