"""A WeCom fake: gettoken, OA applyevent, app message/send and agent/get over real HTTP.

Like WeCom it answers every call with HTTP 200 and ``{"errcode", "errmsg"}``, mirroring the code in
the ``error-code`` / ``error-msg`` headers; rate limiting is ``errcode 45009`` in a 200, never 429.
Tokens expire (``token_ttl``); :meth:`WeComFake.expire_tokens` makes every issued token answer
``42001``, an unknown token answers ``40014``. applyevent checks the creator against the app's
visible users, the template id, each control id and type against the template, and the approver
shape, answering ``301025 get approval param error:…`` as WeCom does. message/send checks agentid,
recipients (unknown ones come back in ``invaliduser``; all unknown is ``81013``), msgtype and
content, and honours ``enable_duplicate_check``: the same text to the same recipients inside the
window returns the first message's ``msgid`` and sends nothing.

The envelope (the token check, the create routes) comes from the adapter's spec
(sandbox/octopus_crm_sandbox/specfake.py). WeCom publishes no machine-readable spec, so the checks
stay WeCom's own rules, each with the errcode WeCom answers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web

from octopus_crm.adapters.spec import CreateCall
from octopus_crm.adapters.wecom import SPEC as WECOM
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["DEFAULT_TEMPLATES", "WeComFake"]

# template id → {control id: control type}: the seed's template, whose control ids are its data
# keys, and one shaped like a real template (ids as gettemplatedetail returns them).
DEFAULT_TEMPLATES: dict[str, dict[str, str]] = {
    "customer_inquiry_template": {
        "customer_name": "Text",
        "platform": "Text",
        "content": "Text",
        "category": "Text",
        "priority": "Text",
    },
    "3TmmcVxSXNgmZJM8ZpbrZVuucxadbweg7pdtEmaQ": {
        "Text-1571833547093": "Text",
        "Text-1571833555317": "Text",
        "Textarea-1571833560452": "Textarea",
        "Text-1571833566786": "Text",
        "Text-1571833571011": "Text",
    },
}
DEFAULT_USERS = frozenset({"octopus-bot", "manager-001", "zhangsan", "lisi"})
CONTENT_MAX_BYTES = 2048


def _answer(errcode: int = 0, errmsg: str = "ok", **data: Any) -> web.Response:
    return web.json_response(
        {"errcode": errcode, "errmsg": errmsg, **data},
        status=200,
        headers={"error-code": str(errcode), "error-msg": errmsg},
        dumps=lambda obj: orjson.dumps(obj).decode(),
    )


class WeComFake(SpecFake):
    name = "wecom"
    spec = WECOM
    created_status = 200
    ENV: ClassVar[dict[str, str]] = {
        "WEWORK_CORP_ID": "ww-fake-corp-0001",
        "WEWORK_AGENT_ID": "1000002",
        "WEWORK_SECRET": "fake-wecom-app-secret-0001",
    }

    def __init__(
        self,
        *,
        corp_id: str = ENV["WEWORK_CORP_ID"],
        secret: str = ENV["WEWORK_SECRET"],
        agent_id: int = int(ENV["WEWORK_AGENT_ID"]),
        templates: Mapping[str, Mapping[str, str]] | None = None,
        users: frozenset[str] | None = DEFAULT_USERS,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"corpId": corp_id, "secret": secret}, **kw)
        self.corp_id = corp_id
        self.secret = secret
        self.agent_id = agent_id
        self.templates = {k: dict(v) for k, v in (templates or DEFAULT_TEMPLATES).items()}
        self.users = users
        self.expired: set[str] = set()
        self.approvals: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.error_answers: list[int] = []
        self._recent: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._seq = itertools.count(1)

    def token_routes(self) -> list[web.RouteDef]:
        return [web.get("/cgi-bin/gettoken", self.gettoken)]

    def extra_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/cgi-bin/agent/get", self.agent_get),
            web.get("/cgi-bin/get_api_domain_ip", self.api_domain_ip),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/cgi-bin/oa/", "/cgi-bin/message/")

    def too_many(self, wait: float) -> web.Response:
        self.error_answers.append(45009)
        return _answer(45009, "api freq out of limit, hint: [fake], more info at errcode 45009")

    def expire_tokens(self) -> None:
        self.expired.update(self.tokens)
        self.tokens.clear()

    def _error(self, errcode: int, errmsg: str) -> web.Response:
        self.error_answers.append(errcode)
        return _answer(errcode, errmsg)

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return self._error(int(fields.get("errcode", 47001)), "; ".join(messages))

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        return _answer(**body)  # WeCom answers HTTP 200 with errcode 0 for every success

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        return self._error(47001, "data format error")

    # -- auth --------------------------------------------------------------------------------

    async def gettoken(self, request: web.Request) -> web.Response:
        corpid, secret = request.query.get("corpid"), request.query.get("corpsecret")
        if not corpid:
            return self._error(41002, "corpid missing")
        if corpid != self.corp_id:
            return self._error(40013, "invalid corpid")
        if not secret:
            return self._error(41004, "corpsecret missing")
        if secret != self.secret:
            return self._error(40001, "invalid credential")
        token = self.issue_token("wx")
        return _answer(access_token=token, expires_in=int(self.token_ttl))

    def unauthorized(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token")
        if not token:
            return self._error(41001, "access_token missing")
        if token in self.expired or token in self.tokens:
            return self._error(42001, "access_token expired")
        return self._error(40014, "invalid access_token")

    # -- creates -----------------------------------------------------------------------------

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        if not isinstance(body, dict):
            return self._error(47001, "data format error")
        if object_type == "message":
            return self._check_message(body)
        problem = self._check_apply(body)
        return self._error(301025, f"get approval param error:{problem}") if problem else None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        if object_type == "message":
            return self._send(body)
        day = datetime.now(UTC).strftime("%Y%m%d")
        sp_no = f"{day}{next(self._seq):04d}"
        self.approvals.append(body)
        return sp_no, body

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        if call.path.endswith("/applyevent"):
            return {"sp_no": record_id}, {}
        return {"invaliduser": "|".join(self._invalid(record)), "msgid": record_id}, {}

    # -- OA approval ---------------------------------------------------------------------------

    def _check_apply(self, body: dict[str, Any]) -> str:
        creator = body.get("creator_userid")
        if not isinstance(creator, str) or not creator:
            return "creator_userid empty"
        if self.users is not None and creator not in self.users:
            return "creator_userid not in app visiable range"
        template = self.templates.get(str(body.get("template_id")))
        if template is None:
            return "invalid template_id"
        use_template = body.get("use_template_approver")
        if use_template not in (0, 1):
            return "invalid use_template_approver"
        if use_template == 0 and (problem := self._check_approvers(body.get("approver"))):
            return problem
        contents = (body.get("apply_data") or {}).get("contents")
        if not isinstance(contents, list) or not contents:
            return "no applydata content"
        for item in contents:
            if not isinstance(item, dict):
                return "invalid control"
            kind = template.get(str(item.get("id")))
            if kind is None:
                return f"invalid control id {item.get('id')}"
            if item.get("control") != kind:
                return f"control type mismatch {item.get('id')}"
            value = item.get("value")
            if not isinstance(value, dict) or not isinstance(value.get("text"), str):
                return f"invalid value of control {item.get('id')}"
        summary = body.get("summary_list", [])
        if not isinstance(summary, list) or len(summary) > 3:
            return "summary_list at most 3 lines"
        for line in summary:
            info = line.get("summary_info") if isinstance(line, dict) else None
            if not isinstance(info, list) or not all(
                isinstance(i, dict) and isinstance(i.get("text"), str) and i.get("lang") for i in info
            ):
                return "invalid summary_info"
        return ""

    def _check_approvers(self, approver: Any) -> str:
        if not isinstance(approver, list) or not approver:
            return "approver empty"
        for node in approver:
            if not isinstance(node, dict) or node.get("attr") not in (1, 2):
                return "invalid approver attr"
            ids = node.get("userid")
            if not isinstance(ids, list) or not ids or not all(isinstance(u, str) for u in ids):
                return "invalid approver userid"
            if self.users is not None and any(u not in self.users for u in ids):
                return "approver userid not exist"
        return ""

    # -- app messages --------------------------------------------------------------------------

    def _check_message(self, body: dict[str, Any]) -> web.Response | None:
        agentid = body.get("agentid")
        if agentid is None:
            return self._error(41011, "missing agentid")
        if agentid != self.agent_id:
            return self._error(40056, "invalid agentid")
        msgtype = body.get("msgtype")
        if msgtype not in ("text", "markdown"):
            return self._error(40008, "invalid message type")
        content = (body.get(msgtype) or {}).get("content")
        if not isinstance(content, str) or not content:
            return self._error(44004, "empty content")
        if len(content.encode()) > CONTENT_MAX_BYTES:
            return self._error(45002, "content size out of limit")
        users = [u for u in str(body.get("touser") or "").split("|") if u]
        if not users and not body.get("toparty") and not body.get("totag"):
            return self._error(40031, "invalid user list")
        invalid = self._invalid(body)
        if users and len(invalid) == len(users) and not body.get("toparty") and not body.get("totag"):
            return self._error(81013, "user & party & tag all invalid")
        return None

    def _invalid(self, body: dict[str, Any]) -> list[str]:
        users = [u for u in str(body.get("touser") or "").split("|") if u]
        return [u for u in users if self.users is not None and u != "@all" and u not in self.users]

    def _send(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Send a checked message, or, inside the duplicate-check window, answer the first one's id."""
        msgtype = str(body.get("msgtype"))
        key = (str(body.get("touser")), msgtype, str(body[msgtype]["content"]))
        now = time.monotonic()
        if body.get("enable_duplicate_check") == 1:
            seen = self._recent.get(key)
            if seen is not None and now - seen[0] < float(body.get("duplicate_check_interval", 1800)):
                return seen[1], self.records[seen[1]]
        msgid = f"msg{next(self._seq):06d}-{self.new_id()}"
        self._recent[key] = (now, msgid)
        self.messages.append(body)
        return msgid, body

    # -- cheap reads ----------------------------------------------------------------------------

    async def agent_get(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        if request.query.get("agentid") != str(self.agent_id):
            return self._error(40056, "invalid agentid")
        return _answer(agentid=self.agent_id, name="Octopus", close=0)

    async def api_domain_ip(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        return _answer(ip_list=["127.0.0.1"])
