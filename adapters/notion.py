"""Notion: create a page in a database's data source (API version ``2025-09-03``).

Base ``https://api.notion.com/v1``; ``Authorization: Bearer <integration token>`` (seed:
``authType: "integration_token"``, ``credentials.token``) and ``Notion-Version: 2025-09-03`` on every
request. That version splits databases into *data sources* and is not backwards compatible: pages
are created with ``parent: {"type": "data_source_id", ...}``. The seed names a ``databaseId``, so
the adapter reads ``GET /databases/{id}`` once for its data sources (``dataSourceName`` picks one
of several; ``dataSourceId`` skips the lookup) and ``GET /data_sources/{id}`` for the property
types; both are cached per integration. The database must be shared with the integration (404
``object_not_found`` otherwise).

``mappings.page.properties`` holds property values in Notion's shape (the seed's ``{"title":
[{"text": {"content": …}}]}``) or as plain values, which become the property's type from the data
source schema: title, rich_text, select, multi_select, status, date, email, phone_number, url,
number, checkbox, people. Rich text longer than 2,000 characters is split over several text
objects (at most 100, else a permanent error — never truncated silently); ``content`` becomes
paragraph blocks under the same limits. ``valueMaps["page.<property>"]`` maps our values (priority
low/medium/high/urgent …) onto a select's option names.

Errors: ``{"object": "error", "status", "code", "message"}``: 400 ``validation_error``, 401
``unauthorized``, 403 ``restricted_resource``, 404 ``object_not_found``, 409 ``conflict_error``
(retry), 429 ``rate_limited`` with ``Retry-After`` (seconds), 500/503/529 ``service_overload``.
Limits: documented as an average of 3 requests/s per connection with some bursts (newer docs: a
per-connection budget per 60 s window by plan plus a per-workspace limit, the one hit named in
``additional_data.rate_limit_reason``, which we keep in the message); we pace at 3/s and obey
``Retry-After``. 500 KB and 100 blocks per request.

Notion has no idempotency key. With ``dedupeProperty`` (a rich_text property) each page carries
``octopus-<24 hex of sha256(idempotency key)>`` there and :meth:`NotionAdapter.find_existing`
queries the data source for it; without it the daemon's ledger is the only guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, Delivered, DeliveryContext, IntegrationConfig
from octopus_crm.adapters.http import Request, Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import Bearer, CreateCall, Errors, SpecAdapter, VendorSpec, at_path
from octopus_crm.adapters.spec import dedupe_marker as spec_marker
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError, PermanentError

__all__ = ["NOTION_VERSION", "NotionAdapter", "dedupe_marker", "rich_text"]

NOTION_VERSION = "2025-09-03"
BASE_URL = "https://api.notion.com/v1"
TEXT_MAX = 2000
ITEMS_MAX = 100
_TEXT_TYPES = ("title", "rich_text")
_NAMED = ("select", "status")
_PLAIN = ("email", "phone_number", "url")


def dedupe_marker(idempotency_key: str) -> str:
    return spec_marker(idempotency_key, 24)


def _chunks(text: str) -> list[str]:
    return [text[i : i + TEXT_MAX] for i in range(0, len(text), TEXT_MAX)] or [""]


def rich_text(value: Any, where: str) -> list[dict[str, Any]]:
    """Text (or Notion rich-text items) as items of ≤ 2,000 characters, at most 100 of them."""
    items = value if isinstance(value, list) else [{"text": {"content": "" if value is None else str(value)}}]
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            item = {"text": {"content": str(item)}}
        text = item.get("text")
        if not isinstance(text, dict):
            out.append(item)
            continue
        content = text.get("content")
        for part in _chunks("" if content is None else str(content)):
            out.append({**item, "text": {**text, "content": part}})
    if len(out) > ITEMS_MAX:
        raise PermanentError(
            f"{where}: {len(out)} rich-text items of ≤{TEXT_MAX} characters, over Notion's {ITEMS_MAX}"
            " (shorten the text, e.g. {{messageContent|truncate:190000}})",
            code="text_too_long",
        )
    return out


def _names(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    return [str(v).strip() for v in items if v not in (None, "") and str(v).strip()]


def property_value(kind: str, value: Any, where: str) -> dict[str, Any] | None:
    """A plain rendered value as a Notion property value of type ``kind`` (None: leave unset)."""
    if kind in _TEXT_TYPES:
        return {kind: rich_text(value, where)}
    if value in (None, "", []):
        return None
    if kind in _NAMED:
        return {kind: {"name": str(value)}}
    if kind == "multi_select":
        return {kind: [{"name": n} for n in _names(value)]}
    if kind == "people":
        return {kind: [{"id": n} for n in _names(value)]}
    if kind == "date":
        start = value.isoformat() if isinstance(value, (datetime, date)) else str(value)
        return {kind: value if isinstance(value, dict) else {"start": start}}
    if kind in _PLAIN:
        return {kind: str(value)}
    if kind == "number":
        try:
            return {kind: float(value)}
        except (TypeError, ValueError):
            raise PermanentError(f"{where}: {value!r} is not a number", code="bad_value") from None
    if kind == "checkbox":
        return {kind: value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")}
    raise ConfigError(f"{where}: give a {kind} property in Notion's shape", code="bad_template")


def _shaped(value: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A value already in Notion's shape, with text split and unrendered parts left unset."""
    kind = value.get("type") if isinstance(value.get("type"), str) else next(iter(value), None)
    if kind is None:
        return None
    inner = value.get(kind)
    if kind in _TEXT_TYPES:
        return {**value, kind: rich_text(inner or [], where)}
    if kind in _NAMED and isinstance(inner, dict):
        return {**value, kind: inner if inner.get("name") or inner.get("id") else None}
    if kind == "date" and isinstance(inner, dict):
        return {**value, kind: inner if inner.get("start") else None}
    return value


def _error_message(response: Response) -> str:
    body = response.json()
    if isinstance(body, dict) and body.get("object") == "error":
        message = f"{body.get('message') or ''} ({body.get('code')})".strip()
        if body.get("code") == "object_not_found":
            message += "; is the database shared with the integration?"
        reason = at_path(body, ("additional_data", "rate_limit_reason"))
        if isinstance(reason, str) and reason:
            message += f" [{reason[:80]}]"
        return message
    return response.text[:500]


class NotionCredentials(Credentials):
    token: SecretStr | None = alias("token", "integrationToken", "accessToken", description="Integration token.")


class NotionEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description=f"Default {BASE_URL}.")


class NotionSettings(VendorSettings):
    credentials: NotionCredentials = Field(default_factory=NotionCredentials)
    endpoints: NotionEndpoints = Field(default_factory=NotionEndpoints)
    databaseId: str | None = alias("databaseId", "database_id", description="The database to add pages to.")
    dataSourceId: str | None = alias("dataSourceId", "data_source_id", description="Skip the data-source lookup.")
    dataSourceName: str | None = Field(default=None, description="Which data source of a database with several.")
    dedupeProperty: str | None = Field(default=None, description="A rich_text property for the dedupe marker.")


@dataclass(frozen=True)
class DataSource:
    id: str
    types: Mapping[str, str]  # property name → type


SPEC = VendorSpec(
    auth={"integration_token": Bearer(("token", "integrationToken", "accessToken"))},
    default_auth="integration_token",
    objects={
        "page": CreateCall(
            "pages",
            body=lambda adapter, fields, event, ctx: adapter.page_body(fields, ctx),
            url_at=("url",),
            what="a page id",
        )
    },
    errors=Errors(message=_error_message, status={409: "retryable"}),
    headers={"Notion-Version": NOTION_VERSION, "Accept": "application/json"},
)


class NotionAdapter(SpecAdapter):
    info = AdapterInfo(
        type="notion",
        display_name="Notion",
        display_name_zh="Notion",
        object_types=("page",),
        auth_types=("integration_token",),
        rate_limit=RateLimit(requests=3, perSeconds=1, concurrency=3),
        idempotency="dedupeProperty: a marker property queried after an ambiguous create; else ledger only",
        docs="https://developers.notion.com/reference/post-page",
        max_body_bytes=500 * 1000,
    )
    settings_model = NotionSettings
    spec = SPEC
    default_base_url = BASE_URL

    def __init__(self, integration_id: str, config: IntegrationConfig) -> None:
        super().__init__(integration_id, config)
        self._source: DataSource | None = None
        self._lock = asyncio.Lock()  # one discovery at a time; bound to a loop only when first awaited
        page = config.mappings.get("page", {})
        given = page.get("properties", page)
        self._plain_properties = frozenset(k for k, v in given.items() if not isinstance(v, dict) and k != "content")

    @property
    def notion(self) -> NotionSettings:
        assert isinstance(self.settings, NotionSettings)
        return self.settings

    @property
    def base_url(self) -> str:
        root = super().base_url
        return root if root.endswith("/v1") else f"{root}/v1"

    def validate_config(self) -> None:
        super().validate_config()
        if not (self.notion.databaseId or self.notion.dataSourceId):
            raise ConfigError("databaseId is required (or dataSourceId)", code="missing_field")
        page = self.config.mappings.get("page")
        if not isinstance(page, dict) or not isinstance(page.get("properties", page), dict):
            raise ConfigError("mappings.page.properties must be an object", code="bad_template")

    async def data_source(self, stale: DataSource | None = None) -> DataSource:
        """The data source pages go to, and its property types (read once, then cached; read
        again when ``stale`` is the cached one)."""
        if self._source is not None and self._source is not stale:
            return self._source
        async with self._lock:
            if self._source is None or self._source is stale:
                known = self._source.id if self._source is not None else None
                source_id = known or self.notion.dataSourceId or await self._discover()
                response = await self.http.send(Request("GET", f"data_sources/{source_id}"))
                properties = response.field("properties")
                types = {
                    str(name): str(p.get("type"))
                    for name, p in (properties.items() if isinstance(properties, dict) else ())
                    if isinstance(p, dict)
                }
                self._source = DataSource(source_id, types)
        return self._source

    async def _discover(self) -> str:
        database = self.notion.databaseId
        response = await self.http.send(Request("GET", f"databases/{database}"))
        sources = [s for s in response.field("data_sources") or [] if isinstance(s, dict) and s.get("id")]
        wanted = self.notion.dataSourceName
        chosen = [s for s in sources if wanted is None or s.get("name") == wanted]
        if len(chosen) != 1:
            names = ", ".join(repr(s.get("name")) for s in sources) or "none"
            raise ConfigError(
                f"database {database} has data sources {names}: set dataSourceName or dataSourceId",
                code="ambiguous_data_source",
            )
        return str(chosen[0]["id"])

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        source = await self.data_source()
        if not self._plain_properties <= set(source.types):  # a property added since we read the schema
            await self.data_source(stale=source)
        return await super().create(event, object_type, ctx)

    def page_body(self, rendered: dict[str, Any], ctx: DeliveryContext) -> dict[str, Any]:
        """The rendered mapping as a create-page body under the data source."""
        assert self._source is not None
        source = self._source
        nested = isinstance(rendered.get("properties"), dict)
        given = rendered["properties"] if nested else rendered
        properties: dict[str, Any] = {}
        for name, value in given.items():
            where = f"mappings.page.properties.{name}"
            table = self._value_maps.get(f"page.{name}", {})
            if isinstance(value, str) and value in table:
                value = table[value]
            if isinstance(value, dict):
                if isinstance(value.get("select"), dict) and value["select"].get("name") in table:
                    value = {**value, "select": {**value["select"], "name": table[value["select"]["name"]]}}
                shaped = _shaped(value, where)
            elif name in source.types:
                shaped = property_value(source.types[name], value, where)
            else:
                raise PermanentError(f"{where}: no such property in the data source", code="unknown_property")
            if shaped is not None:
                properties[name] = shaped
        if marker_property := self.notion.dedupeProperty:
            properties[marker_property] = {"rich_text": rich_text(dedupe_marker(ctx.idempotency_key), "marker")}
        body: dict[str, Any] = {"parent": {"type": "data_source_id", "data_source_id": source.id}}
        body["properties"] = properties
        extras = {k: v for k, v in rendered.items() if k in ("children", "icon", "cover")} if nested else {}
        body.update(extras)
        if nested and rendered.get("content"):
            blocks = [
                {"type": "paragraph", "paragraph": {"rich_text": rich_text(p, "content")}}
                for p in str(rendered["content"]).replace("\r\n", "\n").split("\n\n")
                if p.strip()
            ]
            body["children"] = [*body.get("children", []), *blocks]
        if len(body.get("children", [])) > ITEMS_MAX:
            raise PermanentError(f"content: over Notion's {ITEMS_MAX} blocks per request", code="text_too_long")
        return body

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        marker_property = self.notion.dedupeProperty
        if not marker_property:
            return None
        source = await self.data_source()
        query = {
            "filter": {"property": marker_property, "rich_text": {"equals": dedupe_marker(ctx.idempotency_key)}},
            "page_size": 1,
        }
        response = await self.http.send(Request("POST", f"data_sources/{source.id}/query", json=query))
        results = response.field("results")
        if not isinstance(results, list) or not results:
            return None
        return self.create_call(object_type).delivered_from(self, results[0], {}, None)

    async def test_connection(self) -> None:
        """Reading the database (or data source) proves the token and that it is shared."""
        path = f"data_sources/{self.notion.dataSourceId}" if self.notion.dataSourceId else None
        await self.http.send(Request("GET", path or f"databases/{self.notion.databaseId}", paced=False))
