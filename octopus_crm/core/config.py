"""The configuration schema: the seed's ``crmIntegrations`` and strategy blocks as frozen models.

Reading files, ``${ENV}`` references, overlays and the semantic checks live in the daemon
(``octopus_crm.daemon.config``); this module only says what a valid configuration looks like. What the schema
needs to know of the registered vendors (which type names exist, which are aliases of one
another, what an integration without mappings delivers) comes in as a :class:`VendorCatalog`,
passed as the validation context ``{"vendors": catalog}`` by whoever owns the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from octopus_crm.core.integration import IntegrationConfig
from octopus_crm.core.patterns import pattern_error
from octopus_crm.core.policies import BreakerPolicy, RetryPolicy

__all__ = [
    "Action",
    "CategoryRouting",
    "Condition",
    "CrmConfig",
    "Integration",
    "ParallelSync",
    "ParallelTarget",
    "PrimaryBackup",
    "PrimaryBackupRules",
    "PrimaryRef",
    "Rules",
    "Strategy",
    "Tenant",
    "VendorCatalog",
]


@dataclass(frozen=True)
class VendorCatalog:
    """The registered vendors as the schema and the routing see them.

    ``kinds`` maps every type name and alias to its canonical type (``wework`` → ``wecom``);
    ``unmapped`` gives, per canonical type, the object types an integration without mappings
    delivers (a plain webhook delivers its first object).
    """

    kinds: Mapping[str, str]
    unmapped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def kind(self, type_name: str) -> str | None:
        return self.kinds.get(type_name)

    def same(self, a: str, b: str) -> bool:
        """Two type names of one vendor (a type and its alias)."""
        kind = self.kinds.get(a)
        return kind is not None and kind == self.kinds.get(b)

    def unmapped_default(self, type_name: str) -> tuple[str, ...]:
        kind = self.kinds.get(type_name)
        return self.unmapped.get(kind, ()) if kind is not None else ()


def _vendors(info: ValidationInfo) -> VendorCatalog | None:
    context: Any = info.context
    vendors = context.get("vendors") if isinstance(context, Mapping) else None
    return vendors if isinstance(vendors, VendorCatalog) else None


_Frozen = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Condition(BaseModel):
    """One predicate on the event: ``{"field": "category", "operator": "in", "value": [...]}``."""

    model_config = _Frozen

    field: str
    operator: Literal[
        "eq", "ne", "in", "not_in", "contains", "not_contains", "regex", "gt", "gte", "lt", "lte", "exists"
    ] = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _check_regex(self) -> Condition:
        if self.operator == "regex":
            error = pattern_error(str(self.value))
            if error is not None:
                raise ValueError(error)
        return self


class Action(BaseModel):
    """What to do when ``when`` matches: create an object type, skip, or override fields."""

    model_config = _Frozen

    type: Literal["create", "skip", "set"] = "create"
    object: str | None = None
    when: dict[str, Any] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None


class Rules(BaseModel):
    model_config = _Frozen

    match: Literal["all", "any"] = "all"
    conditions: list[Condition] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)


class Integration(BaseModel):
    """One entry of ``crmIntegrations``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    name: str | None = None
    type: str
    enabled: bool = True
    priority: int = 100
    tenants: list[str] | None = Field(
        default=None, description="Only these tenants may use this integration (default: all)."
    )
    ordered: bool = Field(default=True, description="Keep per-key order for this target.")
    retry: RetryPolicy | None = None
    circuitBreaker: BreakerPolicy | None = None
    config: IntegrationConfig = Field(default_factory=IntegrationConfig)
    rules: Rules = Field(default_factory=Rules)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str, info: ValidationInfo) -> str:
        vendors = _vendors(info)
        if vendors is not None and vendors.kind(value) is None:
            raise ValueError(f"unknown integration type {value!r}; known: {', '.join(sorted(vendors.kinds))}")
        return value


class PrimaryRef(BaseModel):
    model_config = _Frozen

    type: str | None = None
    id: str | None = None
    fallback: str | list[str] | None = None

    @model_validator(mode="after")
    def _one_ref(self) -> PrimaryRef:
        if not (self.type or self.id):
            raise ValueError("primary needs 'id' or 'type'")
        return self


class PrimaryBackupRules(BaseModel):
    model_config = _Frozen

    if_primary_fails: Literal["use_backup", "fail"] = "use_backup"
    sync_back: bool = False


class PrimaryBackup(BaseModel):
    model_config = _Frozen

    strategy: Literal["primary_backup"]
    primary: PrimaryRef
    rules: PrimaryBackupRules = Field(default_factory=PrimaryBackupRules)


class CategoryRouting(BaseModel):
    model_config = _Frozen

    strategy: Literal["category_routing"]
    routes: dict[str, list[str]]
    default: list[str] | None = None
    mode: Literal["all", "first_available"] = Field(
        default="all",
        description="all: deliver to every listed target; first_available: the first that "
        "succeeds, the others as fallbacks.",
    )


class ParallelTarget(BaseModel):
    model_config = _Frozen

    type: str | None = None
    id: str | None = None
    objects: list[str] | None = None
    channels: list[str] | None = None
    recipients: list[str] | None = None

    @model_validator(mode="after")
    def _one_ref(self) -> ParallelTarget:
        if not (self.type or self.id):
            raise ValueError("target needs 'id' or 'type'")
        return self


class ParallelSync(BaseModel):
    model_config = _Frozen

    strategy: Literal["parallel_sync"]
    targets: list[ParallelTarget]


Strategy = Annotated[PrimaryBackup | CategoryRouting | ParallelSync, Field(discriminator="strategy")]


class Tenant(BaseModel):
    model_config = _Frozen

    strategy: Strategy | None = None
    integrations: list[str] | None = Field(
        default=None, description="Integration ids or types this tenant may use (default: all)."
    )


class CrmConfig(BaseModel):
    """The whole file. ``adapters`` holds one built adapter per enabled integration id."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    crmIntegrations: list[Integration]
    strategy: Strategy | None = None
    tenants: dict[str, Tenant] = Field(default_factory=dict)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    schema_: str | None = Field(default=None, alias="$schema")
    _vendors: VendorCatalog = PrivateAttr(default_factory=lambda: VendorCatalog({}))

    @model_validator(mode="after")
    def _unique_ids(self, info: ValidationInfo) -> CrmConfig:
        self._vendors = _vendors(info) or VendorCatalog({})
        seen: set[str] = set()
        for index, integration in enumerate(self.crmIntegrations):
            if integration.id in seen:
                raise ValueError(f"crmIntegrations[{index}].id: duplicate id {integration.id!r}")
            seen.add(integration.id)
        return self

    @property
    def enabled(self) -> list[Integration]:
        return sorted((i for i in self.crmIntegrations if i.enabled), key=lambda i: i.priority)

    def integration(self, integration_id: str) -> Integration:
        for integration in self.crmIntegrations:
            if integration.id == integration_id:
                return integration
        raise KeyError(integration_id)

    def resolve(self, ref: str, *, tenant: str | None = None) -> list[Integration]:
        """Integrations a strategy reference names: an id, else every enabled one of that type."""
        by_id = [i for i in self.crmIntegrations if i.id == ref]
        if by_id:
            return by_id
        return [i for i in self.enabled if i.type == ref or self._vendors.same(i.type, ref)]

    @property
    def vendors(self) -> VendorCatalog:
        """The vendor facts this configuration was validated against (see :class:`VendorCatalog`)."""
        return self._vendors
