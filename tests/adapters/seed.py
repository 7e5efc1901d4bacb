"""The seed's examples as the adapter tests use them: sample events and seed integrations."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson

from daemon.config import resolve_references
from daemon.contracts import ClassifiedMessage

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


def seed_entry(type_name: str, env: dict[str, str]) -> dict[str, Any]:
    """The seed configuration's integration of ``type_name``, credentials from ``env``."""
    seed = orjson.loads((EXAMPLES / "crm-config.seed.json").read_bytes())
    entry: dict[str, Any] = next(e for e in seed["crmIntegrations"] if e["type"] == type_name)
    return dict(resolved(entry, env))
