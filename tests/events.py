"""Event factories for tests."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from octopus_crm.daemon.retrying import RetryRecord, TargetSpec


def make_event(
    i: int, *, key: str = "k0", tenant: str = "t-test", category: str = "销售线索", **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schemaVersion": 1,
        "eventId": str(uuid.uuid4()),
        "messageId": f"msg-{i:06d}",
        "tenantId": tenant,
        "tenantName": "Test 租户",
        "platform": "telegram",
        "sender": {"id": key, "name": "王小明", "email": f"user{i}@example.com", "phone": "+86 138 0000 0000"},
        "content": f"message {i} for {key}",
        "receivedAt": "2026-11-25T09:00:00Z",
        "classification": {"category": category, "confidence": 0.9, "priority": "high"},
        "metadata": {"seq": i, "conv": key},
    }
    event.update(extra)
    return event


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def keyed(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"{e['tenantId']}:{e['sender']['id']}".encode(), encode(e)) for e in events]


_ENTRY_KEYS = frozenset({"name", "enabled", "tenants", "ordered", "retry", "circuitBreaker", "rules"})


def webhook_config(
    urls: dict[str, str], *, strategy: dict[str, Any] | None = None, **integration: Any
) -> dict[str, Any]:
    """A configuration of webhook integrations (id → URL) fanned out in parallel; ``integration``
    keys go to each entry (``retry``, ``rules`` …) or to its ``config`` block (the rest)."""
    entry = {k: v for k, v in integration.items() if k in _ENTRY_KEYS}
    config = {k: v for k, v in integration.items() if k not in _ENTRY_KEYS}
    return {
        "crmIntegrations": [
            {
                "id": name,
                "type": "webhook",
                "priority": index,
                **entry,
                "config": {
                    "endpoints": {"url": url, "allowPrivateNetwork": True},  # receivers on loopback
                    "mappings": {
                        "message": {
                            "eventId": "{{eventId}}",
                            "key": "{{metadata.conv}}",
                            "seq": "{{metadata.seq}}",
                            "text": "{{messageContent}}",
                        }
                    },
                    **config,
                },
            }
            for index, (name, url) in enumerate(urls.items())
        ],
        "strategy": strategy or {"strategy": "parallel_sync", "targets": [{"id": name} for name in urls]},
    }


def retry_record(integration: str = "a", **fields: Any) -> RetryRecord:
    """A retry-topic record of one route to ``integration`` (a webhook); ``fields`` override."""
    values: dict[str, Any] = {
        "kind": "retry",
        "event_id": "e1",
        "value": "{}",
        "source_topic": "in",
        "source_partition": 0,
        "source_offset": 1,
        "received_at": 1.0,
        "strategy": "s",
        "chain": [TargetSpec(integration_id=integration, integration_type="webhook", object_type="message")],
    }
    values.update(fields)
    return RetryRecord(**values)
