"""monday.com: create an item on a board with the GraphQL mutation ``create_item``.

One endpoint, ``POST https://api.monday.com/v2``, the API token in ``Authorization`` as is (seed:
``authType: "api_token"``, ``credentials.token``) and the pinned ``API-Version`` header (config
``apiVersion``; default 2025-07, the version whose error format is classified here). The seed's
mapping ``item: {name, columnValues: {column id: value}}`` becomes ``create_item(board_id:
$boardId, item_name: name, group_id, column_values, create_labels_if_missing)``; ``column_values``
is a *JSON-encoded string* keyed by column id. Plain strings are what monday accepts for text,
status (a label), date (``YYYY-MM-DD[ HH:MM:SS]``) columns, so ISO date-times (``{{receivedAt}}``)
are written as ``YYYY-MM-DD HH:MM:SS`` UTC; value maps apply per column (``item.priority``).
A status label the board lacks is refused unless ``createLabelsIfMissing`` (needs board rights).

Errors: application errors come with HTTP 200 and ``errors[]`` (``extensions.code``, possibly
partial ``data``: an error only on the side field ``complexity`` does not fail a created item);
transport errors with 4xx/5xx; older answers carry a top-level ``error_code``.
Rate limiting: ``COMPLEXITY_BUDGET_EXHAUSTED``/``ComplexityException`` (with
``extensions.retry_in_seconds``), the minute limit ``RATE_LIMIT_EXCEEDED``, concurrency
``maxConcurrencyExceeded``, ``IP_RATE_LIMIT_EXCEEDED``; ``DAILY_LIMIT_EXCEEDED`` is a quota
(resets at midnight UTC). Each mutation also selects ``complexity { query after reset_in_x_seconds }``
and the integration pauses before the next item would overspend the per-minute budget.

Default rate: the smallest complexity budget (1M points a minute on trial/free personal tokens)
over ~10,000 points per ``create_item`` is 100 items a minute; monday asks not to run mutations on
one board concurrently, so one at a time. Paid plans may raise ``rateLimit``; the budget read from
each answer still holds the integration back.

Idempotency: none at the vendor. With ``dedupeColumn`` (a text column id) each item carries
``octopus-<16 hex of sha256(key)>`` there and :meth:`find_existing` looks it up with
``items_page_by_column_values``; without it only the daemon's ledger prevents a second item.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext
from octopus_crm.adapters.graphql import Budget, GraphQLAdapter, GraphQLErrors, Lookup, body_number, graphql_create
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import ApiKeyHeader, Errors, VendorSpec
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError

__all__ = ["CREATE", "LOOKUP", "PROBE", "MondayAdapter", "dedupe_marker"]

API_URL = "https://api.monday.com/v2"
API_VERSION = "2025-07"
NAME_MAX = 255
COMPLEXITY = "complexity { query after reset_in_x_seconds }"
CREATE = f"""mutation CreateItem($board: ID!, $name: String!, $group: String, $columns: JSON, $labels: Boolean) {{
  create_item(board_id: $board, item_name: $name, group_id: $group, column_values: $columns,
              create_labels_if_missing: $labels) {{ id url }}
  {COMPLEXITY}
}}"""
LOOKUP = f"""query FindItem($board: ID!, $column: String!, $marker: String!) {{
  items_page_by_column_values(board_id: $board, limit: 1,
                              columns: [{{column_id: $column, column_values: [$marker]}}]) {{ items {{ id url }} }}
  {COMPLEXITY}
}}"""
PROBE = "query Me { me { id } }"

# The default priority column's labels.
PRIORITY_MONDAY = {"low": "Low", "medium": "Medium", "high": "High", "urgent": "Critical ⚠️"}
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def dedupe_marker(idempotency_key: str) -> str:
    return "octopus-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


class MondayCredentials(Credentials):
    token: SecretStr | None = alias("token", "apiToken", "api_token", "apiKey", description="API token.")


class MondayEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description=f"GraphQL endpoint (default {API_URL}).")


class MondaySettings(VendorSettings):
    credentials: MondayCredentials = Field(default_factory=MondayCredentials)
    endpoints: MondayEndpoints = Field(default_factory=MondayEndpoints)
    boardId: str | int | None = alias("boardId", "board_id", description="The board's id (required).")
    groupId: str | None = alias("groupId", "group_id", description="Group new items go to (default: the top one).")
    apiVersion: str = alias("apiVersion", "api_version", default=API_VERSION, description="API-Version header.")
    createLabelsIfMissing: bool = alias(
        "createLabelsIfMissing", "create_labels_if_missing", default=False, description="Add unknown status labels."
    )
    dedupeColumn: str | None = alias(
        "dedupeColumn", "dedupe_column", description="Text column holding a marker to find an item again."
    )


def _cell(value: Any) -> Any:
    if isinstance(value, str) and _ISO_DATETIME.match(value):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        when = when.astimezone(UTC) if when.tzinfo else when
        return when.strftime("%Y-%m-%d %H:%M:%S")
    return value


def _variables(adapter: MondayAdapter, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    settings = adapter.monday
    name = str(rendered.get("name") or rendered.get("item_name") or rendered.get("itemName") or "").strip()
    name = " ".join(name.split())
    name = name if len(name) <= NAME_MAX else name[: NAME_MAX - 1] + "…"
    columns = rendered.get("columnValues", rendered.get("column_values")) or {}
    if isinstance(columns, str):  # already JSON-encoded in the mapping
        columns = orjson.loads(columns)
    cells = {key: adapter.column_value(key, value) for key, value in dict(columns).items() if value not in (None, "")}
    if settings.dedupeColumn:
        cells[settings.dedupeColumn] = dedupe_marker(ctx.idempotency_key)
    variables: dict[str, Any] = {
        "board": str(settings.boardId),
        "name": name or "(no name)",
        "columns": orjson.dumps(cells).decode(),
        "labels": settings.createLabelsIfMissing,
    }
    group = rendered.get("groupId") or rendered.get("group_id") or settings.groupId
    if group:
        variables["group"] = str(group)
    return variables


def _lookup(adapter: MondayAdapter, ctx: DeliveryContext) -> dict[str, Any] | None:
    column = adapter.monday.dedupeColumn
    if not column:
        return None
    return {"board": str(adapter.monday.boardId), "column": column, "marker": dedupe_marker(ctx.idempotency_key)}


# Old (ComplexityException, top-level error_code) and 2025-01+ codes (upper snake case).
RULES = GraphQLErrors(
    rate_limited=frozenset(
        [
            "COMPLEXITY_BUDGET_EXHAUSTED",
            "ComplexityException",
            "RATE_LIMIT_EXCEEDED",
            "RateLimitExceeded",
            "maxConcurrencyExceeded",
            "IP_RATE_LIMIT_EXCEEDED",
        ]
    ),
    quota=frozenset({"DAILY_LIMIT_EXCEEDED"}),
    auth=frozenset(
        [
            "UNAUTHENTICATED",
            "USER_UNAUTHORIZED",
            "UserUnauthorizedException",
            "missingRequiredPermissions",
            "Unauthorized",
        ]
    ),
    retryable=frozenset({"INTERNAL_SERVER_ERROR", "InternalServerException", "API_TEMPORARILY_BLOCKED"}),
    side_fields=frozenset({"complexity"}),  # the item exists even when its cost could not be read
)

SPEC = VendorSpec(
    auth={"api_token": ApiKeyHeader("Authorization", ("token", "apiToken", "api_token", "apiKey"))},
    default_auth="api_token",
    objects={
        "item": graphql_create(
            CREATE,
            _variables,
            id_at=("data", "create_item", "id"),
            url_at=("data", "create_item", "url"),
            what="an item",
        )
    },
    errors=Errors(graphql=True, graphql_rules=RULES),
)


class MondayAdapter(GraphQLAdapter):
    info = AdapterInfo(
        type="monday",
        display_name="monday.com",
        display_name_zh="monday.com",
        object_types=("item",),
        auth_types=("api_token",),
        rate_limit=RateLimit(requests=100, perSeconds=60, concurrency=1),
        idempotency="none at the vendor; with dedupeColumn a marker found again with items_page_by_column_values",
        docs="https://developer.monday.com/api-reference/reference/items#create-an-item",
    )
    settings_model = MondaySettings
    spec = SPEC
    default_base_url = API_URL
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"item.priority": PRIORITY_MONDAY}
    budgets: ClassVar[tuple[Budget, ...]] = (
        Budget(
            "complexity",
            body_number("data", "complexity", "after"),
            body_number("data", "complexity", "reset_in_x_seconds"),
            cost=body_number("data", "complexity", "query"),
        ),
    )
    lookups: ClassVar[Mapping[str, Lookup]] = {
        "item": Lookup(LOOKUP, _lookup, ("data", "items_page_by_column_values", "items"))
    }
    probe = PROBE

    @property
    def monday(self) -> MondaySettings:
        assert isinstance(self.settings, MondaySettings)
        return self.settings

    def validate_config(self) -> None:
        super().validate_config()
        if not self.monday.boardId:
            raise ConfigError("boardId is required (the board new items go to)", code="missing_setting")

    def default_headers(self) -> dict[str, str]:
        return {**super().default_headers(), "API-Version": self.monday.apiVersion}

    def column_value(self, column: str, value: Any) -> Any:
        """A mapped cell: the column's value map applied (``item.<column>``), date-times as monday writes them."""
        table = self._value_maps.get(f"item.{column}")
        if table is not None and isinstance(value, str):
            value = table.get(value, table.get(value.lower(), value))
        return _cell(value)
