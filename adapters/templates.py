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
from operator import attrgetter
from typing import Any

from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.variables import (
    SCALARS,
    EventVars,
    event_reader,
    is_variable,
    mapping_key,
    resolver,
    template_vars,
)

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
        return _compile_dict(node, path)
    if isinstance(node, (list, tuple)):
        elems = [_compile_node(v, f"{path}[{i}]") for i, v in enumerate(node)]

        def render_list(scope: EventVars) -> list[Any]:
            return [v for v in (fn(scope) for fn in elems) if v is not None and v != ""]

        return render_list
    return lambda scope: node


def _compile_dict(node: Mapping[Any, Any], path: str) -> Callable[[EventVars], dict[str, Any]]:
    """An object of the mapping as one generated function, with no call per key beyond the
    values' own reads: a flat variable is read off the event once however often it is used,
    filters are called directly, a text is one format call. Keys, texts and filter arguments
    are handed in as values: only names made here appear in the source."""
    env: dict[str, Any] = {"datetime": datetime, "text": _as_text, "SCALARS": SCALARS}
    reads: dict[str, str] = {}  # flat variable or mapping field → the local holding its value
    head: list[str] = []
    body: list[str] = []

    def bind(value: Any) -> str:
        name = f"c{len(env)}"
        env[name] = value
        return name

    def value_code(expr: _Expr) -> str:
        reader = event_reader(expr.name)
        if reader is None and (root_key := mapping_key(expr.name)) is not None:
            # A scalar read off the mapping, else the general lookup (a fresh copy per use).
            root, key = root_key
            if (mapping := reads.get(f".{root}", "")) == "":
                mapping = reads[f".{root}"] = f"x{len(reads)}"
                head.append(f"    {mapping} = {bind(attrgetter(root))}(event)")
            code = f"(m if type(m := {mapping}.get({bind(key)})) in SCALARS else {bind(expr.get)}(scope))"
        elif reader is None:
            code = f"{bind(expr.get)}(scope)"
        elif (code := reads.get(expr.name, "")) == "":
            code = reads[expr.name] = f"x{len(reads)}"
            head.append(f"    {code} = {bind(reader)}(event)")
        for fn, arg in expr.filters:
            code = f"{bind(fn)}({code}, {bind(arg)})"
        return code

    for k, v in node.items():
        if v is None:
            continue  # a value that renders as None leaves its key out
        child = f"{path}.{k}" if path else str(k)
        key = bind(str(k))
        if isinstance(v, str):
            parsed = _parse_string(v, child)
            if isinstance(parsed, str):
                body.append(f"    out[{key}] = {bind(parsed)}")
            elif isinstance(parsed, _Expr):
                body.append(f"    value = {value_code(parsed)}")
                body.append("    if value is not None:")
                body.append(f"        out[{key}] = text(value) if isinstance(value, datetime) else value")
            else:
                form, exprs = parsed
                args = ", ".join(f"text({value_code(expr)})" for expr in exprs)
                body.append(f"    out[{key}] = {bind(form)}.format({args})")
        elif isinstance(v, (Mapping, list, tuple)):
            body.append(f"    value = {bind(_compile_node(v, child))}(scope)")
            body.append("    if value is not None:")
            body.append(f"        out[{key}] = value")
        else:
            body.append(f"    out[{key}] = {bind(v)}")
    event = ["    event = scope.event"] if head else []
    source = "\n".join(["def render_dict(scope):", *event, *head, "    out = {}", *body, "    return out"])
    exec(compile(source, f"<mapping {path or 'root'}>", "exec"), env)
    render: Callable[[EventVars], dict[str, Any]] = env["render_dict"]
    return render


def _parse_string(text: str, path: str) -> str | _Expr | tuple[str, tuple[_Expr, ...]]:
    """A string of the mapping: literal text, a single expression (its value keeps its type),
    or a format string with one field per expression and the expressions."""
    matches = list(_EXPR.finditer(text))
    if not matches:
        if "{{" in text:
            raise TemplateError(path, f"unclosed '{{{{' in {text!r}")
        return text
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        return _parse_expr(matches[0].group(1), path)
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
    return form, tuple(p for p in pieces if isinstance(p, _Expr))


def _compile_string(text: str, path: str) -> Callable[[EventVars], Any]:
    parsed = _parse_string(text, path)
    if isinstance(parsed, str):
        return lambda scope: parsed
    if isinstance(parsed, _Expr):
        value_of = parsed.value if parsed.filters else parsed.get

        def render_whole(scope: EventVars) -> Any:
            value = value_of(scope)
            return _as_text(value) if isinstance(value, datetime) else value

        return render_whole
    form, exprs = parsed
    values = tuple(p.value if p.filters else p.get for p in exprs)

    def render_text(scope: EventVars) -> str:
        return form.format(*[_as_text(value_of(scope)) for value_of in values])

    return render_text


def compile_template(mapping: Any, path: str = "") -> Compiled:
    """Compile a mapping tree; raises :class:`TemplateError` naming the bad key path."""
    return Compiled(_compile_node(mapping, path))
