"""Airtable: create a record in a table (``POST https://api.airtable.com/v0/{baseId}/{table}``).

Auth is ``Authorization: Bearer`` with a personal access token (or an OAuth access token);
legacy API keys are gone. The body is ``{"records": [{"fields": {…}}], "typecast": true}``:
the rendered mapping becomes the record's fields, and ``typecast`` (default on) lets Airtable
turn our strings into select options, numbers and dates. The answer is ``{"records": [{"id":
"rec…", "createdTime": …, "fields": …}]}``. The table is ``tableId`` (``tbl…``; a table name also
works, but record links need the id).

Idempotency: none natively, but records can be upserted — ``PATCH`` the same URL with
``performUpsert.fieldsToMergeOn`` (up to 3 fields): 0 matches create, 1 updates. With
``keyField`` set (a text field, e.g. ``Octopus Key``), each record carries the delivery's
idempotency key there and is upserted on it, so a redelivery updates the record it created;
:meth:`find_existing` then finds it with ``filterByFormula`` (needs ``data.records:read``).
``upsertOn`` merges on customer fields instead (``["Email"]``: one row per customer).

Errors: ``{"error": {"type": …, "message": …}}`` (422 ``UNKNOWN_FIELD_NAME``,
``INVALID_VALUE_FOR_COLUMN``, 403 ``INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND``, 401) or
``{"error": "NOT_FOUND"}``; 429 ``{"errors": [{"error": "RATE_LIMIT_REACHED", …}]}``. Limits:
5 requests/s per base (the limiter's scope is the base), 50/s per token across bases; after a
429 Airtable refuses the base for 30 s, so a 429 waits 30 s. Free and Team plans have monthly
call caps: ``PUBLIC_API_BILLING_LIMIT_EXCEEDED`` (429) is a spent quota, not a short window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext
from octopus_crm.adapters.http import Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    Bearer,
    ConnectionCheck,
    CreateCall,
    Errors,
    FindCall,
    SpecAdapter,
    VendorSpec,
    at_path,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError

__all__ = ["AirtableAdapter"]

# A table's select options are the customer's; these are the common Title-case ones (typecast adds
# a missing option), and valueMaps in the config replaces them.
PRIORITY_AIRTABLE = {"low": "Low", "medium": "Medium", "high": "High", "urgent": "Urgent"}
TOKEN_KEYS = ("accessToken", "token", "personalAccessToken", "apiKey")
MERGE_MAX = 3


class AirtableCredentials(Credentials):
    accessToken: SecretStr | None = alias(*TOKEN_KEYS, description="Personal access token pat… (or OAuth token).")


class AirtableEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="Default https://api.airtable.com.")


class AirtableSettings(VendorSettings):
    credentials: AirtableCredentials = Field(default_factory=AirtableCredentials)
    endpoints: AirtableEndpoints = Field(default_factory=AirtableEndpoints)
    baseId: str | None = alias("baseId", "base_id", "appId", description="The base (app…), required.")
    tableId: str | None = alias("tableId", "table_id", "tableName", "table", description="Table id (tbl…) or name.")
    typecast: bool = Field(default=True, description="Let Airtable convert strings to the fields' types.")
    keyField: str | None = alias("keyField", "idempotencyField", description="Text field for the delivery key.")
    upsertOn: list[str] = alias(
        "upsertOn", "fieldsToMergeOn", "mergeOn", default=[], description="Fields to merge on (upsert), ≤ 3."
    )


def _message(response: Response) -> str:
    body = response.json()
    if not isinstance(body, dict):
        return response.text[:500]
    errors = body.get("errors")
    error = errors[0] if isinstance(errors, list) and errors else body.get("error")
    if isinstance(error, dict):
        kind = error.get("type") or error.get("error")
        return f"{error.get('message') or kind} ({kind})"
    return str(error or response.text[:500])


def _record_id(body: Any) -> Any:
    return at_path(body, ("records", 0, "id")) or at_path(body, ("id",))


def _records_body(
    adapter: AirtableAdapter, fields: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext
) -> Any:
    if adapter.key_field:
        fields = {**fields, adapter.key_field: ctx.idempotency_key}
    body: dict[str, Any] = {"records": [{"fields": fields}], "typecast": adapter.settings_value("typecast", True)}
    if adapter.merge_on:
        body["performUpsert"] = {"fieldsToMergeOn": adapter.merge_on}
    return body


def _formula(adapter: AirtableAdapter, ctx: DeliveryContext) -> dict[str, str]:
    field = adapter.key_field.replace("}", "\\}")
    value = ctx.idempotency_key.replace("\\", "\\\\").replace('"', '\\"')
    return {"filterByFormula": f'{{{field}}} = "{value}"', "maxRecords": "1"}


SPEC = VendorSpec(
    auth={"pat": Bearer(TOKEN_KEYS)},
    default_auth="pat",
    objects={
        "record": CreateCall(
            "/v0/{base_id}/{table}",
            body=_records_body,
            id_of=_record_id,
            url=lambda adapter, record_id, body: adapter.record_url(record_id),
            detail={"createdTime": ("records", 0, "createdTime")},
            what="a record id",
        )
    },
    find={
        "record": FindCall(
            "/v0/{base_id}/{table}", params=_formula, items_at=("records",), enabled=lambda a: bool(a.key_field)
        )
    },
    errors=Errors(
        message=_message,
        default_retry_after=30.0,
        quota=lambda response: b"PUBLIC_API_BILLING_LIMIT_EXCEEDED" in response.body,
    ),
    test_call=ConnectionCheck("/v0/meta/whoami"),
)


class AirtableAdapter(SpecAdapter):
    info = AdapterInfo(
        type="airtable",
        display_name="Airtable",
        display_name_zh="Airtable 多维表",
        object_types=("record",),
        auth_types=("pat",),
        rate_limit=RateLimit(requests=5, concurrency=5),
        idempotency="optional upsert (performUpsert) on keyField holding the delivery key, or on upsertOn fields",
        docs="https://airtable.com/developers/web/api/create-records",
    )
    settings_model = AirtableSettings
    spec = SPEC
    default_base_url = "https://api.airtable.com"
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"record.Priority": PRIORITY_AIRTABLE}

    def validate_config(self) -> None:
        super().validate_config()
        if not self.base_id or not self.table:
            raise ConfigError(
                "baseId and tableId are required (the base app… and table tbl… or name)", code="missing_table"
            )
        if len(self.merge_on) > MERGE_MAX:
            raise ConfigError(f"upsertOn: Airtable merges on at most {MERGE_MAX} fields", code="bad_setting")

    def settings_value(self, name: str, default: Any = None) -> Any:
        return getattr(self.settings, name, default) if self.settings is not None else default

    @property
    def base_id(self) -> str:
        return str(self.settings_value("baseId") or "")

    @property
    def table(self) -> str:
        return str(self.settings_value("tableId") or "")

    @property
    def key_field(self) -> str:
        return str(self.settings_value("keyField") or "")

    @property
    def merge_on(self) -> list[str]:
        fields = list(self.settings_value("upsertOn") or [])
        return fields or ([self.key_field] if self.key_field else [])

    def create_call(self, object_type: str) -> CreateCall:
        call = super().create_call(object_type)
        return dataclasses.replace(call, method="PATCH") if self.merge_on else call

    def path_vars(self) -> dict[str, str]:
        return {"base_id": quote(self.base_id, safe=""), "table": quote(self.table, safe="")}

    def record_url(self, record_id: str) -> str | None:
        """The record in Airtable's UI; only a table id (``tbl…``) makes a working link."""
        if not self.table.startswith("tbl"):
            return None
        return f"https://airtable.com/{self.base_id}/{self.table}/{record_id}"

    @property
    def limit_scope(self) -> str:
        """Airtable counts 5 requests/s per base, whoever calls."""
        return f"airtable:base:{self.base_id}"
