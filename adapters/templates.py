"""Mapping templates: the seed's ``{{var}}`` and ``{{var|filter:arg}}`` syntax.

A mapping (any JSON tree of dicts, lists and strings) is compiled once per configuration load
into a tree of renderers; rendering walks that tree with one event's variables. Values are
inserted as data and never parsed again, so a customer writing ``{{senderEmail}}`` gets exactly
those characters into the CRM.

A string that is a single expression keeps the value's type (a list stays a list, a number a
number); anything else renders to a string. A missing value renders as ``None`` in the first case
(the key is then dropped from its object) and as an empty string inside a longer text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.variables import EventVars, is_variable, resolver, template_vars

__all__ = ["FILTERS", "Compiled", "TemplateError", "compile_template", "template_vars"]


class TemplateError(ValueError):
    """A template that cannot be compiled; ``path`` names where it sits in the mapping."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


# -- filters ---------------------------------------------------------------------------------


def _as_text(value: Any) -> str:
    if type(value) is str:  # the common case, ahead of the type tests below
        return value
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_as_text(v) for v in value)
    return str(value)


def _truncate(value: Any, arg: str | None) -> str:
    text = _as_text(value)
    limit = int(arg or 100)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _date(value: Any, arg: str | None) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None  # untrusted text that is not a date renders as a missing value
    if not isinstance(value, datetime):
        return value
    if arg in (None, "", "iso"):
        return _as_text(value)
    if arg == "epoch_ms":
        return int(value.timestamp() * 1000)
    if arg == "epoch":
        return int(value.timestamp())
    return value.strftime(arg)


FILTERS: dict[str, Callable[[Any, str | None], Any]] = {
    "truncate": _truncate,
    "default": lambda v, a: a if v in (None, "", []) else v,
    "upper": lambda v, a: _as_text(v).upper(),
    "lower": lambda v, a: _as_text(v).lower(),
    "date": _date,
    "join": lambda v, a: (a if a is not None else ", ").join(_as_text(x) for x in (v or [])),
    "string": lambda v, a: _as_text(v),
    "trim": lambda v, a: _as_text(v).strip(),
}


# -- compilation -----------------------------------------------------------------------------

_EXPR = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.S)
_FILTER = re.compile(r"""\s*([A-Za-z_]+)\s*(?::\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^|]*))?\s*""")


@dataclass(frozen=True, slots=True)
class _Expr:
    name: str
    filters: tuple[tuple[Callable[[Any, str | None], Any], str | None], ...]
    get: Callable[[EventVars], Any]

    def value(self, scope: EventVars) -> Any:
        value = self.get(scope)
        for fn, arg in self.filters:
            value = fn(value, arg)
        return value


def _parse_expr(source: str, path: str) -> _Expr:
    name, *filter_parts = _split_pipes(source)
    name = name.strip()
    if not name or not is_variable(name):
        raise TemplateError(path, f"unknown template variable {name!r} in '{{{{{source}}}}}'")
    filters = []
    for part in filter_parts:
        match = _FILTER.fullmatch(part)
        if not match or match.group(1) not in FILTERS:
            raise TemplateError(path, f"unknown filter {part.strip()!r} in '{{{{{source}}}}}'")
        arg = match.group(2)
        if arg is not None:
            arg = arg.strip()
            if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'":
                arg = arg[1:-1]
        if match.group(1) == "truncate" and arg and not arg.isdigit():
            raise TemplateError(path, f"truncate needs a whole number, not {arg!r}")
        filters.append((FILTERS[match.group(1)], arg))
    return _Expr(name, tuple(filters), resolver(name))


def _split_pipes(source: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for ch in source:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "|":
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


class Compiled:
    """A compiled mapping; ``render(event)`` returns a fresh JSON-able tree."""

    __slots__ = ("render_vars",)

    def __init__(self, render: Callable[[EventVars], Any]) -> None:
        #: ``render`` for variables already made: the compiled tree itself, without a call around it.
        self.render_vars = render

    def render(self, event: ClassifiedMessage | EventVars) -> Any:
        scope = event if isinstance(event, EventVars) else EventVars(event)
        return self.render_vars(scope)


def _compile_node(node: Any, path: str) -> Callable[[EventVars], Any]:
    if isinstance(node, str):
        return _compile_string(node, path)
    if isinstance(node, Mapping):
        items: list[tuple[str, Callable[[EventVars], Any], bool]] = []
        for k, v in node.items():
            child = f"{path}.{k}" if path else str(k)
            whole = _whole_value(v, child) if isinstance(v, str) else None
            items.append((str(k), whole or _compile_node(v, child), whole is not None))

        def render_dict(scope: EventVars) -> dict[str, Any]:
            out = {}
            for key, fn, whole in items:
                value = fn(scope)
                if value is None:
                    continue
                if whole and isinstance(value, datetime):  # render_whole's step, without its call
                    value = _as_text(value)
                out[key] = value
            return out

        return render_dict
    if isinstance(node, (list, tuple)):
        elems = [_compile_node(v, f"{path}[{i}]") for i, v in enumerate(node)]

        def render_list(scope: EventVars) -> list[Any]:
            return [v for v in (fn(scope) for fn in elems) if v is not None and v != ""]

        return render_list
    return lambda scope: node


def _whole_value(text: str, path: str) -> Callable[[EventVars], Any] | None:
    """The value (typed, a datetime not yet as text) of a string that is a single expression;
    None for any other string."""
    matches = list(_EXPR.finditer(text))
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        expr = _parse_expr(matches[0].group(1), path)
        return expr.value if expr.filters else expr.get
    return None


def _compile_string(text: str, path: str) -> Callable[[EventVars], Any]:
    matches = list(_EXPR.finditer(text))
    if not matches:
        if "{{" in text:
            raise TemplateError(path, f"unclosed '{{{{' in {text!r}")
        return lambda scope: text
    if (value_of := _whole_value(text, path)) is not None:

        def render_whole(scope: EventVars) -> Any:
            value = value_of(scope)
            return _as_text(value) if isinstance(value, datetime) else value

        return render_whole
    pieces: list[str | _Expr] = []
    pos = 0
    for m in matches:
        if m.start() > pos:
            pieces.append(text[pos : m.start()])
        pieces.append(_parse_expr(m.group(1), path))
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    if "{{" in "".join(p for p in pieces if isinstance(p, str)):
        raise TemplateError(path, f"unclosed '{{{{' in {text!r}")
    # The literal text as a format string with one field per expression: one format call per
    # render instead of a type test and a join over every piece.
    form = "".join(p.replace("{", "{{").replace("}", "}}") if isinstance(p, str) else "{}" for p in pieces)
    values = tuple(p.value if p.filters else p.get for p in pieces if isinstance(p, _Expr))

    def render_text(scope: EventVars) -> str:
        return form.format(*[_as_text(value_of(scope)) for value_of in values])

    return render_text


def compile_template(mapping: Any, path: str = "") -> Compiled:
    """Compile a mapping tree; raises :class:`TemplateError` naming the bad key path."""
    return Compiled(_compile_node(mapping, path))
