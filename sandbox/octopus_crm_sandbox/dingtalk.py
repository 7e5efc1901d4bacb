"""A DingTalk fake: both token endpoints, to-do create and lookup, work notifications, auth/scopes.

New API (``/v1.0/…``): the token arrives in ``x-acs-dingtalk-access-token``; a bad or expired one
answers 401 ``{"code": "InvalidAuthentication", …}``; over the app's QPS it is 403
``Forbidden.AccessDenied.QpsLimitForAppkeyAndApi``; a bad body 400 ``{code, message, requestid}``.
Old API (``oapi``): ``access_token`` in the query, every answer HTTP 200 with ``errcode`` / ``errmsg``
(40014 unknown token, 42001 expired, 90018 over the QPS, 40035 bad parameter). Tokens from either
endpoint are the app's one token, valid on both generations.

DingTalk publishes no machine-readable spec: to-do bodies are validated with ``jsonschema`` against
:data:`TODO_SCHEMA`, written from the SDK's ``CreateTodoTaskRequest`` (aliyun/dingtalk-sdk,
``todo_1_0``) and the to-do documentation (subject ≤ 1,024, description ≤ 4,096, priority
10/20/30/40, unionIds ≤ 1,000); the owner, operator, executors and participants must be unionIds
of the fake's directory. The error messages for unknown ids are the fake's own wording. Work
notifications check ``agent_id``, ``userid_list`` (≤ 100 userIds) and the ``msg`` shape, and
suppress the same content to the same user within a day, as DingTalk does.

The envelope (both token endpoints, the create routes, the token checks) comes from the adapter's
spec (sandbox/octopus_crm_sandbox/specfake.py); each generation answers in its own error shape.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.dingtalk import NEW_TOKEN, OLD_TOKEN, TODO_PATH
from octopus_crm.adapters.dingtalk import SPEC as DINGTALK
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.envelope import caller, token_route
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["TODO_SCHEMA", "DingTalkFake"]

_IDS = {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 1000}
TODO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["subject"],
    "properties": {
        "subject": {"type": "string", "minLength": 1, "maxLength": 1024},
        "description": {"type": "string", "maxLength": 4096},
        "dueTime": {"type": "integer"},
        "executorIds": _IDS,
        "participantIds": _IDS,
        "creatorId": {"type": "string"},
        "sourceId": {"type": "string", "maxLength": 64},
        "detailUrl": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"appUrl": {"type": "string"}, "pcUrl": {"type": "string"}},
        },
        "isOnlyShowExecutor": {"type": "boolean"},
        "priority": {"enum": [10, 20, 30, 40]},
        "notifyConfigs": {"type": "object", "properties": {"dingNotify": {"type": "string"}}},
        "bizCategoryId": {"type": "string"},
    },
}
_TODO = jsonschema.Draft202012Validator(TODO_SCHEMA)
DEFAULT_UNION_IDS = frozenset({"manager-001", "octopus-bot", "PUoiinWIpa2GYMF2pZXuvjQiEiE"})
DEFAULT_USER_IDS = frozenset({"manager-001", "octopus-bot", "zhangsan"})
DAY_S = 86400.0


class DingTalkFake(SpecFake):
    name = "dingtalk"
    spec = DINGTALK
    created_status = 200
    ENV: ClassVar[dict[str, str]] = {
        "DINGTALK_APP_KEY": "dingfakeappkey0001",
        "DINGTALK_APP_SECRET": "fake-dingtalk-app-secret-0001",
        "DINGTALK_AGENT_ID": "2001002",
    }

    def __init__(
        self,
        *,
        app_key: str = ENV["DINGTALK_APP_KEY"],
        app_secret: str = ENV["DINGTALK_APP_SECRET"],
        agent_id: int = int(ENV["DINGTALK_AGENT_ID"]),
        union_ids: frozenset[str] = DEFAULT_UNION_IDS,
        user_ids: frozenset[str] = DEFAULT_USER_IDS,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"appKey": app_key, "appSecret": app_secret}, **kw)
        self.agent_id = agent_id
        self.union_ids = union_ids
        self.user_ids = user_ids
        self.expired: set[str] = set()
        self.todos: dict[tuple[str, str], str] = {}  # (owner unionId, sourceId) → to-do id
        self.notifications: list[dict[str, Any]] = []
        self.suppressed = 0
        self._seen: dict[tuple[str, str], float] = {}  # (userId, content) → when it was shown
        self._tasks = itertools.count(256271667526)

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": self.base_url, "apiUrl": self.base_url, "allowPrivateNetwork": True}

    def token_routes(self) -> list[web.RouteDef]:
        return [token_route(NEW_TOKEN, self.accepted, self), token_route(OLD_TOKEN, self.accepted, self)]

    def create_path(self, object_type: str, call: CreateCall) -> str:
        return TODO_PATH if object_type == "task" else call.path  # the to-do's path names its owner

    def extra_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1.0/todo/users/{union}/tasks/sources/{source}", self.todo_by_source),
            web.get("/auth/scopes", self.scopes),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ()  # admit answers the limit in each generation's shape

    def expire_tokens(self) -> None:
        self.expired.update(self.tokens)
        self.tokens.clear()

    # -- the two envelopes -------------------------------------------------------------------

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers, dumps=lambda obj: orjson.dumps(obj).decode())

    def new_error(self, status: int, code: str, message: str) -> web.Response:
        return self.answer({"code": code, "message": message, "requestid": secrets.token_hex(8).upper()}, status)

    def old_error(self, errcode: int, errmsg: str) -> web.Response:
        return self.answer({"errcode": errcode, "errmsg": errmsg, "request_id": secrets.token_hex(6)})

    async def admit(self, request: web.Request) -> web.Response | None:
        if request.path.startswith("/v1.0/"):
            if caller(NEW_TOKEN, request, self.accepted, self) is None:
                return self.new_error(401, "InvalidAuthentication", "不合法的access_token")
            if (wait := self.rate_limited()) is not None:
                message = f"QPS limit, wait {wait:.2f}s"
                return self.new_error(403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", message)
            return None
        token = request.query.get("access_token", "")
        if not token:
            return self.old_error(41001, "缺少access_token参数")
        if caller(OLD_TOKEN, request, self.accepted, self) is None:
            return self.old_error(42001 if token in self.expired else 40014, "不合法的access_token")
        if self.rate_limited() is not None:
            return self.old_error(90018, "当前企业调用该接口的QPS超过了限制")
        return None

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        if object_type == "task":
            return self.new_error(400, "paramError", "body is not a JSON object")
        return self.old_error(40035, "不合法的参数")

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        if not isinstance(body, dict):
            return self.unreadable(object_type, 400, "not an object")
        if object_type == "task":
            return self._todo_problem(body, request.match_info["union"], request.query.get("operatorId"))
        return self._notification_problem(body)

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        if object_type == "task":
            return self._todo(body, request.match_info["union"])
        return self._notify(body)

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        if call is DINGTALK.objects["task"]:
            return record, {}
        return {"errcode": 0, "errmsg": "ok", "task_id": int(record_id), "request_id": secrets.token_hex(6)}, {}

    # -- to-dos (new API) ----------------------------------------------------------------------

    def _todo_problem(self, body: dict[str, Any], owner: str, operator: str | None) -> web.Response | None:
        errors = sorted(_TODO.iter_errors(body), key=str)
        if errors:
            where = ".".join(str(p) for p in errors[0].absolute_path) or "body"
            return self.new_error(400, "todo.taskCreate.paramError", f"{where}: {errors[0].message}")
        if owner not in self.union_ids or (operator is not None and operator != owner):
            return self.new_error(400, "todo.taskCreate.paramError", "unionId and operatorId must be the same user")
        unknown = [
            u for u in (*body.get("executorIds", []), *body.get("participantIds", [])) if u not in self.union_ids
        ]
        if unknown or body.get("creatorId", owner) not in self.union_ids:
            return self.new_error(400, "todo.taskCreate.paramError", "executor or participant is not a valid unionId")
        return None

    def _todo(self, body: dict[str, Any], owner: str) -> tuple[str, dict[str, Any]]:
        todo_id = "OPJpwt" + secrets.token_hex(10)
        now = int(time.time() * 1000)
        todo = {
            **body,
            "id": todo_id,
            "done": False,
            "source": "isv_dingtalkTodo",
            "createdTime": now,
            "modifiedTime": now,
            "creatorId": body.get("creatorId", owner),
            "modifierId": owner,
            "bizTag": "isv_dingtalkTodo",
            "requestId": secrets.token_hex(8).upper(),
        }
        if "sourceId" in body:
            self.todos[(owner, body["sourceId"])] = todo_id
        return todo_id, todo

    async def todo_by_source(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        todo_id = self.todos.get((request.match_info["union"], request.match_info["source"]))
        if todo_id is None:
            return self.new_error(400, "todo.getTaskBySourceId.paramError", "task not exist")
        return self.answer(self.records[todo_id])

    # -- work notifications (old API) ----------------------------------------------------------

    def _notification_problem(self, body: dict[str, Any]) -> web.Response | None:
        if body.get("agent_id") != self.agent_id:
            return self.old_error(40035, "不合法的参数: agent_id")
        users = [u for u in str(body.get("userid_list") or "").split(",") if u]
        if len(users) > 100:
            return self.old_error(40035, "不合法的参数: userid_list 最多100个")
        if not users and not body.get("dept_id_list") and body.get("to_all_user") is not True:
            return self.old_error(40035, "不合法的参数: 接收者为空")
        return None if _content(body) else self.old_error(40035, "不合法的参数: msg")

    def _notify(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        content = _content(body)
        task_id = next(self._tasks)
        now = time.monotonic()
        for user in [u for u in str(body.get("userid_list") or "").split(",") if u]:
            seen = self._seen.get((user, content))
            if seen is not None and now - seen < DAY_S:
                self.suppressed += 1  # DingTalk shows the same content to a user once a day
                continue
            self._seen[(user, content)] = now
            self.notifications.append({"task_id": task_id, "userid": user, "content": content})
        return str(task_id), body

    async def scopes(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        return self.answer(
            {
                "errcode": 0,
                "errmsg": "ok",
                "auth_user_field": ["name", "userid"],
                "auth_org_scopes": {"authed_dept": [1], "authed_user": []},
            }
        )


def _content(body: dict[str, Any]) -> str:
    """A work notification's shown content (text, or markdown title and text); "" when malformed."""
    msg = body.get("msg")
    kind = msg.get("msgtype") if isinstance(msg, dict) else None
    part = msg.get(kind) if isinstance(msg, dict) and isinstance(kind, str) else None
    if kind == "text" and isinstance(part, dict) and isinstance(part.get("content"), str) and part["content"]:
        return str(part["content"])
    if kind == "markdown" and isinstance(part, dict) and part.get("title") and part.get("text"):
        return f"{part['title']}\n{part['text']}"
    return ""
