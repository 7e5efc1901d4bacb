"""The CRM configuration: the seed's ``crmIntegrations`` and strategy blocks, validated once.

Loaded from JSON or YAML; ``${ENV}`` and ``${file:/path}`` references in the secret-bearing fields
(:data:`SECRET_BEARING_FIELDS`) are resolved before validation so that secrets live in the
environment or in mounted files, never in the file itself; a reference anywhere else is an error.
Every error names the exact key path (``crmIntegrations[2].config.mappings.case.subject``).
Integration references in strategies (an id, or a type when one integration has it) are resolved
at load; nothing is looked up by name at run time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from octopus_crm.adapters.base import Adapter
from octopus_crm.adapters.registry import ADAPTERS, adapter_class
from octopus_crm.core.config import (
    Action,
    CategoryRouting,
    Condition,
    CrmConfig,
    Integration,
    ParallelSync,
    PrimaryBackup,
    Rules,
    Strategy,
    Tenant,
    VendorCatalog,
)
from octopus_crm.core.errors import ConfigError as AdapterConfigError
from octopus_crm.core.redaction import register_secret_parts

__all__ = [
    "SECRET_HEADER_NAMES",
    "Action",
    "CategoryRouting",
    "Condition",
    "ConfigFileError",
    "CrmConfig",
    "Integration",
    "ParallelSync",
    "PrimaryBackup",
    "Rules",
    "Strategy",
    "Tenant",
    "load_config",
    "parse_config",
    "public_credential",
    "read_raw",
    "resolve_references",
    "vendor_catalog",
]


class ConfigFileError(ValueError):
    """The configuration is invalid; ``errors`` lists ``(path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "") -> None:
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  {path or '<root>'}: {message}" for path, message in errors)
        super().__init__(f"invalid configuration{f' in {source}' if source else ''}:\n{lines}")


def vendor_catalog() -> VendorCatalog:
    """The registry's vendors as the schema sees them (type names, aliases, unmapped defaults);
    read at each load, so a type registered later (a test's, a plugin's) is known."""
    return VendorCatalog(
        kinds={name: cls.info.type for name, cls in ADAPTERS.items()},
        unmapped={cls.info.type: cls.info.object_types[:1] for cls in ADAPTERS.values() if cls.allows_unmapped},
    )


# -- references --------------------------------------------------------------------------------

_REF = re.compile(r"\$\{(?:(file):)?([^}:]+)(?::-([^}]*))?\}")


def _resolve_refs(node: Any, path: str, env: Mapping[str, str], errors: list[tuple[str, str]]) -> Any:
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            kind, name, default = match.group(1), match.group(2).strip(), match.group(3)
            if kind == "file":
                try:
                    return Path(name).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    errors.append((path, f"cannot read secret file {name}: {exc.strerror}"))
                    return ""
            if name in env:
                return env[name]
            if default is not None:
                return default
            try:
                return env[name]  # validate-config --allow-missing-env supplies a placeholder
            except KeyError:
                errors.append((path, f"environment variable {name} is not set"))
                return ""

        return _REF.sub(substitute, node)
    if isinstance(node, dict):
        return {k: _resolve_refs(v, f"{path}.{k}" if path else str(k), env, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, f"{path}[{i}]", env, errors) for i, v in enumerate(node)]
    return node


# The fields a secret may sit in, relative to one ``crmIntegrations`` entry: references are
# resolved here and nowhere else (``name: ${file:/etc/hostname}`` or ``${HOME}`` in a mapping would
# otherwise put a file or the environment in front of the API and the vendors).
SECRET_BEARING_FIELDS = ("config.credentials", "config.headers", "config.endpoints.url", "config.endpoints.webhookUrl")
# Credentials that are identifiers rather than secrets (``agentId: 1000002`` must not be scrubbed
# from every number in a log line); every other credential is registered for redaction.
_PUBLIC_CREDENTIALS = re.compile(r"(?i)^(?:.*id|username|user|email|granttype|authtype|sandbox)$")
# Headers whose values are credentials; any other header value (``X-Team: sales``) is plain text
# that must stay readable in results and logs rather than be scrubbed wherever it appears.
_SECRET_HEADERS = re.compile(r"(?i)auth|token|key|secret|sig|cookie|pass|session|credential")


SECRET_HEADER_NAMES = _SECRET_HEADERS


def public_credential(name: str) -> bool:
    """A credential that is an identifier (``email``, ``clientId``), not a secret."""
    return bool(_PUBLIC_CREDENTIALS.match(name))


def _secret_bearing(rel: str) -> bool:
    return any(rel == f or rel.startswith((f"{f}.", f"{f}[")) for f in SECRET_BEARING_FIELDS)


def _register_secrets(node: Any, rel: str) -> None:
    """Resolved secret-bearing values are registered for redaction, with their parts."""
    if isinstance(node, dict):
        for key, value in node.items():
            _register_secrets(value, f"{rel}.{key}")
    elif isinstance(node, list):
        for value in node:
            _register_secrets(value, f"{rel}[]")
    elif isinstance(node, str):
        if rel.startswith("config.credentials.") and _PUBLIC_CREDENTIALS.match(rel.rsplit(".", 1)[-1]):
            return
        if rel.startswith("config.headers.") and not _SECRET_HEADERS.search(rel.rsplit(".", 1)[-1]):
            return
        register_secret_parts(node)


def _resolve_integration_refs(
    node: Any, path: str, rel: str, env: Mapping[str, str], errors: list[tuple[str, str]]
) -> Any:
    if _secret_bearing(rel):
        resolved = _resolve_refs(node, path, env, errors)
        _register_secrets(resolved, rel)
        return resolved
    if isinstance(node, dict):
        return {
            k: _resolve_integration_refs(v, f"{path}.{k}", f"{rel}.{k}" if rel else str(k), env, errors)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve_integration_refs(v, f"{path}[{i}]", f"{rel}[{i}]", env, errors) for i, v in enumerate(node)]
    _forbid_refs(node, path, errors)
    return node


def _forbid_refs(node: Any, path: str, errors: list[tuple[str, str]]) -> None:
    if isinstance(node, str) and _REF.search(node):
        errors.append(
            (
                path,
                "${...} references are resolved only in secret-bearing fields "
                f"({', '.join(SECRET_BEARING_FIELDS)}); write this value literally",
            )
        )
    elif isinstance(node, dict):
        for key, value in node.items():
            _forbid_refs(value, f"{path}.{key}" if path else str(key), errors)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _forbid_refs(value, f"{path}[{i}]", errors)


def _resolve_config_refs(tree: dict[str, Any], env: Mapping[str, str], errors: list[tuple[str, str]]) -> Any:
    """References resolved in the secret-bearing fields of each integration; elsewhere an error."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "crmIntegrations" and isinstance(value, list):
            out[key] = [
                _resolve_integration_refs(entry, f"crmIntegrations[{i}]", "", env, errors)
                for i, entry in enumerate(value)
            ]
        else:
            _forbid_refs(value, str(key), errors)
            out[key] = value
    return out


def resolve_references(node: Any, env: Mapping[str, str]) -> Any:
    """``${NAME}``, ``${NAME:-default}`` and ``${file:/path}`` resolved in a configuration tree."""
    errors: list[tuple[str, str]] = []
    resolved = _resolve_refs(node, "", env, errors)
    if errors:
        raise ConfigFileError(errors)
    return resolved


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("PrimaryBackup", "CategoryRouting", "ParallelSync") or part.startswith(
            ("primary_backup", "category_routing", "parallel_sync")
        ):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _merge(base: Any, overlay: Any) -> Any:
    """JSON merge patch (RFC 7386), with lists of objects with ``id`` merged by id."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base.get(key), value)
        return out
    if (
        isinstance(base, list)
        and isinstance(overlay, list)
        and all(isinstance(x, dict) and "id" in x for x in base + overlay)
    ):
        merged = {x["id"]: x for x in base}
        for item in overlay:
            merged[item["id"]] = _merge(merged.get(item["id"]), item)
        return list(merged.values())
    return overlay


def parse_config(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    overlay: Mapping[str, Any] | None = None,
    source: str = "",
) -> CrmConfig:
    """Validate a configuration tree; raise :class:`ConfigFileError` listing every bad path."""
    errors: list[tuple[str, str]] = []
    tree = _merge(dict(raw), dict(overlay)) if overlay else dict(raw)
    tree = _resolve_config_refs(tree, os.environ if env is None else env, errors)
    if errors:
        raise ConfigFileError(errors, source)
    try:
        config = CrmConfig.model_validate(tree, context={"vendors": vendor_catalog()})
    except ValidationError as exc:
        raise ConfigFileError(
            [(_loc(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()], source
        ) from None
    _check_semantics(config, errors)
    if errors:
        raise ConfigFileError(errors, source)
    return config


def _check_semantics(config: CrmConfig, errors: list[tuple[str, str]]) -> None:
    for index, integration in enumerate(config.crmIntegrations):
        try:
            build_adapter(integration)
        except AdapterConfigError as exc:
            where, message = f"crmIntegrations[{index}].config", exc.message
            if exc.code in ("unknown_key", "bad_setting"):  # "credentials.apiKy: unknown key; …"
                key, _, message = message.partition(": ")
                where = f"{where}.{key}"
            errors.append((where, message))
        mapped = set(integration.config.mappings)
        for a, action in enumerate(integration.rules.actions):
            if action.type == "create" and action.object and mapped and action.object not in mapped:
                errors.append(
                    (
                        f"crmIntegrations[{index}].rules.actions[{a}].object",
                        f"{action.object!r} has no mapping (mapped: {', '.join(sorted(mapped))})",
                    )
                )
    strategies: list[tuple[str, Strategy]] = []
    if config.strategy is not None:
        strategies.append(("strategy", config.strategy))
    for name, tenant in config.tenants.items():
        if tenant.strategy is not None:
            strategies.append((f"tenants.{name}.strategy", tenant.strategy))
        for i, ref in enumerate(tenant.integrations or []):
            if not config.resolve(ref):
                errors.append((f"tenants.{name}.integrations[{i}]", f"no enabled integration {ref!r}"))
    for path, strategy in strategies:
        for ref_path, ref in _strategy_refs(path, strategy):
            if not config.resolve(ref):
                errors.append((ref_path, f"no enabled integration with id or type {ref!r}"))
    if config.strategy is None and not config.enabled:
        errors.append(("crmIntegrations", "no enabled integration and no strategy"))


def _strategy_refs(path: str, strategy: Strategy) -> list[tuple[str, str]]:
    refs: list[tuple[str, str]] = []
    if isinstance(strategy, PrimaryBackup):
        ref = strategy.primary.id or strategy.primary.type or ""
        refs.append((f"{path}.primary", ref))
        fallback = strategy.primary.fallback
        for i, fb in enumerate([fallback] if isinstance(fallback, str) else fallback or []):
            refs.append((f"{path}.primary.fallback" + (f"[{i}]" if isinstance(fallback, list) else ""), fb))
    elif isinstance(strategy, CategoryRouting):
        for category, targets in strategy.routes.items():
            refs.extend((f"{path}.routes.{category}[{i}]", t) for i, t in enumerate(targets))
        refs.extend((f"{path}.default[{i}]", t) for i, t in enumerate(strategy.default or []))
    else:
        for i, target in enumerate(strategy.targets):
            refs.append((f"{path}.targets[{i}]", target.id or target.type or ""))
    return refs


def build_adapter(integration: Integration) -> Adapter:
    cls = adapter_class(integration.type)
    assert cls is not None  # checked by the model
    return cls(integration.id, integration.config)


# -- reading ----------------------------------------------------------------------------------

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64  # a real configuration nests about ten levels; recursion in the parsers is ~1000


class _TooHostile(ValueError):
    """A file the loader refuses before validating it: too big, too deep, or using aliases."""


class _ConfigYamlLoader(yaml.SafeLoader):
    """YAML without aliases (an alias bomb expands exponentially) and with a nesting cap."""

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _TooHostile(f"YAML aliases (*name) are not allowed ({_where(mark)})")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooHostile(f"nested deeper than {MAX_DEPTH} levels ({_where(mark)})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        return f"{exc.problem} ({_where(exc.problem_mark)})"
    return " ".join(str(exc).split())


def _check_depth(tree: Any) -> None:
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    raise _TooHostile(f"nested deeper than {MAX_DEPTH} levels")
                stack.append((child, depth + 1))


def _read(path: Path) -> Any:
    """A JSON or YAML file within the size and depth limits; raises ``_TooHostile`` as one line."""
    with path.open("rb") as handle:
        text = handle.read(MAX_FILE_BYTES + 1)
    if len(text) > MAX_FILE_BYTES:
        raise _TooHostile(f"larger than {MAX_FILE_BYTES // 1024} KiB")
    if path.suffix.lower() in (".yaml", ".yml"):
        loader = _ConfigYamlLoader(text)
        try:
            tree = loader.get_single_data()
        except yaml.YAMLError as exc:
            raise _TooHostile(f"not valid YAML: {_yaml_reason(exc)}") from None
        finally:
            loader.dispose()
    else:
        try:
            tree = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise _TooHostile(f"not valid JSON: {exc}") from None
    _check_depth(tree)
    return tree


def read_raw(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's tree as written (references unresolved), within the loader's limits."""
    source = Path(path)
    try:
        raw = _read(source)
    except OSError as exc:
        raise ConfigFileError([("", f"cannot read {source}: {exc.strerror}")], str(source)) from None
    except _TooHostile as exc:
        raise ConfigFileError([("", str(exc))], str(source)) from None
    if not isinstance(raw, dict):
        raise ConfigFileError([("", "the top level must be an object")], str(source))
    return raw


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    overlay_path: str | os.PathLike[str] | None = None,
    overlay: Mapping[str, Any] | None = None,
) -> CrmConfig:
    """Read, resolve and validate a JSON or YAML configuration file."""
    source = Path(path)
    raw = read_raw(source)
    patch: dict[str, Any] = {}
    if overlay_path:
        try:
            extra = _read(Path(overlay_path))
        except OSError as exc:
            raise ConfigFileError([("", f"cannot read overlay {overlay_path}: {exc.strerror}")], str(source)) from None
        except _TooHostile as exc:
            raise ConfigFileError([("", f"overlay {overlay_path}: {exc}")], str(source)) from None
        patch = _merge(patch, extra)
    if overlay:
        patch = _merge(patch, dict(overlay))
    return parse_config(raw, env=env, overlay=patch or None, source=str(source))
