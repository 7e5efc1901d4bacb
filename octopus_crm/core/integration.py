"""The ``config`` block of one ``crmIntegrations`` entry, as every adapter receives it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from octopus_crm.core.errors import ConfigError
from octopus_crm.core.policies import RateLimit

__all__ = ["Credential", "IntegrationConfig"]

Credential = SecretStr | bool | int | float | None


class IntegrationConfig(BaseModel):
    """The ``config`` block of one ``crmIntegrations`` entry (the seed's shape).

    Vendor-specific keys (``databaseId``, ``boardId``, ``domain`` …) are kept as extras and read
    by the adapter's own settings model.
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    authType: str | None = None
    credentials: dict[str, Credential] = Field(default_factory=dict)
    endpoints: dict[str, Any] = Field(default_factory=dict)
    mappings: dict[str, Any] = Field(default_factory=dict)
    rateLimit: RateLimit | None = None
    timeouts: dict[str, float] = Field(default_factory=dict)
    valueMaps: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per object field value tables, e.g. {'case.priority': {'urgent': 'High'}}",
    )

    def secret(self, name: str, *aliases: str, required: bool = True) -> str:
        """A credential's plain value, for the moment a request is built."""
        for key in (name, *aliases):
            value = self.credentials.get(key)
            if isinstance(value, SecretStr):
                return value.get_secret_value()
            if value is not None and not isinstance(value, bool):
                return str(value)
        if required:
            raise ConfigError(f"credentials.{name} is required", code="missing_credential")
        return ""

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.credentials.get(name, self.endpoints.get(name, default))
        if isinstance(value, SecretStr):
            return value.get_secret_value().lower() in ("1", "true", "yes")
        return bool(value)

    def extra(self, name: str, default: Any = None) -> Any:
        return (self.model_extra or {}).get(name, default)
