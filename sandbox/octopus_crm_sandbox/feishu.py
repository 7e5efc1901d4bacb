"""A Feishu / Lark fake: tenant token, task v2 create and Base (bitable) record create.

It serves ``/open-apis/...`` only, so the same fake stands in for open.feishu.cn and
open.larksuite.com. Bodies use Feishu's ``{code, msg, data}`` envelope; errors come with HTTP 400
(as current Feishu APIs do), an invalid or expired token with ``400 / code 99991663`` and rate
limiting with ``429 / code 99991400`` plus ``x-ogw-ratelimit-limit`` / ``x-ogw-ratelimit-reset``.

Task bodies are checked against the task v2 create request schema copied from Lark's CLI metadata
(``specs/feishu_task_create.json``): required properties, types, unknown keys, plus the limits its
descriptions state (summary non-empty and ≤ 3,000 characters, ≤ 50 members, member roles). Records
are checked against a configurable table schema (field names and simple value types). Both honour
``client_token``: the same token returns the task / record the first request made.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import orjson
from aiohttp import web

from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["DEFAULT_TABLES", "TASK_CREATE_SPEC", "FeishuFake", "check_meta"]

SPEC_PATH = Path(__file__).resolve().parent / "specs" / "feishu_task_create.json"
TASK_CREATE_SPEC: dict[str, Any] = orjson.loads(SPEC_PATH.read_bytes())["method"]

# app_token → table_id → field name → type (text, number, single_select, phone, datetime, url)
DEFAULT_TABLES: dict[str, dict[str, dict[str, str]]] = {
    "bascnOctopusFakeBase01": {
        "tblOctopusLeads01": {
            "客户": "text",
            "邮箱": "text",
            "电话": "phone",
            "内容": "text",
            "分类": "single_select",
            "优先级": "single_select",
            "平台": "text",
            "事件ID": "text",
        }
    }
}
TEXT_MAX = 3000
_MISSING_TOKEN = "Missing access token for authorization. Please make a request with token attached."
_INVALID_TOKEN = "Invalid access token for authorization. Please make a request with token attached."
APPLINK = "https://applink.feishu.cn/client/todo/detail?guid={guid}&suite_entity_num={num}"
MEMBER_PREFIX = {"open_id": "ou_", "union_id": "on_"}
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "number": (int, float),
}


def check_meta(props: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """What is wrong with ``value`` against Lark's metadata properties (required, types, keys)."""
    if not isinstance(value, dict):
        return [f"{path or 'body'}: must be an object"]
    problems = [f"{path}{k}: unknown field" for k in value if k not in props]
    for name, spec in props.items():
        where = f"{path}{name}"
        if name not in value:
            if spec.get("required"):
                problems.append(f"{where}: required")
            continue
        item = value[name]
        types = _TYPES.get(spec.get("type", ""), (object,))
        if not isinstance(item, types) or (spec.get("type") == "integer" and isinstance(item, bool)):
            problems.append(f"{where}: must be {spec.get('type')}")
            continue
        nested = spec.get("properties")
        if nested and spec.get("type") == "object":
            problems += check_meta(nested, item, f"{where}.")
        elif nested and isinstance(item, list):
            for i, element in enumerate(item):
                problems += check_meta(nested, element, f"{where}[{i}].")
    return problems


def _json(status: int, code: int, msg: str, data: Any = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"code": code, "msg": msg, "data": data if data is not None else {}}
    if code:
        body["error"] = {"log_id": uuid.uuid4().hex}
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


class FeishuFake(FakeVendor):
    name = "feishu"
    ENV: ClassVar[dict[str, str]] = {
        "FEISHU_APP_ID": "cli_fake0000octopus",
        "FEISHU_APP_SECRET": "fake-feishu-app-secret-0001",
    }

    def __init__(
        self,
        *,
        app_id: str = ENV["FEISHU_APP_ID"],
        app_secret: str = ENV["FEISHU_APP_SECRET"],
        tables: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.app_id = app_id
        self.app_secret = app_secret
        self.tables = {a: {t: dict(f) for t, f in ts.items()} for a, ts in (tables or DEFAULT_TABLES).items()}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.bitable: dict[str, dict[str, Any]] = {}
        self.by_client_token: dict[str, str] = {}
        self.replays = 0
        self.rate_limited_answers = 0
        self._seq = itertools.count(1)

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": f"{self.base_url}/open-apis", "allowPrivateNetwork": True}  # the fakes listen on loopback

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/open-apis/auth/v3/tenant_access_token/internal", self.tenant_token),
            web.post("/open-apis/task/v2/tasks", self.create_task),
            web.post("/open-apis/bitable/v1/apps/{app}/tables/{table}/records", self.create_record),
            web.get("/open-apis/bitable/v1/apps/{app}/tables", self.list_tables),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/open-apis/task/", "/open-apis/bitable/")

    def too_many(self, wait: float) -> web.Response:
        self.rate_limited_answers += 1
        limit = str(self.window.limit) if self.window else "0"
        return _json(
            429,
            99991400,
            "request trigger frequency limit",
            **{"x-ogw-ratelimit-limit": limit, "x-ogw-ratelimit-reset": str(math.ceil(wait))},
        )

    # -- auth --------------------------------------------------------------------------------

    async def tenant_token(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body is None or not body.get("app_id") or not body.get("app_secret"):
            return _json(400, 10003, "invalid param")
        if body["app_id"] != self.app_id or body["app_secret"] != self.app_secret:
            return _json(400, 10014, "app secret invalid")
        token = self.issue_token("t")
        return web.Response(
            body=orjson.dumps(
                {
                    "code": 0,
                    "msg": "ok",
                    "tenant_access_token": token,
                    "expire": int(self.token_ttl),
                }
            ),
            content_type="application/json",
        )

    def _denied(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:]:
            return _json(
                400,
                99991661,
                _MISSING_TOKEN,
            )
        if not self.token_valid(header[7:]):
            return _json(
                400,
                99991663,
                _INVALID_TOKEN,
            )
        return None

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    # -- task v2 ---------------------------------------------------------------------------------

    async def create_task(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        body = await self._body(request)
        if body is None:
            return _json(400, 1470400, "invalid request body: not a JSON object")
        id_type = request.query.get("user_id_type", "open_id")
        problems = self._check_task(body, id_type)
        if problems:
            return _json(400, 1470400, "invalid param: " + "; ".join(problems[:5]))
        token = body.get("client_token")
        if token and token in self.by_client_token:
            self.replays += 1
            return _json(200, 0, "success", {"task": self.tasks[self.by_client_token[token]]})
        n = next(self._seq)
        guid = str(uuid.uuid4())
        now = str(int(time.time() * 1000))
        task = {
            **{k: v for k, v in body.items() if k != "client_token"},
            "guid": guid,
            "task_id": f"t{100000 + n}",
            "creator": {"id": self.app_id, "type": "app"},
            "status": "todo",
            "completed_at": "0",
            "created_at": now,
            "updated_at": now,
            "url": APPLINK.format(guid=guid, num=f"t{100000 + n}"),
        }
        self.tasks[guid] = task
        self.records[guid] = task
        if token:
            self.by_client_token[token] = guid
        return _json(200, 0, "success", {"task": task})

    def _check_task(self, body: dict[str, Any], id_type: str) -> list[str]:
        problems = check_meta(TASK_CREATE_SPEC["requestBody"], body)
        if id_type not in ("open_id", "user_id", "union_id"):
            problems.append(f"user_id_type: invalid {id_type!r}")
        summary = body.get("summary")
        if isinstance(summary, str) and not summary.strip():
            problems.append("summary: must not be empty")
        for key in ("summary", "description"):
            if isinstance(body.get(key), str) and len(body[key]) > TEXT_MAX:
                problems.append(f"{key}: longer than {TEXT_MAX} characters")
        members = body.get("members") or []
        if isinstance(members, list):
            if len(members) > 50:
                problems.append("members: at most 50")
            prefix = MEMBER_PREFIX.get(id_type)
            for i, m in enumerate(m for m in members if isinstance(m, dict)):
                if m.get("role") not in ("assignee", "follower"):
                    problems.append(f"members[{i}].role: must be assignee or follower")
                if m.get("type", "user") not in ("user", "app"):
                    problems.append(f"members[{i}].type: must be user or app")
                if prefix and m.get("type", "user") == "user" and not str(m.get("id")).startswith(prefix):
                    problems.append(f"members[{i}].id: not a valid {id_type}")
        due = body.get("due")
        if isinstance(due, dict) and not str(due.get("timestamp", "0")).isdigit():
            problems.append("due.timestamp: must be epoch milliseconds")
        token = body.get("client_token")
        if isinstance(token, str) and len(token) > 100:
            problems.append("client_token: too long")
        return problems

    # -- bitable -----------------------------------------------------------------------------------

    async def create_record(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        app, table = request.match_info["app"], request.match_info["table"]
        if app not in self.tables:
            return _json(400, 1254040, "BaseTokenNotFound")
        schema = self.tables[app].get(table)
        if schema is None:
            return _json(400, 1254041, "TableIdNotFound")
        token = request.query.get("client_token")
        if token is not None:
            try:
                uuid.UUID(token)
            except ValueError:
                return _json(
                    400,
                    1254037,
                    "Invalid client token, make sure that it complies with the specification.",
                )
        body = await self._body(request)
        if body is None:
            return _json(400, 1254000, "WrongRequestJson")
        fields = body.get("fields")
        if not isinstance(fields, dict) or set(body) - {"fields"}:
            return _json(400, 1254001, "WrongRequestBody")
        for name, value in fields.items():
            kind = schema.get(name)
            if kind is None:
                return _json(400, 1254045, "FieldNameNotFound")
            if problem := _check_cell(kind, value):
                return _json(400, problem[0], problem[1])
        if token and token in self.by_client_token:
            self.replays += 1
            return _json(200, 0, "success", {"record": self.bitable[self.by_client_token[token]]})
        record_id = f"rec{self.new_id()[:10]}"
        record = {"fields": fields, "id": record_id, "record_id": record_id}
        self.bitable[record_id] = record
        self.records[record_id] = {"app_token": app, "table_id": table, **record}
        if token:
            self.by_client_token[token] = record_id
        return _json(200, 0, "success", {"record": record})

    async def list_tables(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        app = request.match_info["app"]
        if app not in self.tables:
            return _json(400, 1254040, "BaseTokenNotFound")
        items = [{"table_id": t, "name": t, "revision": 1} for t in self.tables[app]]
        return _json(
            200,
            0,
            "success",
            {"has_more": False, "page_token": "", "total": len(items), "items": items},
        )


_CELL_ERRORS = {
    "text": (1254060, "TextFieldConvFail"),
    "number": (1254061, "NumberFieldConvFail"),
    "single_select": (1254062, "SingleSelectFieldConvFail"),
    "datetime": (1254064, "DatetimeFieldConvFail"),
    "url": (1254068, "URLFieldConvFail"),
    "phone": (1254072, "Failed to convert phone field, please make sure it is correct."),
}


def _check_cell(kind: str, value: Any) -> tuple[int, str] | None:
    """Base's conversion error for a cell value of the wrong shape (1254060…1254072)."""
    if kind in ("text", "phone", "single_select", "url"):
        ok = isinstance(value, str) or (kind == "text" and isinstance(value, list))
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "datetime":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = True
    return None if ok else _CELL_ERRORS[kind]
