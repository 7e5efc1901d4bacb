"""The adapter contract and the integration configuration every adapter receives.

An adapter describes one vendor: its :class:`AdapterInfo` (names, object types, auth types,
default rate limit), how to authenticate, how to build the create request for each object type,
how to read the created record's id and URL, and how the vendor reports errors. The HTTP engine,
token cache, limiter and templates come from the kit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import SecretStr

from octopus_crm.adapters.fleet import FleetStore
from octopus_crm.adapters.http import DEFAULT_MAX_BODY_BYTES, HttpClient, Response, Timeouts, classify_status
from octopus_crm.adapters.ratelimit import Limiter, RateLimit
from octopus_crm.adapters.settings import VendorSettings, check_settings
from octopus_crm.adapters.templates import Compiled, TemplateError, compile_template
from octopus_crm.adapters.urlguard import allows_private_network, url_problem
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError, DeliveryError, PermanentError
from octopus_crm.core.integration import IntegrationConfig
from octopus_crm.core.variables import EventVars

__all__ = [
    "PRIORITY_TITLE",
    "PRIORITY_UPPER",
    "Adapter",
    "AdapterInfo",
    "BodyCodes",
    "Delivered",
    "DeliveryContext",
    "HttpAdapter",
    "IntegrationConfig",
]


@dataclass(frozen=True)
class AdapterInfo:
    type: str
    display_name: str
    display_name_zh: str
    object_types: tuple[str, ...]
    auth_types: tuple[str, ...]
    rate_limit: RateLimit
    aliases: tuple[str, ...] = ()
    idempotency: str = "ledger only"
    docs: str = ""
    #: Largest rendered request body; a vendor's documented limit where there is one.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


@dataclass(frozen=True)
class Delivered:
    """A record that exists in the target: its id, and a URL a person can open."""

    external_id: str
    external_url: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryContext:
    """What one attempt knows beyond the event: a stable key for (event, integration, object)."""

    idempotency_key: str
    attempt: int = 1
    integration_id: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)


# Our priority vocabulary onto common vendor enums; adapters pick one, config can override.
PRIORITY_TITLE = {"low": "Low", "medium": "Medium", "high": "High", "urgent": "High"}
PRIORITY_UPPER = {"low": "LOW", "medium": "MEDIUM", "high": "HIGH", "urgent": "HIGH"}


@dataclass(frozen=True)
class BodyCodes:
    """Errors delivered as HTTP 200 with a code in the body (WeCom, DingTalk, Feishu, Slack).

    ``field`` holds the code, ``ok`` the success value; code sets say which codes mean an expired
    token (refresh and retry), rate limiting, a quota, a transient fault, or bad credentials.
    Everything else is permanent, with the vendor's message kept.
    """

    field: str
    ok: Any
    message_field: str
    token_expired: frozenset[Any] = frozenset()
    rate_limited: frozenset[Any] = frozenset()
    quota: frozenset[Any] = frozenset()
    retryable: frozenset[Any] = frozenset()
    auth: frozenset[Any] = frozenset()
    quota_retry_after: float = 3600.0

    def classify(self, response: Response) -> DeliveryError | None:
        from octopus_crm.adapters.http import parse_retry_after
        from octopus_crm.core.errors import (
            AuthError,
            QuotaExhaustedError,
            RateLimitedError,
            RetryableError,
            TokenExpiredError,
        )

        body = response.json()
        if not isinstance(body, dict) or self.field not in body:
            return classify_status(response)
        code = body.get(self.field)
        if not isinstance(code, (str, int, float, bool, type(None))):
            code = str(code)  # a vendor answering with a list or object still gets classified
        if code == self.ok:
            return classify_status(response)
        message = f"{body.get(self.message_field) or ''} ({self.field}={code})".strip()
        label = f"{self.field}_{code}"
        status = response.status
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if code in self.token_expired:
            return TokenExpiredError(message, code=label, status=status)
        if code in self.rate_limited:
            return RateLimitedError(message, code=label, status=status, retry_after=retry_after)
        if code in self.quota:
            return QuotaExhaustedError(
                message, code=label, status=status, retry_after=retry_after or self.quota_retry_after
            )
        if code in self.retryable or status >= 500:
            return RetryableError(message, code=label, status=status, retry_after=retry_after)
        if code in self.auth:
            return AuthError(message, code=label, status=status)
        return PermanentError(message, code=label, status=status)


class Adapter(ABC):
    """One configured integration instance of a vendor."""

    info: ClassVar[AdapterInfo]
    #: Every key this vendor's ``config`` takes (None: not declared, nothing refused).
    settings_model: ClassVar[type[VendorSettings] | None] = None
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, integration_id: str, config: IntegrationConfig) -> None:
        self.integration_id = integration_id
        self.config = config
        self.settings = check_settings(self.settings_model, config) if self.settings_model is not None else None
        self.templates: dict[str, Compiled] = {}
        for object_type, mapping in config.mappings.items():
            try:
                self.templates[object_type] = compile_template(mapping, f"mappings.{object_type}")
            except TemplateError as exc:
                raise ConfigError(str(exc), code="bad_template") from None
        self._value_maps = {**self.value_maps, **config.valueMaps}
        self._maps_by_type: dict[str, tuple[tuple[str, Mapping[str, Any]], ...]] = {}
        self.validate_config()

    #: Whether an integration may have no mappings at all (a webhook then posts the whole event).
    allows_unmapped: ClassVar[bool] = False

    def validate_config(self) -> None:
        """Check vendor-specific settings at load time; raise :class:`ConfigError`."""
        if not self.config.mappings and not self.allows_unmapped:
            raise ConfigError(
                f"mappings: {self.info.type} needs at least one object mapping ({', '.join(self.object_types())})",
                code="missing_mapping",
            )
        for object_type in self.config.mappings:
            if object_type not in self.object_types():
                raise ConfigError(
                    f"mappings.{object_type}: {self.info.type} has no object type {object_type!r}"
                    f" (known: {', '.join(self.object_types())})",
                    code="unknown_object_type",
                )

    def object_types(self) -> tuple[str, ...]:
        return self.info.object_types

    def render(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext | None = None) -> dict[str, Any]:
        """The mapping for ``object_type`` rendered for ``event``, rule overrides and vendor
        enums applied."""
        template = self.templates.get(object_type)
        if template is None:
            raise ConfigError(
                f"{self.integration_id}: no mapping for object type {object_type!r}",
                code="missing_mapping",
            )
        fields = template.render_vars(EventVars(event))
        if not isinstance(fields, dict):
            raise ConfigError(f"mappings.{object_type} must be an object", code="bad_template")
        if ctx is not None and ctx.overrides:
            fields.update(ctx.overrides)
        maps = self._maps_by_type.get(object_type)
        if maps is None:
            maps = self._maps_by_type[object_type] = self._maps_for(object_type)
        for name, table in maps:
            value = fields.get(name)
            if isinstance(value, str):
                fields[name] = table.get(value, table.get(value.lower(), value))
        return fields

    def _maps_for(self, object_type: str) -> tuple[tuple[str, Mapping[str, Any]], ...]:
        """(field, table) of the value maps that apply to ``object_type``, in their order."""
        maps = []
        for key, table in self._value_maps.items():
            obj, _, name = key.rpartition(".")
            if not obj or obj == object_type:
                maps.append((name, table))
        return tuple(maps)

    def current_limiter(self) -> Limiter | None:
        """This integration's limiter, so the dispatcher can see a pause or a backlog."""
        return None

    #: Where fleet-wide limits live (the daemon sets it before ``start``); None: this process only.
    fleet: FleetStore | None = None

    @property
    def limit_scope(self) -> str:
        """What the vendor's limit counts (one fleet-wide schedule per scope): this integration
        instance, unless the vendor counts per account or token (see HubSpot, Slack)."""
        return self.integration_id

    def new_limiter(self, limit: RateLimit) -> Limiter:
        """A limiter shared by every replica when a fleet store is set, else this process's."""
        return self.fleet.limiter(limit, self.limit_scope) if self.fleet is not None else Limiter(limit)

    async def start(self) -> None:
        """Open clients; called inside the running loop."""

    async def aclose(self) -> None:
        """Close clients."""

    @abstractmethod
    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        """Create the record for ``event``; raise a :class:`DeliveryError` on failure."""

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        """Look up a record an earlier, ambiguous attempt may have created (None: can't tell)."""
        return None

    @abstractmethod
    async def test_connection(self) -> None:
        """The cheapest authenticated call the vendor offers; raise on failure."""


class HttpAdapter(Adapter):
    """An adapter over the shared HTTP engine; subclasses set ``self.http`` up in ``make_http``."""

    base_url_key: ClassVar[str] = "baseUrl"
    default_base_url: ClassVar[str] = ""

    def __init__(self, integration_id: str, config: IntegrationConfig) -> None:
        super().__init__(integration_id, config)
        self._http: HttpClient | None = None
        self._check_urls()

    @property
    def allow_private_network(self) -> bool:
        return allows_private_network(self.config.endpoints)

    def _check_urls(self) -> None:
        """Every configured URL (``endpoints.*Url``, ``credentials.*Url``, the base URL) is
        http(s) with a host, and not a literal private address unless allowed."""
        allow = self.allow_private_network
        candidates = [("endpoints", k, v) for k, v in self.config.endpoints.items()]
        candidates += [("credentials", k, v) for k, v in self.config.credentials.items()]
        for section, key, value in candidates:
            if not key.lower().endswith("url") or value is None or isinstance(value, bool):
                continue
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            problem = url_problem(text, allow_private=allow)
            if problem is not None:
                shown = problem if section == "endpoints" else "must be a public http(s) URL (value not shown)"
                raise ConfigError(f"{section}.{key}: {shown}", code="bad_url")
        if self.base_url and (problem := url_problem(self.base_url, allow_private=allow)) is not None:
            raise ConfigError(f"endpoints.{self.base_url_key}: {problem}", code="bad_url")

    @property
    def base_url(self) -> str:
        return str(self.config.endpoints.get(self.base_url_key) or self.default_base_url).rstrip("/")

    @property
    def rate_limit(self) -> RateLimit:
        return self.config.rateLimit or self.info.rate_limit

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(**self.config.timeouts) if self.config.timeouts else Timeouts()

    @property
    def http(self) -> HttpClient:
        if self._http is None:
            self._http = self.make_http(self.new_limiter(self.rate_limit))
            self._http.max_body_bytes = self.info.max_body_bytes
            self._http.allow_private_network = self.allow_private_network
        return self._http

    @abstractmethod
    def make_http(self, limiter: Limiter) -> HttpClient:
        """Build this integration's client: base URL, auth scheme, error classifier."""

    def current_limiter(self) -> Limiter | None:
        return self.http.limiter

    async def start(self) -> None:
        _ = self.http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
