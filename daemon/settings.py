"""Daemon settings: Kafka, topics, concurrency, ports, timeouts.

Read from ``OCTOPUS_CRM_*`` environment variables (and, for secrets, from files in
``OCTOPUS_CRM_SECRETS_DIR``, default ``/run/secrets``), overridden by command-line flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

_SECRETS_DIR = os.environ.get("OCTOPUS_CRM_SECRETS_DIR", "/run/secrets")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OCTOPUS_CRM_",
        secrets_dir=_SECRETS_DIR if Path(_SECRETS_DIR).is_dir() else None,
        extra="ignore",
        frozen=True,
    )

    # Kafka
    bootstrap_servers: str = "localhost:9092"
    input_topic: str = "octopus.messages.classified"
    results_topic: str = "octopus.crm.sync-results"
    dlq_topic: str = "octopus.crm.dlq"
    retry_topic: str = "octopus.crm.retry"
    group_id: str = "octopus-crm-sync"
    group_instance_id: str | None = Field(
        default=None, description="Static membership id (e.g. the pod name) so restarts keep partitions."
    )
    client_id: str = "octopus-crm-sync"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 30_000
    heartbeat_interval_ms: int = 3_000
    rebalance_timeout_ms: int = 60_000
    max_poll_interval_ms: int = 300_000
    fetch_max_wait_ms: int = Field(
        default=500,
        ge=0,
        description="Longest a fetch waits for data; brokers that hold it (Tansu) add up to this much latency.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    producer_idempotence: bool = Field(
        default=True, description="Idempotent producer; switch off for brokers without it (Tansu)."
    )
    producer_linger_ms: int = 5
    max_request_size: int = 8 * 1024 * 1024
    create_topics: bool = Field(default=False, description="Create missing topics at start (dev).")
    topic_partitions: int = 4

    # Work
    config_path: str = "config/crm-config.json"
    config_overlay_path: str | None = None
    max_in_flight: int = Field(default=1000, ge=1)
    retry_max_in_flight: int = Field(default=5000, ge=1, description="retry records waiting in memory")
    max_value_bytes: int = 1024 * 1024
    commit_interval_s: float = 1.0
    grace_period_s: float = 25.0
    revoke_timeout_s: float = 10.0
    stall_timeout_s: float = 300.0
    ledger_url: str = Field(
        default="sqlite:///octopus-crm-ledger.sqlite3",
        description="sqlite:///path (one replica), redis://host:port/db (several), memory://",
    )
    fleet_redis_url: str | None = Field(
        default=None,
        description="Redis shared by every replica for vendor limits, pauses and open circuits; "
        "default: the ledger's when it is redis://; 'off': each replica on its own",
    )
    fleet_redis_prefix: str = "octopus-crm:fleet:"
    fleet_redis_timeout_s: float = Field(default=0.25, gt=0, description="socket timeout of each fleet call")
    expected_replicas: int = Field(
        default=1, ge=1, description="while the fleet Redis is unreachable, each replica paces at limit / this"
    )

    # Observability
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9464
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    def fleet_url(self) -> str | None:
        """The Redis that holds fleet-wide limits, or None (this replica paces on its own)."""
        if self.fleet_redis_url == "off":
            return None
        if self.fleet_redis_url:
            return self.fleet_redis_url
        if self.ledger_url.startswith(("redis://", "rediss://", "unix://")):
            return self.ledger_url
        return None

    def kafka_common(self) -> dict[str, Any]:
        """Connection arguments shared by every aiokafka client."""
        args: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            args["sasl_mechanism"] = self.sasl_mechanism
            args["sasl_plain_username"] = self.sasl_username
            args["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            args["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return args
