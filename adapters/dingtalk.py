"""DingTalk / 钉钉: to-do tasks (new API) and work notifications (old API).

Two API generations, each with its own token, both cached per app (7,200 s; asking again inside
the validity returns the same token, and DingTalk throttles callers that ask too often):

- new, ``https://api.dingtalk.com`` (``endpoints.apiUrl``): ``POST /v1.0/oauth2/accessToken``
  ``{appKey, appSecret}`` → ``{accessToken, expireIn}``, sent as header ``x-acs-dingtalk-access-token``.
  Errors are ``{code, message, requestid}``: 401 ``InvalidAuthentication`` (token rejected: fetch a
  new one), 403 ``Forbidden.AccessDenied.*``, 400 ``*.paramError``, 500 ``*.systemError`` — and some
  business errors arrive with HTTP 200, so a body with a ``code`` is an error whatever the status.
- old, ``https://oapi.dingtalk.com`` (the seed's ``endpoints.baseUrl``): ``GET /gettoken?appkey&appsecret``
  → ``{errcode, access_token, expires_in}``, sent as query ``access_token``. Always HTTP 200;
  ``errcode != 0`` is the error (88: look at ``sub_code``). 40014/42001/41001: token rejected.

``task``: ``POST /v1.0/todo/users/{unionId}/tasks?operatorId={unionId}`` (SDK ``todo_1_0``
CreateTodoTask): ``subject`` (≤ 1,024 chars), ``description`` (≤ 4,096), ``executorIds`` /
``participantIds`` (unionIds, not userIds), ``priority`` 10/20/30/40, ``dueTime`` (ms), ``detailUrl``,
``sourceId``. The owner (path and ``creatorId``) is ``operatorUnionId``, else the mapping's
``creatorId``, else the first executor. The seed's ``ccIds`` (no such to-do field) join the
participants. ``sourceId`` is ``octopus-<hash of the idempotency key>``, and
``GET /v1.0/todo/users/{unionId}/tasks/sources/{sourceId}`` finds a to-do an ambiguous attempt made.
A to-do has no web URL.

``message``: a work notification, ``POST /topapi/message/corpconversation/asyncsend_v2`` with
``agent_id`` (credentials.agentId), ``userid_list`` (userIds, ≤ 100) and ``msg`` (text or
markdown) → ``task_id``. DingTalk shows the same content to the same user at most once a day, which
absorbs a redelivery.

Limits (help: call-frequency-limit): per app per API 20 QPS on the standard edition (old errcode
90018, new ``Forbidden.AccessDenied.QpsLimitForAppkeyAndApi``), per API across DingTalk (90002,
``…QpsLimitForApi``) — both clear within a second; per egress IP 10,000 calls per 20 s, then a
5-minute block answered with a ``{"punish": "deny", "wait": 5}`` page instead of a code; a monthly
quota on the standard edition (5,000 calls; 90020, ``Forbidden.AccessDenied.ApiCountLimitForOrg``),
which lasts until the month ends (China time).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
from pydantic import Field, SecretStr

from octopus_crm.adapters.auth import Auth, RoutedAuth, TokenAuth
from octopus_crm.adapters.base import AdapterInfo, BodyCodes, Delivered, DeliveryContext
from octopus_crm.adapters.http import Classifier, Request, Response, classify_status, parse_retry_after
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import CreateCall, JsonToken, SpecAdapter, VendorSpec, dedupe_marker
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm.core.redaction import redact

__all__ = ["OLD_CODES", "PRIORITY", "DingTalkAdapter", "classify", "source_id"]

API_URL = "https://api.dingtalk.com"
NEW_TOKEN_PATH = "/v1.0/oauth2/accessToken"
OLD_TOKEN_PATH = "/gettoken"
TODO_PATH = "/v1.0/todo/users/{union}/tasks"
MESSAGE_PATH = "/topapi/message/corpconversation/asyncsend_v2"
SCOPES_PATH = "/auth/scopes"
SUBJECT_MAX, DESCRIPTION_MAX, USERS_MAX = 1024, 4096, 100
PRIORITY = {"low": 10, "medium": 20, "high": 30, "urgent": 40}  # 较低 / 普通 / 紧急 / 非常紧急
TASK_FIELDS = frozenset(
    {
        "subject", "description", "dueTime", "executorIds", "participantIds", "ccIds", "priority",
        "detailUrl", "isOnlyShowExecutor", "creatorId", "notifyConfigs", "bizCategoryId",
    }
)  # fmt: skip
CHINA = timezone(timedelta(hours=8))
QPS_PAUSE_S = 1.0  # the QPS windows are one second long
KEYS, SECRETS = ("appKey", "app_key", "clientId"), ("appSecret", "app_secret", "clientSecret")

OLD_CODES = BodyCodes(
    field="errcode",
    ok=0,
    message_field="errmsg",
    token_expired=frozenset({40014, 42001, 41001}),  # invalid, expired, missing access_token
    rate_limited=frozenset({90002, 90018}),  # per API across DingTalk; per app and API
    quota=frozenset({90020}),  # the organisation's monthly API quota
    retryable=frozenset({-1}),  # system busy
    auth=frozenset({40089, 60011, 60020}),  # bad appkey/appsecret, no API permission, IP not allowed
)


def source_id(idempotency_key: str) -> str:
    return dedupe_marker(idempotency_key, 24)


def _until_next_month(now: datetime | None = None) -> float:
    now = now or datetime.now(CHINA)
    first = (now.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return max(60.0, (first - now).total_seconds())


def classify(response: Response) -> DeliveryError | None:
    """Both generations' error shapes, and the IP block page, onto the taxonomy."""
    body = response.json()
    if not isinstance(body, dict):
        return classify_status(response)
    if body.get("punish") == "deny":  # the per-IP block: no code, a wait in minutes
        wait = body.get("wait")
        minutes = float(wait) if isinstance(wait, (int, float)) else 5.0
        message = "DingTalk blocked this IP (over 10,000 calls in 20 s)"
        return RateLimitedError(message, code="ip_blocked", status=response.status, retry_after=minutes * 60)
    if "errcode" in body:
        if body.get("errcode") == 88 and str(body.get("sub_code") or "").lstrip("-").isdigit():
            sub = {**body, "errcode": int(body["sub_code"]), "errmsg": body.get("sub_msg") or body.get("errmsg")}
            response = Response(response.status, response.headers, orjson.dumps(sub), response.url)
        error = OLD_CODES.classify(response)
        if isinstance(error, QuotaExhaustedError):
            error.retry_after = _until_next_month()
        elif isinstance(error, RateLimitedError) and error.retry_after is None:
            error.retry_after = QPS_PAUSE_S
        return error
    code = body.get("code")
    if isinstance(code, str) and code and ("message" in body or not response.ok):
        return _new_api_error(response, code, str(body.get("message") or ""))
    return classify_status(response)


def _new_api_error(response: Response, code: str, message: str) -> DeliveryError:
    text, status = redact(f"{message} ({code})".strip()), response.status
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if code == "Forbidden.AccessDenied.ApiCountLimitForOrg":
        return QuotaExhaustedError(text, code=code, status=status, retry_after=_until_next_month())
    if code.startswith("Forbidden.AccessDenied.QpsLimit") or status == 429:
        return RateLimitedError(text, code=code, status=status, retry_after=retry_after or QPS_PAUSE_S)
    if status == 401 or code == "InvalidAuthentication":
        return TokenExpiredError(text, code=code, status=status)
    if status == 403 or code.startswith("Forbidden"):
        return AuthError(text, code=code, status=status)
    if status >= 500 or code.lower().endswith(("systemerror", "serviceunavailable")):
        return RetryableError(text, code=code, status=status, retry_after=retry_after)
    return PermanentError(text, code=code, status=status)


def _ids(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    return list(dict.fromkeys(str(v).strip() for v in items if v is not None and str(v).strip()))


def _clip(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DingTalkCredentials(Credentials):
    appKey: str | None = alias(*KEYS, description="The app's Client ID / AppKey (required).")
    appSecret: SecretStr | None = alias(*SECRETS, description="The app's Client Secret / AppSecret (required).")
    agentId: str | int | None = alias("agentId", "agent_id", description="The app's AgentId (messages).")


class DingTalkEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="Old API, default https://oapi.dingtalk.com.")
    apiUrl: Url | None = Field(default=None, description="New API, default https://api.dingtalk.com.")


class DingTalkSettings(VendorSettings):
    credentials: DingTalkCredentials = Field(default_factory=DingTalkCredentials)
    endpoints: DingTalkEndpoints = Field(default_factory=DingTalkEndpoints)
    operatorUnionId: str | None = Field(default=None, description="unionId owning the to-dos (else creatorId).")


NEW_TOKEN = JsonToken(
    NEW_TOKEN_PATH,
    send={"appKey": KEYS, "appSecret": SECRETS},
    token_field="accessToken",
    ttl_field="expireIn",
    message_field="message",
    header="x-acs-dingtalk-access-token",
    prefix="",
)
OLD_TOKEN = JsonToken(
    OLD_TOKEN_PATH,
    method="GET",
    send={"appkey": KEYS, "appsecret": SECRETS},
    token_field="access_token",
    ttl_field="expires_in",
    code_field="errcode",
    message_field="errmsg",
    param="access_token",
)
SPEC = VendorSpec(
    auth={"app_secret": NEW_TOKEN},  # and OLD_TOKEN for the oapi paths (DingTalkAdapter.make_auth)
    default_auth="app_secret",
    objects={
        "task": CreateCall(
            "",
            body=lambda adapter, fields, event, ctx: adapter.task(fields, ctx),
            path_of=lambda adapter, body, ctx: adapter.todo_url(body["creatorId"]),
            what="a to-do id",
        ),
        "message": CreateCall(
            MESSAGE_PATH,
            body=lambda adapter, fields, event, ctx: adapter.message(fields),
            id_at=("task_id",),
            what="a task_id",
        ),
    },
)


class DingTalkAdapter(SpecAdapter):
    info = AdapterInfo(
        type="dingtalk",
        display_name="DingTalk",
        display_name_zh="钉钉",
        object_types=("task", "message"),
        auth_types=("app_secret",),
        rate_limit=RateLimit(requests=20, perSeconds=1, concurrency=8),
        aliases=("dingding",),
        idempotency="task: sourceId from the key, looked up by sourceId; message: DingTalk's once-a-day "
        "duplicate suppression",
        docs="https://open.dingtalk.com/document/development/add-dingtalk-to-do-task",
    )
    settings_model = DingTalkSettings
    spec = SPEC
    default_base_url = "https://oapi.dingtalk.com"
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"task.priority": PRIORITY}

    @property
    def api_url(self) -> str:
        return str(self.config.endpoints.get("apiUrl") or API_URL).rstrip("/")

    def validate_config(self) -> None:
        super().validate_config()
        task = self.config.mappings.get("task")
        if isinstance(task, Mapping) and (unknown := sorted(set(task) - TASK_FIELDS)):
            raise ConfigError(f"mappings.task.{unknown[0]}: not a DingTalk to-do field", code="unknown_field")
        if "message" in self.config.mappings:  # numeric is checked at send: validate-config's placeholders aren't
            self.config.secret("agentId", "agent_id")

    def _agent_id(self) -> int:
        raw = self.config.secret("agentId", "agent_id")
        if not raw.isdigit():
            raise ConfigError("credentials.agentId must be the app's numeric AgentId", code="bad_config")
        return int(raw)

    def classifier(self) -> Classifier:
        return classify

    def make_auth(self) -> Auth | None:
        new, old = NEW_TOKEN.build(self.config, self.api_url), OLD_TOKEN.build(self.config, self.base_url)
        if new is None or old is None:  # a JsonToken always builds; this keeps the types honest
            raise ConfigError("credentials.appKey and credentials.appSecret are required", code="missing_credential")
        return RoutedAuth(((f"{self.api_url}/v1.0/", new), ("/v1.0/", new)), default=old)

    def todo_url(self, union_id: str, suffix: str = "") -> str:
        union = quote(union_id, safe="")
        return f"{self.api_url}{TODO_PATH.format(union=union)}{suffix}?operatorId={union}"

    def task(self, fields: dict[str, Any], ctx: DeliveryContext) -> dict[str, Any]:
        """The rendered mapping as a CreateTodoTask body, owned by the operator's unionId."""
        subject = " ".join(str(fields.get("subject") or "").split())
        if not subject:
            raise PermanentError("task needs a subject", code="missing_field")
        executors = _ids(fields.get("executorIds"))
        operator = self.config.extra("operatorUnionId") or fields.get("creatorId") or next(iter(executors), None)
        if not operator:
            raise PermanentError("task needs an owner: operatorUnionId, creatorId or an executor", code="missing_field")
        body: dict[str, Any] = {"subject": _clip(subject, SUBJECT_MAX), "creatorId": str(operator)}
        if description := fields.get("description"):
            body["description"] = _clip(description, DESCRIPTION_MAX)
        if executors:
            body["executorIds"] = executors
        if participants := _ids([*_ids(fields.get("participantIds")), *_ids(fields.get("ccIds"))]):
            body["participantIds"] = participants
        priority = fields.get("priority")
        if isinstance(priority, str) and priority.isdigit():
            priority = int(priority)
        if priority in PRIORITY.values():
            body["priority"] = priority
        if str(fields.get("dueTime") or "").isdigit():
            body["dueTime"] = int(fields["dueTime"])
        if isinstance(url := fields.get("detailUrl"), str) and url:
            body["detailUrl"] = {"appUrl": url, "pcUrl": url}
        elif isinstance(url, Mapping):
            body["detailUrl"] = dict(url)
        for key in ("isOnlyShowExecutor", "notifyConfigs", "bizCategoryId"):
            if fields.get(key) is not None:
                body[key] = fields[key]
        body["sourceId"] = source_id(ctx.idempotency_key)
        return body

    def message(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A work notification: text (or markdown with a title) to userIds or departments."""
        if isinstance(fields.get("msg"), Mapping):
            msg = dict(fields["msg"])
        else:
            content = str(fields.get("content") or fields.get("text") or "")
            if not content:
                raise PermanentError("message needs content", code="missing_field")
            if fields.get("msgtype") == "markdown":
                title = str(fields.get("title") or content.splitlines()[0])[:64]
                msg = {"msgtype": "markdown", "markdown": {"title": title, "text": content}}
            else:
                msg = {"msgtype": "text", "text": {"content": content}}
        body: dict[str, Any] = {"agent_id": self._agent_id(), "msg": msg}
        users = _ids(fields.get("userid_list") or fields.get("touser"))
        if len(users) > USERS_MAX:
            raise PermanentError(f"message: at most {USERS_MAX} users per notification", code="too_many_users")
        if users:
            body["userid_list"] = ",".join(users)
        if depts := _ids(fields.get("dept_id_list")):
            body["dept_id_list"] = ",".join(depts)
        if fields.get("to_all_user") is True:
            body["to_all_user"] = True
        if not (users or depts or body.get("to_all_user")):
            raise PermanentError("message needs userid_list, dept_id_list or to_all_user", code="missing_field")
        return body

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        if object_type != "task":
            return None
        owner = self.task(self.render(event, object_type, ctx), ctx)["creatorId"]
        url = self.todo_url(owner, f"/sources/{quote(source_id(ctx.idempotency_key), safe='')}")
        try:
            response = await self.http.send(Request("GET", url))
        except PermanentError as exc:
            if exc.status in (400, 404):  # no to-do with this sourceId
                return None
            raise
        return self.create_call("task").delivered_from(self, response.json(), {}, None)

    async def test_connection(self) -> None:
        await self.http.send(Request("GET", SCOPES_PATH, paced=False))  # the old token, and a read
        auth = self.http.auth
        if "task" in self.templates and isinstance(auth, RoutedAuth):  # the new token too
            new = auth.pick(Request("GET", f"{self.api_url}/v1.0/"))
            if isinstance(new, TokenAuth):
                await new.probe(self.http)
