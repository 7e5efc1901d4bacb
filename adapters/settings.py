"""Typed per-vendor settings: every key an integration's ``config`` may carry, declared once.

Each adapter declares a :class:`VendorSettings` subclass (its ``Settings``): which ``authType``
values it takes, its ``credentials`` (secrets as :class:`~pydantic.SecretStr`), ``endpoints`` and
top-level extra keys, with the seed's other spellings as aliases. Unknown keys are refused at load
with a "did you mean" (a typo in a customer's config surfaces at ``validate-config``, not at the
first event); the same models give the JSON Schema that ``octopus-crm adapters --json`` and
``GET /api/crm/supported`` serve and the README's per-target table.

Fields are optional here: which credentials an auth type needs is checked by the adapter, with
the messages users already know (``credentials.clientId is required``).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.core.errors import ConfigError

__all__ = [
    "Credentials",
    "Endpoints",
    "Url",
    "VendorSettings",
    "alias",
    "check_settings",
    "settings_schema",
]

#: A URL; checked by the URL guard (adapters/urlguard.py), which knows about private addresses.
Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]

_Strict = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def alias(*names: str, description: str = "", default: Any = None) -> Any:
    """A field that also accepts the seed's other spellings (``appId`` / ``app_id``)."""
    return Field(
        default=default,
        validation_alias=AliasChoices(*names),
        description=description or None,
        json_schema_extra={"x-aliases": list(names[1:])},
    )


class Credentials(BaseModel):
    """``config.credentials``: secrets are :class:`SecretStr`, identifiers plain strings."""

    model_config = _Strict


class Endpoints(BaseModel):
    """``config.endpoints``: URLs and switches every HTTP vendor shares."""

    model_config = _Strict

    allowPrivateNetwork: bool | str = Field(
        default=False, description="Allow a private or loopback address (test servers, on-premises)."
    )


class VendorSettings(BaseModel):
    """One integration's ``config`` block for one vendor; subclasses narrow the sections."""

    model_config = _Strict

    authType: str | None = Field(default=None, description="How to authenticate (see the vendor's auth types).")
    credentials: Credentials = Field(default_factory=Credentials)
    endpoints: Endpoints = Field(default_factory=Endpoints)
    mappings: dict[str, Any] = Field(default_factory=dict, description="Object type → field template.")
    rateLimit: RateLimit | None = None
    timeouts: dict[str, float] = Field(default_factory=dict, description="connect / read seconds.")
    valueMaps: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Enum tables, e.g. {'case.priority': {'urgent': 'High'}}."
    )


def _plain(value: Any) -> Any:
    """The configuration as written: the integration model already wrapped secrets."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _known_keys(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """A model's accepted keys (names and aliases) → the nested model, if the key holds one."""
    keys: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        nested = (
            info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) else None
        )
        names = [name]
        if isinstance(info.validation_alias, AliasChoices):
            names += [c for c in info.validation_alias.choices if isinstance(c, str)]
        for key in names:
            keys[key] = nested
    return keys


def _section_model(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str):
            return None
        current = _known_keys(current).get(part)
    return current


def _unknown_key_message(model: type[VendorSettings], loc: tuple[int | str, ...]) -> str:
    *section, key = (str(p) for p in loc)
    where = ".".join((*section, key))
    parent = _section_model(model, tuple(section))
    if parent is None:
        return f"{where}: unknown key"
    known = _known_keys(parent)
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"{where}: unknown key; did you mean {'.'.join((*section, close[0]))}?"
    for other in ("credentials", "endpoints", ""):  # the right key in the wrong section
        other_model = _section_model(model, (other,) if other else ())
        if other_model is not None and other_model is not parent and key in _known_keys(other_model):
            return f"{where}: unknown key; did you mean {f'{other}.' if other else ''}{key}?"
    return f"{where}: unknown key (known: {', '.join(sorted(known))})"


def check_settings(model: type[VendorSettings], config: BaseModel) -> VendorSettings:
    """``config`` (an ``IntegrationConfig``) validated against ``model``; raise :class:`ConfigError`."""
    raw = _plain({**config.model_dump(exclude_unset=True), **(config.model_extra or {})})
    try:
        settings = model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "extra_forbidden":
            raise ConfigError(_unknown_key_message(model, error["loc"]), code="unknown_key") from None
        where = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"{where}: {error['msg']}", code="bad_setting") from None
    return settings


def settings_schema(model: type[VendorSettings], auth_types: tuple[str, ...]) -> dict[str, Any]:
    """The JSON Schema of one vendor's ``config`` block (what its integrations accept)."""
    schema = model.model_json_schema(by_alias=True)
    schema["properties"]["authType"] = {
        "anyOf": [{"enum": list(auth_types)}, {"type": "null"}],
        "default": None,
        "description": "How to authenticate (the adapter checks which credentials each needs).",
    }
    return schema
