"""Per-integration rules: does an event apply, which object types, which field overrides.

Pure functions over the event; no I/O. Field names in conditions are the template variable names
(``category``, ``priority``, ``platform``, ``tenantId``, ``language``, ``confidence``,
``content``/``messageContent``) or dotted paths (``classification.sentiment``, ``metadata.vip``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from octopus_crm.core.config import Condition, Rules
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.patterns import compile_pattern
from octopus_crm.core.variables import template_vars

__all__ = ["DEFAULT_OBJECTS", "Decision", "decide", "default_object_type", "matches"]

# The upstream project's defaults when a configuration names no object type.
DEFAULT_OBJECTS: Mapping[str, str] = {
    "销售线索": "lead",
    "产品咨询": "lead",
    "sales": "lead",
    "技术支持": "ticket",
    "故障报告": "ticket",
    "support": "ticket",
    "客户投诉": "case",
    "服务问题": "case",
    "complaint": "case",
}

# When an integration has no object of the wanted kind, the nearest one it has.
_NEAREST: Mapping[str, tuple[str, ...]] = {
    "lead": ("lead", "contact", "item", "page", "record", "bitable_record", "task", "card", "issue"),
    "ticket": ("ticket", "case", "issue", "task", "item", "card", "page"),
    "case": ("case", "ticket", "issue", "task", "item", "card", "page"),
    "task": ("task", "issue", "ticket", "item", "card", "page", "case"),
}


@dataclass(frozen=True)
class Decision:
    """What rules say for one integration and one event."""

    applies: bool
    object_types: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""


def _value(event: ClassifiedMessage, name: str) -> Any:
    return template_vars(event).get(name)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


def matches(condition: Condition, event: ClassifiedMessage) -> bool:
    actual = _value(event, condition.field)
    op, expected = condition.operator, condition.value
    if op == "exists":
        return (actual not in (None, "", [])) == (expected is not False)
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "in":
        return any(a in _as_list(expected) for a in _as_list(actual))
    if op == "not_in":
        return not any(a in _as_list(expected) for a in _as_list(actual))
    if op in ("contains", "not_contains"):
        text = " ".join(str(a) for a in _as_list(actual) if a is not None).lower()
        found = any(str(word).lower() in text for word in _as_list(expected))
        return found if op == "contains" else not found
    if op == "regex":
        return actual is not None and compile_pattern(str(expected)).search(str(actual)) is not None
    try:
        a, b = float(actual), float(expected)
    except (TypeError, ValueError):
        return False
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def _when(when: Mapping[str, Any], event: ClassifiedMessage) -> bool:
    return all(any(v in _as_list(expected) for v in _as_list(_value(event, name))) for name, expected in when.items())


def default_object_type(category: str, available: Sequence[str]) -> str | None:
    """The upstream default for ``category``, or the nearest type this integration has."""
    wanted = DEFAULT_OBJECTS.get(category, DEFAULT_OBJECTS.get(category.lower(), "task"))
    for candidate in _NEAREST.get(wanted, (wanted,)):
        if candidate in available:
            return candidate
    return available[0] if available else None


def decide(rules: Rules, event: ClassifiedMessage, available: Sequence[str]) -> Decision:
    """Apply an integration's ``rules`` to ``event``; ``available`` are its mapped object types."""
    if rules.conditions:
        results = [matches(c, event) for c in rules.conditions]
        ok = all(results) if rules.match == "all" else any(results)
        if not ok:
            failed = next(c for c, r in zip(rules.conditions, results, strict=True) if not r)
            return Decision(False, reason=f"rules: {failed.field} {failed.operator} {failed.value!r} not met")
    objects: list[str] = []
    overrides: dict[str, Any] = {}
    for action in rules.actions:
        if action.when and not _when(action.when, event):
            continue
        if action.type == "skip":
            return Decision(False, reason=action.reason or "rules: skip action")
        if action.type == "set":
            overrides.update(action.set)
        elif action.object and action.object not in objects:
            objects.append(action.object)
            overrides.update(action.set)
    if not objects:
        fallback = default_object_type(event.classification.category, available)
        if fallback is None:
            return Decision(False, reason="no mapping configured")
        objects.append(fallback)
    return Decision(True, tuple(objects), overrides)
