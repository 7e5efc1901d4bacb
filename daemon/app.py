"""The daemon, composed: producer → adapters → ledger → consumer → admin server; stopped in reverse.

SIGTERM or SIGINT stops fetching, lets in-flight work finish within the grace period, publishes
its results, commits and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from octopus_crm.adapters.base import Adapter
from octopus_crm.adapters.fleet import FleetStore
from octopus_crm.daemon.admin import AdminServer
from octopus_crm.daemon.broker_probe import BrokerProbe
from octopus_crm.daemon.config import ConfigFileError, CrmConfig, build_adapter, load_config
from octopus_crm.daemon.config_versions import version_of
from octopus_crm.daemon.consumer import ConsumerLoop, Health, shutdown_reserve, unless_stopped
from octopus_crm.daemon.dispatch import Dispatcher
from octopus_crm.daemon.fleet import FleetSync, open_fleet
from octopus_crm.daemon.ledger import Ledger, open_ledger
from octopus_crm.daemon.operator_errors import IdempotenceRefused, refused_idempotence
from octopus_crm.daemon.partitioner import partition
from octopus_crm.daemon.processing import Processor
from octopus_crm.daemon.published import PublishedResults
from octopus_crm.daemon.reload import ConfigReloader, record_loaded
from octopus_crm.daemon.reporting import Reporter
from octopus_crm.daemon.retry_handler import RetryHandler
from octopus_crm.daemon.settings import Settings
from octopus_crm.daemon.topics import create_topics
from octopus_crm.strategies.routing import plan

__all__ = ["Daemon", "run_daemon"]

log = structlog.get_logger("octopus.app")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        config: CrmConfig,
        *,
        ledger: Ledger | None = None,
        adapters: Mapping[str, Adapter] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.health = Health(stall_timeout=settings.stall_timeout_s, broker_timeout=settings.broker_timeout_s)
        self.retry_health = Health(
            stall_timeout=settings.stall_timeout_s, broker_timeout=settings.broker_timeout_s, watch_lag=False
        )
        self.ledger = ledger
        self._adapters = dict(adapters) if adapters is not None else None
        self.consumer: ConsumerLoop | None = None
        self.retry_consumer: ConsumerLoop | None = None
        self.retry_handler: RetryHandler | None = None
        self.admin: AdminServer | None = None
        self.version = version_of(settings.config_path, settings.config_overlay_path)
        self.reloader: ConfigReloader | None = None
        self.dispatcher: Dispatcher | None = None
        self.processor: Processor | None = None
        self.reporter: Reporter | None = None
        self._build_dispatcher: Callable[[CrmConfig, Mapping[str, Adapter]], Dispatcher] | None = None
        self._live: dict[str, Adapter] = {}
        self._fleet: FleetStore | None = None
        self._fleet_sync: asyncio.Task[None] | None = None
        self._retired: list[asyncio.Task[None]] = []
        self._stop_requested = asyncio.Event()
        self._stop_at: float | None = None

    def request_stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop_requested.set()
        for loop in (self.consumer, self.retry_consumer):
            if loop is not None:
                loop.stop()
        if self.retry_handler is not None:
            self.retry_handler.stop()

    async def _start_producer(self, stack: contextlib.AsyncExitStack) -> AIOKafkaProducer | None:
        """Start the producer, retrying while the broker is unreachable; None if told to stop."""
        s = self.settings
        delay = 0.5
        while True:
            producer = AIOKafkaProducer(
                **s.kafka_common(),
                acks="all",
                enable_idempotence=s.producer_idempotence,
                linger_ms=s.producer_linger_ms,
                max_request_size=s.max_request_size,
                compression_type=None,
                partitioner=partition,
            )
            try:
                started = await unless_stopped(self._stop_requested, producer.start())
            except KafkaError as exc:
                await producer.stop()
                if s.producer_idempotence and refused_idempotence(exc):
                    raise IdempotenceRefused(s.bootstrap_servers, type(exc).__name__) from None
                self.health.last_error = type(exc).__name__
                log.warning("broker unreachable for producer, retrying", error=type(exc).__name__, retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), delay)
                if self._stop_requested.is_set():
                    return None
                delay = min(delay * 2, 30.0)
                continue
            if not started:  # stopped while a hung broker kept start() waiting
                await self._stop_producer(producer)
                return None
            stack.push_async_callback(self._stop_producer, producer)
            return producer

    async def _stop_producer(self, producer: AIOKafkaProducer) -> None:
        """Flush what is queued, but only until the grace period ends: with the broker down the
        flush never completes, and what it holds belongs to uncommitted events (redelivered)."""
        grace = self.settings.grace_period_s
        deadline = (self._stop_at or time.monotonic()) + grace
        timeout = max(shutdown_reserve(grace) / 2, deadline - time.monotonic())
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except TimeoutError:
            log.warning(
                "producer flush timed out: unsent results and dead letters abandoned;"
                " their events are not committed and will be redelivered",
                timeout_s=round(timeout, 1),
            )
        except KafkaError as exc:
            log.warning("producer flush failed; its events are not committed and will be redelivered", error=str(exc))

    async def run(self) -> None:
        s = self.settings
        try:
            admin_token = s.admin_bearer()
        except ValueError as exc:  # a token file that is configured but unreadable: refuse to start
            raise ConfigFileError([("OCTOPUS_CRM_ADMIN_TOKEN_FILE", str(exc))], "settings") from None
        async with contextlib.AsyncExitStack() as stack:
            self.admin = AdminServer(
                health=self.health,
                also_alive=(self.retry_health,),
                config=self.config,
                host=s.metrics_host,
                port=s.metrics_port,
                api_host=s.admin_host,
                api_port=s.admin_port,
                token=admin_token,
                test_connections_per_minute=s.admin_test_connections_per_minute,
                config_path=s.config_path,
                config_overlay_path=s.config_overlay_path,
            )
            await self.admin.start()
            stack.push_async_callback(self.admin.stop)
            log.info(
                "admin server listening",
                port=self.admin.port,
                api=f"{self.admin.api_host}:{self.admin.api_port}",
                api_auth="bearer token" if self.admin.token else "none (loopback only)",
            )

            adapters = self._adapters
            if adapters is None:
                adapters = {i.id: build_adapter(i) for i in self.config.enabled}
            fleet = open_fleet(s)
            if fleet is not None:
                stack.push_async_callback(fleet.close)
                for adapter in adapters.values():
                    adapter.fleet = adapter.fleet or fleet
            self._fleet = fleet
            stack.push_async_callback(self._close_adapters)
            for adapter in adapters.values():
                await adapter.start()
                self._live[adapter.integration_id] = adapter
            ledger = self.ledger or open_ledger(s.ledger_url)
            stack.push_async_callback(ledger.close)

            if s.create_topics:
                kafka = {k: v for k, v in s.kafka_common().items() if k != "bootstrap_servers"}
                await create_topics(
                    s.bootstrap_servers,
                    [s.input_topic, s.results_topic, s.dlq_topic, s.retry_topic],
                    s.topic_partitions,
                    **kafka,  # SASL/SSL too: a secured cluster refuses an anonymous admin client
                )
            producer = await self._start_producer(stack)
            if producer is None:
                return
            probe = BrokerProbe(
                producer.client,
                [s.input_topic, s.retry_topic, s.results_topic, s.dlq_topic],
                [self.health, self.retry_health],
                interval=s.broker_probe_interval_s,
                timeout=max(1.0, min(s.broker_probe_interval_s, s.broker_timeout_s)),
            )
            probing = asyncio.create_task(probe.run(), name="broker-probe")
            stack.push_async_callback(_cancel, probing)
            reporter = Reporter(
                producer, results_topic=s.results_topic, dlq_topic=s.dlq_topic, retry_topic=s.retry_topic
            )
            published = PublishedResults(s.results_topic, s.kafka_common())
            stack.push_async_callback(published.close)

            def build_dispatcher(config: CrmConfig, adapters: Mapping[str, Adapter]) -> Dispatcher:
                return Dispatcher(config, adapters, ledger, published.contains, fleet)

            self._build_dispatcher = build_dispatcher
            dispatcher = self.dispatcher = build_dispatcher(self.config, adapters)
            self._fleet_sync = asyncio.create_task(FleetSync(adapters, dispatcher.breakers, fleet).run())
            stack.push_async_callback(self._stop_fleet_sync)
            reporter.config_version = self.version
            self.reporter = reporter
            processor = self.processor = Processor(
                planner=lambda event: plan(self.config, event),
                dispatcher=dispatcher,
                reporter=reporter,
                max_value_bytes=s.max_value_bytes,
            )
            self.admin.adapters = adapters
            self.admin.dispatcher = dispatcher
            self.admin.version = self.version
            self.consumer = ConsumerLoop(s, processor.handle, health=self.health)
            self.retry_handler = RetryHandler(dispatcher, reporter)
            self.retry_consumer = ConsumerLoop(
                s,
                self.retry_handler.handle,
                topics=(s.retry_topic,),
                group_id=f"{s.group_id}.retry",
                max_in_flight=s.retry_max_in_flight,
                health=self.retry_health,
            )
            record_loaded(self.version)
            self.reloader = ConfigReloader(
                s.config_path,
                self._swap,
                overlay_path=s.config_overlay_path,
                version=self.version,
                interval=s.config_watch_interval_s,
            )
            self.admin.reloader = self.reloader
            watching = asyncio.create_task(self.reloader.run(), name="config-watch")
            stack.push_async_callback(_cancel, watching)
            self.reloader.install_sighup()
            if self._stop_requested.is_set():
                return
            log.info(
                "daemon starting",
                topic=s.input_topic,
                group=s.group_id,
                integrations=sorted(adapters),
                max_in_flight=s.max_in_flight,
            )
            await _run_together(self.consumer, self.retry_consumer)
        log.info("daemon stopped")

    async def _swap(self, config: CrmConfig, version: str) -> None:
        """Swap a new configuration version in between events.

        Unchanged integrations keep their adapter (its limiter, connections) and circuit breaker;
        changed or new ones get a started adapter. The swap itself is one synchronous step: an
        event plans and dispatches with one version, and work in flight finishes on the version it
        started with (its dispatcher and adapters stay alive; replaced adapters close after the
        grace period). The consumers are not touched: no rebalance."""
        assert self._build_dispatcher is not None and self.dispatcher is not None
        old = self.dispatcher
        adapters: dict[str, Adapter] = {}
        started: list[Adapter] = []
        try:
            for integration in config.enabled:
                current = self._live.get(integration.id)
                try:
                    unchanged = current is not None and self.config.integration(integration.id) == integration
                except KeyError:
                    unchanged = False
                if unchanged and current is not None:
                    adapters[integration.id] = current
                    continue
                adapter = build_adapter(integration)
                adapter.fleet = adapter.fleet or self._fleet
                await adapter.start()
                started.append(adapter)
                adapters[integration.id] = adapter
        except BaseException:
            for adapter in started:
                await adapter.aclose()
            raise
        dispatcher = self._build_dispatcher(config, adapters)
        for integration_id, adapter in adapters.items():
            if old.adapters.get(integration_id) is adapter:
                dispatcher.breakers[integration_id] = old.breakers[integration_id]
        retired = [a for i, a in self._live.items() if adapters.get(i) is not a]
        # -- the swap: no await from here to the end --
        self.config = config
        self.version = version
        self.dispatcher = dispatcher
        self._live = dict(adapters)
        if self.processor is not None:
            self.processor.dispatcher = dispatcher
        if self.retry_handler is not None:
            self.retry_handler.dispatcher = dispatcher
        if self.reporter is not None:
            self.reporter.config_version = version
        if self.admin is not None:
            self.admin.config, self.admin.adapters, self.admin.dispatcher = config, adapters, dispatcher
            self.admin.version = version
        if self._fleet_sync is not None:
            self._fleet_sync.cancel()
        self._fleet_sync = asyncio.create_task(FleetSync(adapters, dispatcher.breakers, self._fleet).run())
        if retired:
            self._retired.append(asyncio.create_task(self._retire(retired)))

    async def _retire(self, adapters: list[Adapter]) -> None:
        """Close replaced adapters once work that started on them has had the grace period."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), max(self.settings.grace_period_s, 30.0))
        finally:
            for adapter in adapters:
                await adapter.aclose()

    async def _stop_fleet_sync(self) -> None:
        if self._fleet_sync is not None:
            await _cancel(self._fleet_sync)

    async def _close_adapters(self) -> None:
        for task in self._retired:
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        for adapter in self._live.values():
            await adapter.aclose()


async def _run_together(*loops: ConsumerLoop) -> None:
    """Run the loops; if one fails, stop the others (draining them) and re-raise."""
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for loop in loops:
            loop.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signame: str) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("signal received, shutting down gracefully", signal=signame)
            daemon.request_stop()
        else:
            log.warning("second signal, exiting now", signal=signame)
            raise SystemExit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)


async def run_daemon(settings: Settings, *, overlay: Mapping[str, Any] | None = None) -> None:
    config = load_config(settings.config_path, overlay_path=settings.config_overlay_path, overlay=overlay)
    daemon = Daemon(settings, config)
    install_signal_handlers(daemon)
    await daemon.run()
