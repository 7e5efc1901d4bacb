"""The variables of one event, by name: what mapping templates and rule conditions read.

Flat names (``senderEmail``, ``category``, ``priority`` …) and dotted paths into the event
(``classification.sentiment``, ``metadata.vip``) resolve lazily; an unknown path is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, get_origin

from pydantic import BaseModel

from octopus_crm.core.contracts import ClassifiedMessage

__all__ = [
    "SCALARS",
    "EventVars",
    "event_reader",
    "is_variable",
    "mapping_key",
    "resolver",
    "split_name",
    "template_vars",
]

# Plain attribute paths as attrgetters: one C call a read where a lambda is a Python frame.
_FLAT: dict[str, Callable[[ClassifiedMessage], Any]] = {
    "senderName": attrgetter("sender.name"),
    "senderEmail": attrgetter("sender.email"),
    "senderPhone": attrgetter("sender.phone"),
    "senderId": attrgetter("sender.id"),
    "senderFirstName": lambda e: e.sender.firstName or split_name(e.sender.name)[0],
    "senderLastName": lambda e: e.sender.lastName or split_name(e.sender.name)[1],
    "tenantName": lambda e: e.tenantName or e.tenantId,
    "tenantId": attrgetter("tenantId"),
    "platform": attrgetter("platform"),
    "messageContent": attrgetter("content"),
    "content": attrgetter("content"),
    "category": attrgetter("classification.category"),
    "subcategory": attrgetter("classification.subcategory"),
    "priority": attrgetter("classification.priority"),
    "sentiment": attrgetter("classification.sentiment"),
    "confidence": attrgetter("classification.confidence"),
    "language": attrgetter("classification.language"),
    "receivedAt": attrgetter("receivedAt"),
    "eventId": attrgetter("eventId"),
    "messageId": attrgetter("messageId"),
    "assigneeUserId": attrgetter("assignment.assigneeUserId"),
    "managerUserId": attrgetter("assignment.managerUserId"),
    "systemUserId": attrgetter("assignment.systemUserId"),
}
_ROOTS = frozenset(ClassifiedMessage.model_fields)
# Values a path walk may hand out as they are: what model_dump() would give for them too.
SCALARS = frozenset({str, int, float, bool, type(None)})
_FIELDS: dict[type[BaseModel], frozenset[str]] = {}  # model_fields costs ~0.3 µs a read


def split_name(name: str) -> tuple[str, str]:
    """'Hanna Schmidt' → (Hanna, Schmidt); '王小明' → (小明, 王): CJK names put the family first."""
    parts = name.split()
    if len(parts) >= 2:
        return " ".join(parts[:-1]), parts[-1]
    if name and all("\u3400" <= ch <= "\u9fff" for ch in name) and len(name) >= 2:
        return name[1:], name[0]
    return name, name


class EventVars:
    """Lazily resolved variables of one event."""

    __slots__ = ("_dump", "event")

    def __init__(self, event: ClassifiedMessage) -> None:
        self.event = event
        self._dump: dict[str, Any] | None = None

    def get(self, name: str) -> Any:
        flat = _FLAT.get(name)
        if flat is not None:
            return flat(self.event)
        if self._dump is None:
            # A scalar is read off the model without dumping it (model_dump costs microseconds
            # per event), a list of scalars (keywords, tags) as a fresh list, which is all the
            # dump would hold; anything else comes from the dump, a copy the caller may change.
            value = _walk(self.event, name)
            if type(value) in SCALARS:
                return value
            if type(value) is list and all(type(item) in SCALARS for item in value):
                return list(value)
            self._dump = self.event.model_dump()
        return _walk(self._dump, name)


def _walk(node: Any, name: str) -> Any:
    """``name``'s value in the dump, or on the model itself where that walk finds the same one."""
    for part in name.split("."):
        if isinstance(node, BaseModel):
            cls = type(node)
            fields = _FIELDS.get(cls)
            if fields is None:
                fields = _FIELDS[cls] = frozenset(cls.model_fields)
            if part not in fields and part not in (node.__pydantic_extra__ or ()):
                return None  # not in the dump either (a method, a private attribute)
            node = getattr(node, part)
        elif isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def event_reader(name: str) -> Callable[[ClassifiedMessage], Any] | None:
    """``name``'s value read off the event itself (the same object on every read), for a flat
    name; None for a path, which needs :class:`EventVars` (and its dump)."""
    return _FLAT.get(name)


def mapping_key(name: str) -> tuple[str, str] | None:
    """(field, key) for a key of one of the event's mapping fields (``metadata.conv``): its value
    read off the mapping is the variable's when it is one of :data:`SCALARS` (what
    :func:`resolver` does); None for any other name."""
    root, _, key = name.partition(".")
    return (root, key) if key and "." not in key and root in _MAPPING_FIELDS else None


def resolver(name: str) -> Callable[[EventVars], Any]:
    """``EventVars.get(name)`` with the name looked up once (a template compiles it in).

    A key of a mapping field (``metadata.conv``) is read straight off the mapping when its value
    is a scalar, which is what ``get`` hands out for it too; anything else goes through ``get``."""
    flat = _FLAT.get(name)
    if flat is not None:
        return lambda scope: flat(scope.event)
    if (root_key := mapping_key(name)) is not None:
        root, key = root_key

        def read(scope: EventVars) -> Any:
            value = getattr(scope.event, root).get(key)
            return value if type(value) in SCALARS else scope.get(name)

        return read
    return lambda scope: scope.get(name)


# The event's fields that are plain dicts (``metadata``): a key in one is a dict lookup.
_MAPPING_FIELDS = frozenset(
    name for name, field in ClassifiedMessage.model_fields.items() if get_origin(field.annotation) is dict
)


def template_vars(event: ClassifiedMessage) -> EventVars:
    return EventVars(event)


def is_variable(name: str) -> bool:
    """A name a template or a condition may use: a flat name or a path under an event field."""
    return name in _FLAT or name.split(".", 1)[0] in _ROOTS
