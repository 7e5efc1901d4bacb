"""A Feishu / Lark fake: tenant token, task v2 create and Base (bitable) record create.

It serves ``/open-apis/...`` only, so the same fake stands in for open.feishu.cn and
open.larksuite.com. Bodies use Feishu's ``{code, msg, data}`` envelope; errors come with HTTP 400
(as current Feishu APIs do), an invalid or expired token with ``400 / code 99991663`` and rate
limiting with ``429 / code 99991400`` plus ``x-ogw-ratelimit-limit`` / ``x-ogw-ratelimit-reset``.

The envelope (the token check, the create routes, ``client_token`` replay) comes from the adapter's
spec (sandbox/octopus_crm_sandbox/specfake.py). Task bodies are validated with ``jsonschema``
against a JSON Schema made from the task v2 create request in Lark's CLI metadata
(``specs/feishu_task_create.json``: required properties, types, unknown keys) plus the limits its
descriptions state (summary non-empty and ≤ 3,000 characters, ≤ 50 members, member roles). Records
are checked against a configurable table schema (field names and simple value types); Base has no
published spec. Both honour ``client_token``: the same token returns the task / record the first
request made.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.feishu import SPEC as FEISHU
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["DEFAULT_TABLES", "TASK_CREATE_SPEC", "FeishuFake", "check_meta", "meta_schema"]

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


def meta_schema(props: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of an object described by Lark's metadata properties."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [name for name, spec in props.items() if spec.get("required")],
        "properties": {name: _meta_property(spec) for name, spec in props.items()},
    }


def _meta_property(spec: Mapping[str, Any]) -> dict[str, Any]:
    nested = spec.get("properties")
    if nested and spec.get("type") == "object":
        return meta_schema(nested)
    if nested and spec.get("type") == "array":
        return {"type": "array", "items": meta_schema(nested)}
    return {"type": spec["type"]} if spec.get("type") else {}


def _problems(validator: jsonschema.protocols.Validator, value: Any) -> list[str]:
    """Each violation as ``members[0].role: required``; ``x-message`` words a limit of our own."""
    problems: list[str] = []
    for error in validator.iter_errors(value):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        prefix = f"{where}." if where else ""
        if error.validator == "required":
            problems += [f"{prefix}{n}: required" for n in error.validator_value if n not in error.instance]
        elif error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            problems += [f"{prefix}{k}: unknown field" for k in error.instance if k not in known]
        elif error.validator == "type":
            problems.append(f"{where or 'body'}: must be {'an object' if not where else error.validator_value}")
        else:
            problems.append(f"{where}: {error.schema.get('x-message', error.message)}")
    return list(dict.fromkeys(problems))


def check_meta(props: Mapping[str, Any], value: Any) -> list[str]:
    """What is wrong with ``value`` against Lark's metadata properties (required, types, keys)."""
    return _problems(jsonschema.Draft202012Validator(meta_schema(props)), value)


def _task_schema() -> dict[str, Any]:
    schema = meta_schema(TASK_CREATE_SPEC["requestBody"])
    props = schema["properties"]
    longer = f"longer than {TEXT_MAX} characters"
    props["summary"].update({"pattern": r"\S", "maxLength": TEXT_MAX, "x-message": "must not be empty"})
    props["description"].update({"maxLength": TEXT_MAX, "x-message": longer})
    props["members"].update({"maxItems": 50, "x-message": "at most 50"})
    member = props["members"]["items"]["properties"]
    member["role"].update({"enum": ["assignee", "follower"], "x-message": "must be assignee or follower"})
    member["type"].update({"enum": ["user", "app"], "x-message": "must be user or app"})
    props["due"]["properties"]["timestamp"].update({"pattern": "^[0-9]+$", "x-message": "must be epoch milliseconds"})
    props["client_token"].update({"maxLength": 100, "x-message": "too long"})
    return schema


_TASK = jsonschema.Draft202012Validator(_task_schema())


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


class FeishuFake(SpecFake):
    name = "feishu"
    spec = FEISHU
    mount = "/open-apis"
    created_status = 200
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
        super().__init__(accepted={"appId": app_id, "appSecret": app_secret}, **kw)
        self.app_id = app_id
        self.app_secret = app_secret
        self.tables = {a: {t: dict(f) for t, f in ts.items()} for a, ts in (tables or DEFAULT_TABLES).items()}
        self.rate_limited_answers = 0
        self._seq = itertools.count(1)

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        return {key: record for key, record in self.records.items() if "guid" in record}

    @property
    def bitable(self) -> dict[str, dict[str, Any]]:
        return {key: _row(record) for key, record in self.records.items() if "record_id" in record}

    def limited_paths(self) -> tuple[str, ...]:
        return ("/open-apis/task/", "/open-apis/bitable/")

    # -- shapes ------------------------------------------------------------------------------

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(
            body=orjson.dumps(body), status=status, content_type="application/json", charset="utf-8", headers=headers
        )

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return _json(status, int(fields.get("code", 1470400)), "; ".join(messages))

    def too_many(self, wait: float) -> web.Response:
        self.rate_limited_answers += 1
        limit = str(self.window.limit) if self.window else "0"
        return _json(
            429,
            99991400,
            "request trigger frequency limit",
            **{"x-ogw-ratelimit-limit": limit, "x-ogw-ratelimit-reset": str(math.ceil(wait))},
        )

    def unauthorized(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:]:
            return _json(400, 99991661, _MISSING_TOKEN)
        return _json(400, 99991663, _INVALID_TOKEN)

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        if object_type == "bitable_record":
            return _json(400, 1254000, "WrongRequestJson")
        return _json(400, 1470400, "invalid request body: not a JSON object")

    # -- auth --------------------------------------------------------------------------------

    def token_routes(self) -> list[web.RouteDef]:
        return [web.post("/open-apis/auth/v3/tenant_access_token/internal", self.tenant_token)]

    async def tenant_token(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if body is None or not body.get("app_id") or not body.get("app_secret"):
            return _json(400, 10003, "invalid param")
        if body["app_id"] != self.app_id or body["app_secret"] != self.app_secret:
            return _json(400, 10014, "app secret invalid")
        token = self.issue_token("t")
        return self.answer({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": int(self.token_ttl)})

    # -- creates -----------------------------------------------------------------------------

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        if object_type == "task":
            if not isinstance(body, dict):
                return _json(400, 1470400, "invalid request body: not a JSON object")
            problems = self._check_task(body, request.query.get("user_id_type", "open_id"))
            return _json(400, 1470400, "invalid param: " + "; ".join(problems[:5])) if problems else None
        return self._check_record(request, body)

    def idempotency_key(self, call: CreateCall, body: Any, request: web.Request) -> str | None:
        token = request.query.get("client_token") or (body.get("client_token") if isinstance(body, dict) else None)
        return str(token) if token else None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        if object_type == "bitable_record":
            record_id = f"rec{self.new_id()[:10]}"
            app, table = request.match_info["app"], request.match_info["table"]
            return record_id, {"app_token": app, "table_id": table, **_row(body, record_id)}
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
        return guid, task

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        data = {"record": _row(record)} if "record_id" in record else {"task": record}
        return {"code": 0, "msg": "success", "data": data}, {}

    def _check_task(self, body: dict[str, Any], id_type: str) -> list[str]:
        problems = _problems(_TASK, body)
        if id_type not in ("open_id", "user_id", "union_id"):
            problems.append(f"user_id_type: invalid {id_type!r}")
        prefix = MEMBER_PREFIX.get(id_type)
        members = body.get("members") or []
        for i, m in enumerate(m for m in members if isinstance(m, dict)) if isinstance(members, list) else ():
            if prefix and m.get("type", "user") == "user" and not str(m.get("id")).startswith(prefix):
                problems.append(f"members[{i}].id: not a valid {id_type}")
        return problems

    def _check_record(self, request: web.Request, body: Any) -> web.Response | None:
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
                return _json(400, 1254037, "Invalid client token, make sure that it complies with the specification.")
        if not isinstance(body, dict):
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
        return None

    # -- the connection test's read ----------------------------------------------------------

    def extra_routes(self) -> list[web.RouteDef]:
        return [web.get("/open-apis/bitable/v1/apps/{app}/tables", self.list_tables)]

    async def list_tables(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        app = request.match_info["app"]
        if app not in self.tables:
            return _json(400, 1254040, "BaseTokenNotFound")
        items = [{"table_id": t, "name": t, "revision": 1} for t in self.tables[app]]
        data = {"has_more": False, "page_token": "", "total": len(items), "items": items}
        return _json(200, 0, "success", data)


def _row(record: Mapping[str, Any], record_id: str | None = None) -> dict[str, Any]:
    """A Base record as Feishu answers it."""
    record_id = record_id or str(record["record_id"])
    return {"fields": record["fields"], "id": record_id, "record_id": record_id}


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


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
