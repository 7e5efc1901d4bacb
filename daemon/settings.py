"""Daemon settings: Kafka, topics, concurrency, ports, timeouts.

Read from ``OCTOPUS_CRM_*`` environment variables (and, for secrets, from files in
``OCTOPUS_CRM_SECRETS_DIR``, default ``/run/secrets``), overridden by command-line flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
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
    config_watch_interval_s: float = Field(
        default=1.0, gt=0, description="How often each replica checks the configuration file for a new version."
    )
    max_in_flight: int = Field(default=1000, ge=1)
    retry_max_in_flight: int = Field(default=5000, ge=1, description="retry records waiting in memory")
    max_value_bytes: int = 1024 * 1024
    commit_interval_s: float = 1.0
    grace_period_s: float = 25.0
    revoke_timeout_s: float = 10.0
    stall_timeout_s: float = 300.0
    broker_probe_interval_s: float = Field(
        default=5.0, gt=0, description="How often a metadata request checks that the broker answers."
    )
    broker_timeout_s: float = Field(
        default=15.0, gt=0, description="/readyz fails when the broker has not answered for this long."
    )
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

    # Admin API (/api/*), on its own port so that a NetworkPolicy can open it to fewer clients
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token every /api/* call must send (env or secrets-dir file)."
    )
    admin_token_file: str | None = Field(default=None, description="A mounted file holding the admin token.")
    admin_host: str | None = Field(
        default=None, description="Admin API address: default 0.0.0.0 with a token; always 127.0.0.1 without."
    )
    admin_port: int = 9465
    admin_test_connections_per_minute: int = Field(default=6, ge=1, description="per integration")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def admin_bearer(self) -> str | None:
        """The admin API token: ``ADMIN_TOKEN`` (or its secrets-dir file), else ``ADMIN_TOKEN_FILE``."""
        if self.admin_token is not None and self.admin_token.get_secret_value().strip():
            return self.admin_token.get_secret_value().strip()
        if self.admin_token_file:
            try:
                token = Path(self.admin_token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cannot read the admin token file {self.admin_token_file}: {exc.strerror}") from None
            if not token:
                raise ValueError(f"the admin token file {self.admin_token_file} is empty")
            return token
        return None

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
