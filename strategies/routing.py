"""Routing: which targets one event goes to, in which order, with which fallbacks.

Pure: ``plan(config, event)`` returns a :class:`Plan` and does no I/O. A plan is a set of
independent routes; a route is a chain whose first target is tried first and whose later targets
are fallbacks. Targets that rules exclude become explicit skips, so that nothing is dropped
silently.

A plan is a function of the configuration, the event's tenant and category, and whatever the
integrations' rules read. When the rules read only short strings of the event (category,
priority, platform …), the plan of one event is the plan of every event with the same values: it is
kept per configuration object (a reload brings a new one) and handed out again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from octopus_crm.core.config import (
    CategoryRouting,
    CrmConfig,
    Integration,
    ParallelSync,
    PrimaryBackup,
    Strategy,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.strategies.rules import decide

__all__ = ["Plan", "Route", "Skip", "Target", "plan"]


@dataclass(frozen=True)
class Target:
    integration_id: str
    integration_type: str
    object_type: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    variant: str = ""

    @property
    def key(self) -> str:
        """Stable id of this target within an event (the idempotency key's suffix)."""
        suffix = f"#{self.variant}" if self.variant else ""
        return f"{self.integration_id}:{self.object_type}{suffix}"


@dataclass(frozen=True)
class Route:
    chain: tuple[Target, ...]
    sync_back: bool = False

    @property
    def primary(self) -> Target:
        return self.chain[0]


@dataclass(frozen=True)
class Skip:
    integration_id: str | None
    integration_type: str | None
    reason: str
    object_type: str | None = None


@dataclass(frozen=True)
class Plan:
    strategy: str
    routes: tuple[Route, ...] = ()
    skips: tuple[Skip, ...] = ()


def _tenant_allows(integration: Integration, tenant_id: str, allowed: Sequence[str] | None, known: _Plans) -> bool:
    if integration.tenants is not None and tenant_id not in integration.tenants:
        return False
    if allowed is None:
        return True
    return any(integration in known.resolve(ref) for ref in allowed)


class _Planner:
    def __init__(self, known: _Plans, event: ClassifiedMessage, allowed: Sequence[str] | None) -> None:
        self.known = known
        self.event = event
        self.allowed = allowed
        self.skips: list[Skip] = []

    def candidates(self, ref: str) -> list[Integration]:
        found = [
            i
            for i in self.known.resolve(ref)
            if i.enabled and _tenant_allows(i, self.event.tenantId, self.allowed, self.known)
        ]
        if not found:
            self.skips.append(Skip(None, ref, f"integration {ref!r} not enabled for tenant {self.event.tenantId}"))
        return found

    def targets(
        self,
        integration: Integration,
        objects: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        variant: str = "",
    ) -> list[Target]:
        """Targets for one integration after its rules; records a skip when rules say no."""
        decision = decide(integration.rules, self.event, self.known.available(integration))
        if not decision.applies:
            self.skips.append(Skip(integration.id, integration.type, decision.reason))
            return []
        overrides = {**decision.overrides, **(extra or {})}
        chosen = list(objects) if objects else list(decision.object_types)
        return [Target(integration.id, integration.type, o, overrides, variant) for o in chosen]

    def chain(self, refs: Sequence[str]) -> tuple[Target, ...]:
        chain: list[Target] = []
        for ref in refs:
            for integration in self.candidates(ref):
                found = self.targets(integration)
                chain.extend(found[:1])
        return tuple(chain)


def _primary_backup(p: _Planner, strategy: PrimaryBackup) -> list[Route]:
    primary_ref = strategy.primary.id or strategy.primary.type or ""
    fallback = strategy.primary.fallback
    fallbacks = [fallback] if isinstance(fallback, str) else list(fallback or [])
    if strategy.rules.if_primary_fails == "fail":
        fallbacks = []
    primaries = p.candidates(primary_ref)
    routes: list[Route] = []
    backup_chain = p.chain(fallbacks)
    primary_targets = [t for i in primaries[:1] for t in p.targets(i)]
    if not primary_targets:
        return [Route(backup_chain)] if backup_chain else []
    for index, target in enumerate(primary_targets):
        backups = (
            tuple(
                Target(b.integration_id, b.integration_type, b.object_type, b.overrides, b.variant)
                for b in backup_chain
            )
            if index == 0
            else ()
        )
        routes.append(Route((target, *backups), sync_back=strategy.rules.sync_back and bool(backups)))
    return routes


def _category_routing(p: _Planner, strategy: CategoryRouting) -> list[Route]:
    category = p.event.classification.category
    refs = strategy.routes.get(category)
    if refs is None:
        lowered = {k.lower(): v for k, v in strategy.routes.items()}
        refs = lowered.get(category.lower())
    if refs is None:
        refs = strategy.default
    if refs is None:
        p.skips.append(Skip(None, None, f"no route for category {category!r} and no default route"))
        return []
    if strategy.mode == "first_available":
        chain = p.chain(refs)
        return [Route(chain)] if chain else []
    routes: list[Route] = []
    for ref in refs:
        for integration in p.candidates(ref):
            routes.extend(Route((t,)) for t in p.targets(integration))
    return routes


def _parallel_sync(p: _Planner, strategy: ParallelSync) -> list[Route]:
    routes: list[Route] = []
    for spec in strategy.targets:
        for integration in p.candidates(spec.id or spec.type or ""):
            variants: list[tuple[str, dict[str, Any]]] = [("", {})]
            if spec.channels:
                variants = [(c if len(spec.channels) > 1 else "", {"channel": c}) for c in spec.channels]
            elif spec.recipients:
                variants = [("", {"to": list(spec.recipients)})]
            for variant, extra in variants:
                routes.extend(Route((t,)) for t in p.targets(integration, spec.objects, extra, variant))
    return routes


def _default_strategy(p: _Planner) -> list[Route]:
    """No strategy configured: every enabled integration whose rules accept the event."""
    routes: list[Route] = []
    for integration in p.known.enabled:
        if _tenant_allows(integration, p.event.tenantId, p.allowed, p.known):
            routes.extend(Route((t,)) for t in p.targets(integration))
    return routes


def plan(config: CrmConfig, event: ClassifiedMessage) -> Plan:
    """Decide the routes for ``event`` under its tenant's strategy (or the default one)."""
    plans = _plans_of(config)
    if plans.readers is None:
        return _plan(plans, event)
    key: tuple[str | None, ...] = (event.tenantId, event.classification.category)
    if plans.readers:
        key += tuple(read(event) for read in plans.readers)
    found = plans.plans.get(key)
    if found is None:
        found = _plan(plans, event)
        if all(value is None or len(value) <= _MAX_KEY_CHARS for value in key):
            if len(plans.plans) >= _MAX_PLANS:  # producers choose the values: bounded, not evicted one by one
                plans.plans.clear()
            plans.plans[key] = found
    return found


# The variables (a rule's condition field or ``when`` name) a plan may be keyed on, each with the
# part of the event it is a function of. A rule reading any other one (content, confidence,
# metadata …) makes every plan of its configuration computed per event.
_KEY_READERS: Mapping[str, Callable[[ClassifiedMessage], str | None]] = {
    "tenantId": lambda e: e.tenantId,
    "tenantName": lambda e: e.tenantName,
    "platform": lambda e: e.platform,
    "category": lambda e: e.classification.category,
    "subcategory": lambda e: e.classification.subcategory,
    "priority": lambda e: e.classification.priority,
    "sentiment": lambda e: e.classification.sentiment,
    "language": lambda e: e.classification.language,
    "classification.category": lambda e: e.classification.category,
    "classification.subcategory": lambda e: e.classification.subcategory,
    "classification.priority": lambda e: e.classification.priority,
    "classification.sentiment": lambda e: e.classification.sentiment,
    "classification.language": lambda e: e.classification.language,
}
_MAX_KEY_CHARS = 256  # a longer value is planned but not kept
_MAX_PLANS = 4096
_MAX_CONFIGS = 8  # the live one, the one before a reload, the admin's dry runs


class _Plans:
    """The plans kept for one configuration, and what its planning looks up in it, looked up once."""

    def __init__(self, config: CrmConfig) -> None:
        self.config = config
        self.readers = _readers(config)  # None: plans are not kept
        self.plans: dict[tuple[str | None, ...], Plan] = {}
        self.enabled = tuple(config.enabled)
        self._resolved: dict[str, tuple[Integration, ...]] = {}
        self._available: dict[str, tuple[str, ...]] = {}

    def resolve(self, ref: str) -> tuple[Integration, ...]:
        found = self._resolved.get(ref)
        if found is None:  # refs come from the configuration: bounded by it
            found = self._resolved[ref] = tuple(self.config.resolve(ref))
        return found

    def available(self, integration: Integration) -> tuple[str, ...]:
        """The object types ``integration`` maps (a plain webhook without mappings: its type's first)."""
        found = self._available.get(integration.id)
        if found is None:
            found = tuple(integration.config.mappings) or self.config.vendors.unmapped_default(integration.type)
            self._available[integration.id] = found
        return found


_PLANS: dict[int, _Plans] = {}  # by id(config); the entry holds the config, so the id stays its own


def _plans_of(config: CrmConfig) -> _Plans:
    plans = _PLANS.get(id(config))
    if plans is None or plans.config is not config:
        if len(_PLANS) >= _MAX_CONFIGS:
            _PLANS.clear()
        plans = _PLANS[id(config)] = _Plans(config)
    return plans


def _readers(config: CrmConfig) -> tuple[Callable[[ClassifiedMessage], str | None], ...] | None:
    """What the plan reads of an event beyond its tenant and category, or None if not only strings."""
    names: dict[str, None] = {}
    for integration in config.crmIntegrations:
        for condition in integration.rules.conditions:
            names[condition.field] = None
        for action in integration.rules.actions:
            names.update(dict.fromkeys(action.when))
    if any(name not in _KEY_READERS for name in names):
        return None
    return tuple(_KEY_READERS[name] for name in names if name not in ("tenantId", "category"))


def _plan(known: _Plans, event: ClassifiedMessage) -> Plan:
    config = known.config
    tenant = config.tenants.get(event.tenantId)
    strategy: Strategy | None = tenant.strategy if tenant and tenant.strategy else config.strategy
    allowed = tenant.integrations if tenant else None
    planner = _Planner(known, event, allowed)
    if isinstance(strategy, PrimaryBackup):
        routes = _primary_backup(planner, strategy)
    elif isinstance(strategy, CategoryRouting):
        routes = _category_routing(planner, strategy)
    elif isinstance(strategy, ParallelSync):
        routes = _parallel_sync(planner, strategy)
    else:
        routes = _default_strategy(planner)
    name = strategy.strategy if strategy is not None else "all_enabled"
    if not routes and not planner.skips:
        planner.skips.append(Skip(None, None, "no target accepts this event"))
    return Plan(name, tuple(routes), tuple(planner.skips))
