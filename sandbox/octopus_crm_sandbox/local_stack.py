"""Everything the daemon talks to, on this machine: the embedded broker (Tansu), the vendor fakes
for a configuration's integrations, and that configuration pointed at them.

``octopus-crm demo`` and ``octopus-crm dev`` share it; both need the demo extra.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octopus_crm.daemon.config import CrmConfig, load_config
from octopus_crm.daemon.settings import Settings
from octopus_crm.daemon.topics import create_topics
from octopus_crm_sandbox.broker import EmbeddedBroker
from octopus_crm_sandbox.runner import Sandbox, integrations_of

__all__ = ["EXAMPLES", "LocalStack", "local_stack"]

EXAMPLES = Path(__file__).resolve().parent / "examples"


@dataclass(frozen=True)
class LocalStack:
    broker: EmbeddedBroker
    sandbox: Sandbox
    config: CrmConfig
    settings: Settings
    overlay: dict[str, Any]


@contextlib.asynccontextmanager
async def local_stack(
    config_file: Path,
    *,
    overlay_extra: Mapping[str, Any] | None = None,
    broker_port: int | None = None,
    **settings: Any,
) -> AsyncIterator[LocalStack]:
    """Start the broker and the fakes, load ``config_file`` with its base URLs pointed at the
    fakes (credentials from the fakes), create the topics; stop everything on exit."""
    integrations = integrations_of(config_file)
    sandbox = Sandbox.for_types(t for _, t in integrations)
    with EmbeddedBroker(broker_port) as broker:
        await sandbox.start()
        try:
            overlay = sandbox.overlay(integrations)
            overlay.update(overlay_extra or {})
            config = load_config(config_file, env={**os.environ, **sandbox.env()}, overlay=overlay)
            daemon_settings = Settings(
                **{
                    "bootstrap_servers": broker.bootstrap,
                    "producer_idempotence": False,
                    "create_topics": True,
                    "metrics_host": "127.0.0.1",
                    "ledger_url": "memory://",
                    **settings,
                }
            )
            await create_topics(
                broker.bootstrap,
                [
                    daemon_settings.input_topic,
                    daemon_settings.results_topic,
                    daemon_settings.dlq_topic,
                    daemon_settings.retry_topic,
                ],
            )
            yield LocalStack(broker, sandbox, config, daemon_settings, overlay)
        finally:
            await sandbox.stop()
