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
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from adapters.dingtalk import NEW_TOKEN, OLD_TOKEN
from octopus_crm_sandbox.envelope import caller, token_route
from octopus_crm_sandbox.kit import FakeVendor

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


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda obj: orjson.dumps(obj).decode())


class DingTalkFake(FakeVendor):
    name = "dingtalk"
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
        super().__init__(**kw)
        self.accepted = {"appKey": app_key, "appSecret": app_secret}
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

    def routes(self) -> list[web.RouteDef]:
        return [
            token_route(NEW_TOKEN, self.accepted, self),
            token_route(OLD_TOKEN, self.accepted, self),
            web.post("/v1.0/todo/users/{union}/tasks", self.create_todo),
            web.get("/v1.0/todo/users/{union}/tasks/sources/{source}", self.todo_by_source),
            web.post("/topapi/message/corpconversation/asyncsend_v2", self.send_notification),
            web.get("/auth/scopes", self.scopes),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ()  # each handler answers the limit in its generation's shape

    def expire_tokens(self) -> None:
        self.expired.update(self.tokens)
        self.tokens.clear()

    # -- the two envelopes -------------------------------------------------------------------

    def new_error(self, status: int, code: str, message: str) -> web.Response:
        return _json({"code": code, "message": message, "requestid": secrets.token_hex(8).upper()}, status)

    def old_error(self, errcode: int, errmsg: str) -> web.Response:
        return _json({"errcode": errcode, "errmsg": errmsg, "request_id": secrets.token_hex(6)})

    def new_denied(self, request: web.Request) -> web.Response | None:
        if caller(NEW_TOKEN, request, self.accepted, self) is None:
            return self.new_error(401, "InvalidAuthentication", "不合法的access_token")
        if (wait := self.rate_limited()) is not None:
            return self.new_error(403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", f"QPS limit, wait {wait:.2f}s")
        return None

    def old_denied(self, request: web.Request) -> web.Response | None:
        token = request.query.get("access_token", "")
        if not token:
            return self.old_error(41001, "缺少access_token参数")
        if caller(OLD_TOKEN, request, self.accepted, self) is None:
            return self.old_error(42001 if token in self.expired else 40014, "不合法的access_token")
        if self.rate_limited() is not None:
            return self.old_error(90018, "当前企业调用该接口的QPS超过了限制")
        return None

    async def _body(self, request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None

    # -- to-dos (new API) ----------------------------------------------------------------------

    async def create_todo(self, request: web.Request) -> web.Response:
        if (denied := self.new_denied(request)) is not None:
            return denied
        owner, operator = request.match_info["union"], request.query.get("operatorId")
        body = await self._body(request)
        if not isinstance(body, dict):
            return self.new_error(400, "paramError", "body is not a JSON object")
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
        self.records[todo_id] = todo
        if "sourceId" in body:
            self.todos[(owner, body["sourceId"])] = todo_id
        return _json(todo)

    async def todo_by_source(self, request: web.Request) -> web.Response:
        if (denied := self.new_denied(request)) is not None:
            return denied
        todo_id = self.todos.get((request.match_info["union"], request.match_info["source"]))
        if todo_id is None:
            return self.new_error(400, "todo.getTaskBySourceId.paramError", "task not exist")
        return _json(self.records[todo_id])

    # -- work notifications (old API) ----------------------------------------------------------

    async def send_notification(self, request: web.Request) -> web.Response:
        if (denied := self.old_denied(request)) is not None:
            return denied
        body = await self._body(request)
        if not isinstance(body, dict):
            return self.old_error(40035, "不合法的参数")
        if body.get("agent_id") != self.agent_id:
            return self.old_error(40035, "不合法的参数: agent_id")
        users = [u for u in str(body.get("userid_list") or "").split(",") if u]
        if len(users) > 100:
            return self.old_error(40035, "不合法的参数: userid_list 最多100个")
        if not users and not body.get("dept_id_list") and body.get("to_all_user") is not True:
            return self.old_error(40035, "不合法的参数: 接收者为空")
        msg = body.get("msg")
        kind = msg.get("msgtype") if isinstance(msg, dict) else None
        part = msg.get(kind) if isinstance(msg, dict) and isinstance(kind, str) else None
        if kind == "text" and isinstance(part, dict) and isinstance(part.get("content"), str) and part["content"]:
            content = part["content"]
        elif kind == "markdown" and isinstance(part, dict) and part.get("title") and part.get("text"):
            content = f"{part['title']}\n{part['text']}"
        else:
            return self.old_error(40035, "不合法的参数: msg")
        task_id = next(self._tasks)
        now = time.monotonic()
        for user in users:
            seen = self._seen.get((user, content))
            if seen is not None and now - seen < DAY_S:
                self.suppressed += 1  # DingTalk shows the same content to a user once a day
                continue
            self._seen[(user, content)] = now
            self.notifications.append({"task_id": task_id, "userid": user, "content": content})
        self.records[str(task_id)] = body
        return _json({"errcode": 0, "errmsg": "ok", "task_id": task_id, "request_id": secrets.token_hex(6)})

    async def scopes(self, request: web.Request) -> web.Response:
        if (denied := self.old_denied(request)) is not None:
            return denied
        return _json(
            {
                "errcode": 0,
                "errmsg": "ok",
                "auth_user_field": ["name", "userid"],
                "auth_org_scopes": {"authed_dept": [1], "authed_user": []},
            }
        )
