"""Feishu / Lark (飞书): task v2 tasks and Base (bitable) records.

Auth: ``POST /open-apis/auth/v3/tenant_access_token/internal`` with ``app_id`` / ``app_secret`` →
``tenant_access_token`` (≤ 2 h), cached and sent as ``Authorization: Bearer t-…``; refreshed early
and on the token codes (99991663 access token invalid, 99991668 / 99991677 invalid / expired).
``endpoints.baseUrl`` overrides the API root; ``endpoints.domain: "lark"`` selects Lark
international (open.larksuite.com) instead of open.feishu.cn.

``task``: ``POST /task/v2/tasks`` (``summary`` required, ≤ 3,000 characters, as is
``description``); ``assignee`` / ``followers`` user ids (``open_id`` unless ``userIdType``) become
``members``, ``due`` may be epoch milliseconds or an ISO time, the integration's ``tasklistGuid``
puts the task in a tasklist, ``origin`` shows where it came from. The created task's ``guid`` and
its ``url`` (an applink) are returned. ``bitable_record``: ``POST /bitable/v1/apps/{appToken}/
tables/{tableId}/records`` with the mapping as ``fields`` (keys are the table's field names);
``appToken`` / ``tableId`` come from the integration config (or ``endpoints``) and the record URL
is built from ``tenantDomain`` when set (``https://acme.feishu.cn/base/{app}?table=…&record=…``).

Both creates carry ``client_token``, Feishu's idempotency key: a UUID (version-4 layout) derived
from the delivery's idempotency key, so a retried or replayed create returns the record the first
attempt made. :meth:`FeishuAdapter.find_existing` relies on that and replays the create.

Errors: ``{code, msg, data}`` with ``code != 0``, on HTTP 4xx for most current APIs and 200 for
some older ones. Codes from Lark's CLI (``internal/errclass/codemeta.go``: token, scope, app and
rate-limit codes) and the bitable record docs (1254xxx); rate limiting is 429 (or 400) with
``code 99991400`` and ``x-ogw-ratelimit-reset`` = seconds to wait, which the Open Gateway header
takes over ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field, SecretStr

from octopus_crm.adapters.auth import TokenAuth
from octopus_crm.adapters.base import AdapterInfo, BodyCodes, Delivered, DeliveryContext
from octopus_crm.adapters.http import Classifier, Request, Response, parse_retry_after
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import CreateCall, JsonToken, SpecAdapter, VendorSpec, at_path
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError, DeliveryError, PermanentError, RateLimitedError

__all__ = ["FEISHU_CODES", "FeishuAdapter", "client_token"]

DOMAINS = {
    "feishu": "https://open.feishu.cn/open-apis",
    "lark": "https://open.larksuite.com/open-apis",
}
TOKEN_PATH = "auth/v3/tenant_access_token/internal"
TASK_PATH = "task/v2/tasks"
RECORDS_PATH = "bitable/v1/apps/{app}/tables/{table}/records"
TABLES_PATH = "bitable/v1/apps/{app}/tables"
TEXT_MAX = 3000

FEISHU_CODES = BodyCodes(
    field="code",
    ok=0,
    message_field="msg",
    token_expired=frozenset({99991663, 99991668, 99991677}),
    rate_limited=frozenset({99991400, 1254290}),
    retryable=frozenset(
        {
            1254002,  # bitable internal error
            1254036,  # base is being copied
            1254291,  # write conflict: concurrent writes to one table
            1254607,  # data not ready
            1255001,
            1255002,
            1255003,
            1255004,
            1255005,
            1255040,  # bitable internal / timeout
        }
    ),
    auth=frozenset(
        {
            99991661,  # Authorization header missing
            99991671,  # token format
            99991672,  # app has not applied for the API's scope
            99991676,  # token lacks the scope
            99991679,  # user has not granted the scope
            99991662,  # app disabled in this tenant
            99991673,  # app unavailable
            99991543,  # app_id / app_secret wrong
            1254302,  # Base advanced permissions: the app's group has no write access
            1254303,  # no attachment permission
        }
    ),
)

TASK_RATE = RateLimit(requests=1000, perSeconds=60, concurrency=16)
# Base rejects concurrent writes to one table (1254291), so records go one at a time.
RECORD_RATE = RateLimit(requests=50, perSeconds=1, concurrency=1)


def _classify(response: Response) -> DeliveryError | None:
    error = FEISHU_CODES.classify(response)
    if isinstance(error, RateLimitedError):
        reset = parse_retry_after(response.headers.get("x-ogw-ratelimit-reset"))
        if reset is not None:
            error.retry_after = reset
    return error


def client_token(idempotency_key: str) -> str:
    """A stable UUID for an idempotency key, laid out as version 4 (what Feishu expects)."""
    digest = hashlib.sha256(idempotency_key.encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _ids(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [str(v) for v in items if v not in (None, "")]


def _clip(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "…"


def _due(value: Any) -> dict[str, Any] | None:
    if value in (None, ""):
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        return {"timestamp": str(int(value)), "is_all_day": False}
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise PermanentError(f"task due {value!r} is neither epoch ms nor ISO 8601", code="bad_due") from None
    return {"timestamp": str(int(when.timestamp() * 1000)), "is_all_day": False}


class FeishuCredentials(Credentials):
    appId: str | None = alias("appId", "app_id", description="The app's App ID (required).")
    appSecret: SecretStr | None = alias("appSecret", "app_secret", description="The app's App Secret (required).")


class _FeishuPlaces(BaseModel):
    """Keys read from the top level or ``endpoints`` alike."""

    appToken: str | None = alias("appToken", "app_token", description="Base (bitable) app token.")
    tableId: str | None = alias("tableId", "table_id", description="Base table id.")
    userIdType: str | None = Field(default=None, description="open_id (default), union_id or user_id.")
    originName: str | None = Field(default=None, description="Task origin shown in Feishu (default Octopus).")
    tasklistGuid: str | None = Field(default=None, description="Add tasks to this task list.")
    tenantDomain: str | None = Field(default=None, description="e.g. acme.feishu.cn, for record URLs.")


class FeishuEndpoints(Endpoints, _FeishuPlaces):
    baseUrl: Url | None = Field(default=None, description="Default by domain.")
    domain: str | None = Field(default=None, description="feishu (default) or lark.")


class FeishuSettings(VendorSettings, _FeishuPlaces):
    credentials: FeishuCredentials = Field(default_factory=FeishuCredentials)
    endpoints: FeishuEndpoints = Field(default_factory=FeishuEndpoints)


def _record_id(body: Any) -> Any:
    record = at_path(body, ("data", "record"))
    return (record.get("record_id") or record.get("id")) if isinstance(record, dict) else None


def _record_fields(adapter: Any, fields: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    return {"fields": fields["fields"] if set(fields) == {"fields"} else fields}


SPEC = VendorSpec(
    auth={
        "app_secret": JsonToken(
            TOKEN_PATH,
            send={"app_id": ("appId", "app_id"), "app_secret": ("appSecret", "app_secret")},
            token_field="tenant_access_token",
            ttl_field="expire",
            code_field="code",
            message_field="msg",
        )
    },
    default_auth="app_secret",
    objects={
        "task": CreateCall(
            TASK_PATH,
            body=lambda adapter, fields, event, ctx: adapter.task_body(fields, event, ctx),
            params=lambda adapter, ctx: adapter.params(ctx, client_token_param=False),
            id_at=("data", "task", "guid"),
            url_at=("data", "task", "url"),
            what="a task guid",
        ),
        "bitable_record": CreateCall(
            RECORDS_PATH,
            body=_record_fields,
            params=lambda adapter, ctx: adapter.params(ctx, client_token_param=True),
            id_of=_record_id,
            url=lambda adapter, record_id, body: adapter._record_link(record_id),
            what="a record_id",
        ),
    },
)


class FeishuAdapter(SpecAdapter):
    info = AdapterInfo(
        type="feishu",
        display_name="Feishu / Lark",
        display_name_zh="飞书",
        object_types=("task", "bitable_record"),
        auth_types=("app_secret",),
        rate_limit=TASK_RATE,
        aliases=("lark",),
        idempotency="client_token (UUID from the idempotency key) on task and record create",
        docs=(
            "Feishu limits each API per app per tenant by tier; task create is in the "
            "1,000/min & 50/s tier, so we pace at 1,000/min. An integration that maps only "
            "bitable_record paces at Base's 50 req/s, one write at a time (Base rejects "
            "concurrent writes to a table with 1254291). A 429 / 99991400 pauses the "
            "integration for x-ogw-ratelimit-reset seconds."
        ),
    )
    settings_model = FeishuSettings
    spec = SPEC

    @property
    def base_url(self) -> str:
        configured = self.config.endpoints.get("baseUrl")
        if configured:
            root = str(configured).rstrip("/")
            return root if root.endswith("/open-apis") else f"{root}/open-apis"
        domain = str(self.config.endpoints.get("domain") or "feishu").lower()
        if domain not in DOMAINS:
            raise ConfigError('endpoints.domain must be "feishu" or "lark"', code="bad_config")
        return DOMAINS[domain]

    @property
    def rate_limit(self) -> RateLimit:
        if self.config.rateLimit is None and set(self.templates) == {"bitable_record"}:
            return RECORD_RATE
        return super().rate_limit

    def validate_config(self) -> None:
        super().validate_config()
        _ = self.base_url
        if "bitable_record" in self.config.mappings:
            self._table()
        task = self.config.mappings.get("task")
        if isinstance(task, dict) and not task.get("summary"):
            raise ConfigError("mappings.task.summary is required", code="missing_field")

    def _setting(self, *names: str) -> str:
        for name in names:
            value = self.config.extra(name) or self.config.endpoints.get(name)
            if value:
                return str(value)
        return ""

    def _table(self) -> tuple[str, str]:
        app, table = self._setting("appToken", "app_token"), self._setting("tableId", "table_id")
        if not app or not table:
            raise ConfigError(
                "bitable_record needs appToken and tableId in the integration config",
                code="missing_field",
            )
        return app, table

    def classifier(self) -> Classifier:
        return _classify

    def path_vars(self) -> dict[str, str]:
        if "bitable_record" not in self.templates:
            return {}
        app, table = self._table()
        return {"app": app, "table": table}

    def params(self, ctx: DeliveryContext, *, client_token_param: bool) -> dict[str, str]:
        params = {"user_id_type": self._setting("userIdType") or "open_id"}
        return {"client_token": client_token(ctx.idempotency_key), **params} if client_token_param else params

    def task_body(self, fields: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> dict[str, Any]:
        known = {"summary", "description", "assignee", "assignees", "followers", "due", "origin"}
        body: dict[str, Any] = {k: v for k, v in fields.items() if k not in known}
        body["summary"] = _clip(fields.get("summary"))
        if not body["summary"]:
            raise PermanentError("task summary rendered empty", code="missing_field")
        if fields.get("description"):
            body["description"] = _clip(fields["description"])
        members = body.pop("members", None) or []
        for role, key in (
            ("assignee", "assignee"),
            ("assignee", "assignees"),
            ("follower", "followers"),
        ):
            members += [{"id": i, "role": role, "type": "user"} for i in _ids(fields.get(key))]
        if members:
            body["members"] = members[:50]
        if (due := _due(fields.get("due"))) is not None:
            body["due"] = due
        origin = fields.get("origin") or self._setting("originName") or "Octopus"
        body["origin"] = (
            origin if isinstance(origin, dict) else {"platform_i18n_name": {"zh_cn": str(origin), "en_us": str(origin)}}
        )
        if tasklist := self._setting("tasklistGuid"):
            body.setdefault("tasklists", [{"tasklist_guid": tasklist}])
        body.setdefault("extra", orjson.dumps({"eventId": event.eventId}).decode())
        body["client_token"] = client_token(ctx.idempotency_key)
        return body

    def _record_url(self, app: str, table: str, record_id: str) -> str | None:
        domain = self._setting("tenantDomain")
        if not domain:
            return None
        root = domain.rstrip("/") if domain.startswith("http") else f"https://{domain.strip('/')}"
        return f"{root}/base/{app}?table={table}&record={record_id}"

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        """Replay the create with the same ``client_token``: Feishu returns the record an earlier
        attempt made (or makes it now, once), so the answer is never a duplicate."""
        return await self.create(event, object_type, ctx)

    async def test_connection(self) -> None:
        if "bitable_record" in self.templates:  # a read of the Base proves the app's access to it
            app, _ = self._table()
            await self.http.send(Request("GET", TABLES_PATH.format(app=app), params={"page_size": "1"}, paced=False))
            return
        auth = self.http.auth
        if isinstance(auth, TokenAuth):  # a fresh token proves app_id / app_secret
            await auth.probe(self.http)

    def _record_link(self, record_id: str) -> str | None:
        vars_ = self.path_vars()
        return self._record_url(vars_["app"], vars_["table"], record_id)
