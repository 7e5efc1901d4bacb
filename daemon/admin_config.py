"""What the admin API's ``test-connection`` and ``configure`` do with a candidate configuration.

A candidate (``{type, config}``) is validated exactly as ``octopus-crm validate-config`` validates
a file: it is put into a configuration tree and run through :func:`octopus_crm.daemon.config.parse_config`.
Bodies from the API may not carry ``${…}`` references (a reference would read the daemon's
environment or files and send them wherever the candidate points); references already in the
file are kept when a credential comes back as ``"***"`` or is left out.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from octopus_crm.adapters.base import Adapter, DeliveryContext
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError
from octopus_crm.daemon.config import ConfigFileError, CrmConfig, Integration, build_adapter, parse_config, read_raw
from octopus_crm.daemon.config_versions import ConfigWriter, merge_integration
from octopus_crm.strategies.routing import plan

__all__ = [
    "CANDIDATE_ID",
    "CANDIDATE_MAX_RESPONSE_BYTES",
    "CANDIDATE_TIMEOUTS",
    "BadRequest",
    "Prepared",
    "candidate_adapter",
    "dry_run",
    "prepare_configure",
    "sample_events",
]

CANDIDATE_ID = "candidate"
CANDIDATE_TIMEOUTS = {"connect": 5.0, "read": 10.0}
CANDIDATE_MAX_RESPONSE_BYTES = 256 * 1024
MAX_DRY_RUN_EVENTS = 20
_ENTRY_KEYS = ("id", "name", "type", "enabled", "config", "rules", "priority", "tenants", "ordered")


class BadRequest(Exception):
    """The request is wrong; ``errors`` are ``(path, message)`` pairs, as validate-config prints."""

    def __init__(self, errors: list[tuple[str, str]], status: int = 400) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))
        self.errors = errors
        self.status = status

    def as_list(self) -> list[dict[str, str]]:
        return [{"path": path, "message": message} for path, message in self.errors]


def _refuse_references(node: Any, path: str) -> None:
    if isinstance(node, str) and "${" in node:
        raise BadRequest(
            [(path, "${…} references are not accepted from the admin API; send the value (stored in a secrets file)")]
        )
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_references(value, f"{path}[{i}]")


def _body_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(body.get("type"), str) or not body["type"]:
        raise BadRequest([("type", "required: one of the types GET /api/crm/supported lists")])
    config = body.get("config", {})
    if not isinstance(config, dict):
        raise BadRequest([("config", "must be an object")])
    entry = {k: copy.deepcopy(body[k]) for k in _ENTRY_KEYS if k in body}
    _refuse_references(entry, "")
    return entry


def _file_entry(raw: Mapping[str, Any], integration_id: str) -> dict[str, Any] | None:
    for entry in raw.get("crmIntegrations") or []:
        if isinstance(entry, dict) and entry.get("id") == integration_id:
            return entry
    return None


def _validate_one(entry: Mapping[str, Any], env: Mapping[str, str]) -> Integration:
    tree = {"crmIntegrations": [{**entry, "enabled": True}]}
    try:
        return parse_config(tree, env=env, source="request").crmIntegrations[0]
    except ConfigFileError as exc:
        raise BadRequest([(p.replace("crmIntegrations[0].", "", 1), m) for p, m in exc.errors]) from None


def candidate_adapter(
    body: Mapping[str, Any], *, raw: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Adapter:
    """An adapter for ``{type, config}`` (or ``{id, type, config}`` of a configured integration
    whose secrets come back as ``"***"``), with short timeouts; not started."""
    entry = _body_entry(body)
    existing = _file_entry(raw, str(entry["id"])) if raw is not None and "id" in entry else None
    if existing is not None and existing.get("type") != entry["type"]:
        existing = None
    merged = merge_integration(existing, entry)
    merged["id"] = CANDIDATE_ID
    config = merged.setdefault("config", {})
    timeouts = dict(config.get("timeouts") or {})
    for name, limit in CANDIDATE_TIMEOUTS.items():
        given = timeouts.get(name)
        timeouts[name] = min(float(given), limit) if isinstance(given, int | float) and given > 0 else limit
    config["timeouts"] = timeouts
    merged.pop("rules", None)
    integration = _validate_one(merged, os.environ if env is None else env)
    return build_adapter(integration)


@dataclass
class Prepared:
    """A validated new version: the tree to write, the secret files, the loaded configuration."""

    integration_id: str
    created: bool
    tree: dict[str, Any]
    secret_files: dict[Path, str]
    config: CrmConfig
    public_entry: dict[str, Any] = field(default_factory=dict)


def _new_id(type_name: str, taken: set[str]) -> str:
    if type_name not in taken:
        return type_name
    n = 2
    while f"{type_name}-{n}" in taken:
        n += 1
    return f"{type_name}-{n}"


def prepare_configure(body: Mapping[str, Any], writer: ConfigWriter, env: Mapping[str, str] | None = None) -> Prepared:
    """The file's next version with ``body`` added (or its ``id`` replaced), validated as
    validate-config does (the overlay too); nothing written."""
    entry = _body_entry(body)
    if "enabled" in entry and not isinstance(entry["enabled"], bool):
        raise BadRequest([("enabled", "must be true or false")])
    try:
        raw = read_raw(writer.path)
    except ConfigFileError as exc:
        raise BadRequest(exc.errors, status=409) from None
    entries = [e for e in raw.get("crmIntegrations") or [] if isinstance(e, dict)]
    taken = {str(e.get("id")) for e in entries}
    integration_id = str(entry.get("id") or _new_id(str(entry["type"]), taken))
    entry["id"] = integration_id
    existing = _file_entry(raw, integration_id)
    if existing is not None:
        kept = {k: v for k, v in existing.items() if k not in entry}  # priority, retry, tenants … stay
        entry = {**kept, **entry}
    merged = merge_integration(existing, entry)
    candidate = copy.deepcopy(raw)
    candidate["crmIntegrations"] = [merged if e.get("id") == integration_id else e for e in entries]
    if existing is None:
        candidate["crmIntegrations"].append(merged)
    overlay = read_raw(writer.overlay_path) if writer.overlay_path else None
    try:
        config = parse_config(
            candidate, env=os.environ if env is None else env, overlay=overlay, source=str(writer.path)
        )
    except ConfigFileError as exc:
        raise BadRequest(exc.errors, status=422) from None
    file_entry, secret_files = writer.split_secrets(merged)
    tree = copy.deepcopy(raw)
    tree["crmIntegrations"] = [file_entry if e.get("id") == integration_id else e for e in entries]
    if existing is None:
        tree["crmIntegrations"].append(file_entry)
    return Prepared(integration_id, existing is None, tree, secret_files, config)


@cache
def sample_events() -> tuple[dict[str, Any], ...]:
    """The sample events a dry run routes when the request brings none."""
    text = resources.files("octopus_crm.daemon").joinpath("static/admin/sample-events.json").read_bytes()
    return tuple(orjson.loads(text))


def dry_run(config: CrmConfig, events: Any) -> list[dict[str, Any]]:
    """Each event's routes under ``config`` with the bodies each target would receive; no vendor
    is called."""
    if events is None:
        events = list(sample_events())
    if not isinstance(events, list) or not events or len(events) > MAX_DRY_RUN_EVENTS:
        raise BadRequest([("events", f"a list of 1 to {MAX_DRY_RUN_EVENTS} events")])
    adapters: dict[str, Adapter] = {}
    out: list[dict[str, Any]] = []
    for index, raw_event in enumerate(events):
        try:
            event = ClassifiedMessage.model_validate(raw_event)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadRequest([(f"events[{index}].{where}", first["msg"])]) from None
        routing = plan(config, event)
        routes = []
        for route in routing.routes:
            chain = []
            for target in route.chain:
                integration = config.integration(target.integration_id)
                if integration.id not in adapters:
                    adapters[integration.id] = build_adapter(integration)
                adapter = adapters[integration.id]
                step: dict[str, Any] = {
                    "integrationId": target.integration_id,
                    "type": target.integration_type,
                    "objectType": target.object_type,
                }
                try:
                    ctx = DeliveryContext(f"dry-run:{event.eventId}", 1, integration.id, target.overrides)
                    step["body"] = adapter.render(event, target.object_type, ctx)
                except ConfigError as exc:
                    step["error"] = exc.as_dict()
                chain.append(step)
            routes.append({"chain": chain, "syncBack": route.sync_back})
        skips = [
            {"integrationId": s.integration_id, "type": s.integration_type, "reason": s.reason} for s in routing.skips
        ]
        out.append({"eventId": event.eventId, "strategy": routing.strategy, "routes": routes, "skips": skips})
    return out
