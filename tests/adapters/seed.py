"""The seed's examples as the adapter tests use them: sample events and seed integrations."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from octopus_crm.adapters.base import Adapter, IntegrationConfig
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.daemon.config import resolve_references
from octopus_crm_sandbox.kit import FakeVendor, SandboxServer

A = TypeVar("A", bound=Adapter)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@functools.cache
def sample_events() -> tuple[ClassifiedMessage, ...]:
    lines = (EXAMPLES / "events.sample.jsonl").read_bytes().splitlines()
    return tuple(ClassifiedMessage.model_validate_json(line) for line in lines if line.strip())


def event_of(category: str) -> ClassifiedMessage:
    return next(e for e in sample_events() if e.classification.category == category)


def with_changes(event: ClassifiedMessage, **changes: Any) -> ClassifiedMessage:
    """A copy of ``event``; a dict change merges into that field (``sender={"email": None}``)."""
    data = event.model_dump(mode="json")
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ClassifiedMessage.model_validate_json(orjson.dumps(data))


def resolved(node: Any, env: dict[str, str]) -> Any:
    """A configuration tree with its ``${ENV}`` references filled in from ``env``."""
    return resolve_references(node, env)


@contextlib.asynccontextmanager
async def serving(fake: FakeVendor, make: Callable[[], A]) -> AsyncIterator[A]:
    """An adapter built by ``make`` once ``fake`` listens on loopback; both stopped afterwards."""
    async with SandboxServer(fake):
        adapter = make()
        await adapter.start()
        try:
            yield adapter
        finally:
            await adapter.aclose()


def seed_config(type_name: str, fake: Any, **overrides: Any) -> tuple[str, IntegrationConfig]:
    """(id, config) of the seed's ``type_name`` integration pointed at ``fake``; ``overrides``
    replace config keys (``endpoints`` is merged)."""
    entry = seed_entry(type_name, fake.ENV)
    config = entry["config"]
    config["endpoints"] = {**config["endpoints"], **fake.endpoints(), **overrides.pop("endpoints", {})}
    config.update(overrides)
    return entry["id"], IntegrationConfig.model_validate(config)


def seed_entry(type_name: str, env: dict[str, str]) -> dict[str, Any]:
    """The seed configuration's integration of ``type_name``, credentials from ``env``."""
    seed = orjson.loads((EXAMPLES / "crm-config.seed.json").read_bytes())
    entry: dict[str, Any] = next(e for e in seed["crmIntegrations"] if e["type"] == type_name)
    return dict(resolved(entry, env))
