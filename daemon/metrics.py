"""Prometheus metrics, ``octopus_crm_`` prefixed, bounded labels only (never event ids)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector

from octopus_crm.daemon.version import VERSION

__all__ = [
    "BREAKER_STATE",
    "BROKER_REACHABLE",
    "BUILD_INFO",
    "COMMIT_LATENCY",
    "CONFIG_RELOAD_SUCCESS",
    "CONFIG_RELOAD_TIMESTAMP",
    "CONFIG_VERSION",
    "CONSUMED",
    "CONSUMER_LAG",
    "DELIVERIES",
    "DELIVERY_LATENCY",
    "DLQ_RECORDS",
    "EVENT_LATENCY",
    "FLEET_SHARED",
    "IN_FLIGHT",
    "LEDGER_ERRORS",
    "OUTCOMES",
    "PARKED_UNTIL",
    "PAUSED",
    "PRODUCE_ERRORS",
    "RATE_LIMIT_TOKENS",
    "RATE_LIMIT_WAIT",
    "REGISTRY",
    "RETRIES_SCHEDULED",
    "child",
]

REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process_* (CPU, memory, file descriptors, start time) and python_info series.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

BUILD_INFO = Info("octopus_crm_build", "Version of the running octopus-crm-sync.", registry=REGISTRY)
BUILD_INFO.info({"version": VERSION})

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

CONSUMED = Counter(
    "octopus_crm_events_consumed_total", "Records consumed from the input topic.", ["topic"], registry=REGISTRY
)
OUTCOMES = Counter(
    "octopus_crm_outcomes_total",
    "Results published, by integration and status.",
    ["integration", "status"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "octopus_crm_delivery_attempts_total",
    "Delivery attempts to targets, by integration and outcome (ok or error class).",
    ["integration", "type", "outcome"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "octopus_crm_delivery_duration_seconds",
    "Duration of one delivery attempt to a target, our own rate-limit wait excluded (that is "
    "octopus_crm_delivery_rate_limit_wait_seconds).",
    ["integration", "type"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RATE_LIMIT_WAIT = Histogram(
    "octopus_crm_delivery_rate_limit_wait_seconds",
    "Time one delivery attempt waited for its turn in the integration's own limiter (pace, pause, slot).",
    ["integration", "type"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVENT_LATENCY = Histogram(
    "octopus_crm_event_duration_seconds",
    "From consumption of an event to its last result being acknowledged.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("octopus_crm_in_flight_events", "Events consumed and not yet finished.", registry=REGISTRY)
PAUSED = Gauge("octopus_crm_paused_partitions", "Partitions paused by backpressure.", registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "octopus_crm_consumer_lag_records",
    "High watermark minus committed offset, per partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
DLQ_RECORDS = Counter(
    "octopus_crm_dlq_records_total",
    "Records sent to the dead-letter topic, by error class.",
    ["error_class"],
    registry=REGISTRY,
)
COMMIT_LATENCY = Histogram(
    "octopus_crm_commit_duration_seconds",
    "Duration of offset commits.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
PRODUCE_ERRORS = Counter(
    "octopus_crm_produce_errors_total", "Failed produce attempts (retried).", ["topic"], registry=REGISTRY
)
RETRIES_SCHEDULED = Counter(
    "octopus_crm_retries_scheduled_total",
    "Deliveries handed to the retry topic, by reason: retry (a failed attempt), backlog (the "
    "integration could not take it within the hand-off budget, or another copy holds it), parked "
    "(a long pause or quota), barrier (behind an earlier event of its key), sync_back.",
    ["integration", "reason"],
    registry=REGISTRY,
)
LEDGER_ERRORS = Counter(
    "octopus_crm_ledger_errors_total", "Ledger calls that failed and were retried.", ["op"], registry=REGISTRY
)
BREAKER_STATE = Gauge(
    "octopus_crm_circuit_state",
    "Circuit breaker state per integration: 0 closed, 1 half-open, 2 open.",
    ["integration"],
    registry=REGISTRY,
)
BROKER_REACHABLE = Gauge(
    "octopus_crm_broker_reachable",
    "1 while the broker answered within BROKER_TIMEOUT_S (measured at scrape time), else 0.",
    registry=REGISTRY,
)
RATE_LIMIT_TOKENS = Gauge(
    "octopus_crm_rate_limit_tokens",
    "Requests the integration's vendor limit allows right now, fleet-wide (every replica's view of one "
    "shared schedule; absent while pacing locally).",
    ["integration"],
    registry=REGISTRY,
)
PARKED_UNTIL = Gauge(
    "octopus_crm_parked_until_seconds",
    "Epoch seconds until which the integration is paused (Retry-After, parked quota), fleet-wide when "
    "shared; 0 when not paused.",
    ["integration"],
    registry=REGISTRY,
)
FLEET_SHARED = Gauge(
    "octopus_crm_fleet_limits_shared",
    "1 while vendor limits are paced fleet-wide through Redis, 0 while this replica paces locally "
    "(no fleet Redis configured, or unreachable: limit / expected replicas).",
    registry=REGISTRY,
)
CONFIG_RELOAD_SUCCESS = Gauge(
    "octopus_crm_config_last_reload_success",
    "1 if the last attempt to load the configuration file succeeded, 0 if it was refused (the running "
    "version is kept).",
    registry=REGISTRY,
)
CONFIG_RELOAD_TIMESTAMP = Gauge(
    "octopus_crm_config_last_reload_timestamp_seconds",
    "Epoch seconds of the last successful configuration load.",
    registry=REGISTRY,
)
CONFIG_VERSION = Info(
    "octopus_crm_config", "Version (SHA-256 prefix of the file) of the configuration in use.", registry=REGISTRY
)


M = TypeVar("M", Counter, Gauge, Histogram)
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, kept: per event, the lookup (a lock, a dict) cost more than the
    increment. Only for metrics whose children are never removed; their label values are bounded
    (integrations, statuses, error classes)."""
    key = (id(metric), values)
    found: M | None = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found
