"""WeCom / 企业微信: OA approvals (``oa/applyevent``) and app messages (``message/send``).

Auth: ``GET /cgi-bin/gettoken?corpid=…&corpsecret=…`` → ``access_token`` (7200 s), one cached token
per app secret, sent as the ``access_token`` query parameter and fetched again early or when WeCom
rejects it (40014, 42001, 40001, 41001). Every answer is HTTP 200; ``errcode != 0`` is the error and
``errmsg`` keeps WeCom's words (codes: the global error-code table, document/path/90313, as
mirrored by WxJava's ``WxCpErrorMsgEnum``; approval codes 301025/301055 from WeCom community
threads).

The seed's ``oa_approval`` mapping (``template_id``, ``applicant``, ``approver: [...]``, ``data:
{customer_name, …}``) becomes the real applyevent body: ``creator_userid`` = applicant, approvers as
``approver: [{attr: 1, userid: [...]}]`` with ``use_template_approver: 0`` (else the template's
flow), one ``Text`` control per ``data`` key and a ≤ 3-line ``summary_list``. Control ids come from
the integration's ``controls`` table (``{"customer_name": "Text-1571833547093"}`` or ``{"content":
{"id": "Textarea-…", "control": "Textarea"}}``); without it the data key itself is sent as the id,
which only works against templates whose ids were chosen that way — real templates need the ids
from ``POST /cgi-bin/oa/gettemplatedetail``. A mapping that already has ``apply_data`` is sent as
written. WeCom approvals have no web URL, so ``external_url`` is ``None``.

``message``: a text (or markdown) app message from ``agentId`` to ``touser`` (a user id, a list, or
``a|b``), with WeCom's own duplicate check on (``enable_duplicate_check: 1``, 1,800 s window): a
redelivered event with the same text inside the window is not shown twice. Applyevent has no
idempotency key and no lookup by our key, so an ambiguous approval cannot be resolved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, BodyCodes, IntegrationConfig
from octopus_crm.adapters.http import Classifier, Request, Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import CreateCall, JsonToken, SpecAdapter, VendorSpec
from octopus_crm.core.errors import ConfigError, DeliveryError, PermanentError, RateLimitedError

__all__ = ["WECOM_CODES", "RateLimitBlocks", "WeComAdapter"]

TOKEN_PATH = "/cgi-bin/gettoken"
APPLY_PATH = "/cgi-bin/oa/applyevent"
MESSAGE_PATH = "/cgi-bin/message/send"
AGENT_PATH = "/cgi-bin/agent/get"

WECOM_CODES = BodyCodes(
    field="errcode",
    ok=0,
    message_field="errmsg",
    # invalid access_token, expired, invalid credential (token or secret), token missing
    token_expired=frozenset({40014, 42001, 40001, 41001}),
    # api freq out of limit, minute quota, concurrent calls over limit
    rate_limited=frozenset({45009, 45011, 45033}),
    retryable=frozenset({-1}),  # system busy
    auth=frozenset(
        {
            40013,  # invalid corpid
            40091,  # secret of another corp
            48002,  # API forbidden for this app
            48004,  # authorisation revoked
            50002,  # member outside the app's visibility
            50003,  # app disabled
            60020,  # caller IP not in the app's trusted IPs
            301055,  # no approval permission: add the app to 审批 → 可调用接口的应用
        }
    ),
)
# WeCom blocks a caller for 60 s after a minute limit and for 60 min after an hourly one
# (frequency-limit doc, path/90454); 45009 does not say which. 45033 (too many concurrent calls)
# clears as soon as a call in flight finishes.
MINUTE_BLOCK_S = 60.0
HOUR_BLOCK_S = 3600.0
CONCURRENCY_PAUSE_S = 2.0
MINUTE_QUOTA = 45011
CONCURRENCY_LIMIT = 45033

# App messages: ≤ 30/min and ≤ 1,000/h per app per member, and the excess is dropped silently,
# so an integration that sends messages paces under the hourly cap (16/min ≈ 960/h).
MESSAGE_RATE = RateLimit(requests=16, perSeconds=60, concurrency=4)

PRIORITY_ZH = {"low": "低", "medium": "中", "high": "高", "urgent": "紧急"}


@dataclass
class RateLimitBlocks:
    """How long WeCom's block lasts, learnt from the codes: a limit answered again once a minute
    block is over is the hourly one, so the wait runs to an hour after the block began (waking
    every minute would spend a call, and a retry attempt, on each 45009)."""

    clock: Callable[[], float] = time.monotonic
    began: float | None = None  # first block code of the current run of blocks
    last: float | None = None  # latest block code

    def pause(self, code: object, message: str) -> float:
        now = self.clock()
        if code == CONCURRENCY_LIMIT:
            return CONCURRENCY_PAUSE_S
        hourly = "hour" in message.lower()
        if self.last is not None and self.began is not None and now - self.last < MINUTE_BLOCK_S + 90:
            # still blocked: the answers of calls sent during the block, or the hourly limit
            # when this one came after a minute block had run out
            hourly = hourly or (code != MINUTE_QUOTA and now - self.began >= MINUTE_BLOCK_S - 5)
        else:
            self.began = now
        self.last = now
        if hourly:
            return max(MINUTE_BLOCK_S, HOUR_BLOCK_S - (now - self.began))
        return max(1.0, MINUTE_BLOCK_S - (now - self.began))


def _classify(response: Response, blocks: RateLimitBlocks | None = None) -> DeliveryError | None:
    error = WECOM_CODES.classify(response)
    if isinstance(error, RateLimitedError) and error.retry_after is None:
        body = response.json()
        code = body.get("errcode") if isinstance(body, dict) else None
        error.retry_after = (blocks or RateLimitBlocks()).pause(code, error.message)
    return error


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _user_ids(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value or "").split("|")
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


class WeComCredentials(Credentials):
    corpId: str | None = alias("corpId", "corpid", description="The company's CorpID (required).")
    secret: SecretStr | None = alias("secret", "corpSecret", "corpsecret", description="The app's Secret (required).")
    agentId: str | int | None = alias("agentId", "agentid", description="The app's numeric AgentId (messages).")


class WeComEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="Default https://qyapi.weixin.qq.com.")


class WeComSettings(VendorSettings):
    credentials: WeComCredentials = Field(default_factory=WeComCredentials)
    endpoints: WeComEndpoints = Field(default_factory=WeComEndpoints)
    controls: dict[str, Any] | None = Field(default=None, description="Data key → approval control id.")


SPEC = VendorSpec(
    auth={
        "corp_secret": JsonToken(
            TOKEN_PATH,
            method="GET",
            send={"corpid": ("corpId", "corpid"), "corpsecret": ("secret", "corpSecret", "corpsecret")},
            token_field="access_token",
            ttl_field="expires_in",
            code_field="errcode",
            message_field="errmsg",
            param="access_token",
        )
    },
    default_auth="corp_secret",
    objects={
        "oa_approval": CreateCall(
            APPLY_PATH,
            body=lambda adapter, fields, event, ctx: adapter.applyevent(fields),
            id_at=("sp_no",),
            what="an sp_no",
        ),
        "message": CreateCall(
            MESSAGE_PATH,
            body=lambda adapter, fields, event, ctx: adapter.message(fields),
            id_at=("msgid",),
            key_as_id=True,
            detail={k: (k,) for k in ("invaliduser", "invalidparty", "invalidtag")},
        ),
    },
)


class WeComAdapter(SpecAdapter):
    info = AdapterInfo(
        type="wecom",
        display_name="WeCom",
        display_name_zh="企业微信",
        object_types=("oa_approval", "message"),
        auth_types=("corp_secret",),
        rate_limit=RateLimit(requests=1000, perSeconds=60, concurrency=8),
        aliases=("wework",),
        idempotency="message: WeCom duplicate check (same text, 1,800 s); oa_approval: ledger only",
        docs=(
            "WeCom allows 10,000 calls/min and 150,000/h per corp per API, shared by every app "
            "of the corp; we default to 1,000/min (under the hourly cap, leaving room for other "
            "apps). An integration that maps `message` defaults to 16/min instead: app messages "
            "are capped at 30/min and 1,000/h per member and WeCom drops the excess silently."
        ),
    )
    settings_model = WeComSettings
    spec = SPEC
    default_base_url = "https://qyapi.weixin.qq.com"
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"oa_approval.priority": PRIORITY_ZH}

    def __init__(self, integration_id: str, config: IntegrationConfig) -> None:
        super().__init__(integration_id, config)
        self.blocks = RateLimitBlocks()

    @property
    def base_url(self) -> str:
        return super().base_url.removesuffix("/cgi-bin")

    @property
    def rate_limit(self) -> RateLimit:
        if self.config.rateLimit is None and "message" in self.templates:
            return MESSAGE_RATE
        return super().rate_limit

    def validate_config(self) -> None:
        super().validate_config()
        approval = self.config.mappings.get("oa_approval")
        if isinstance(approval, Mapping) and not (approval.get("template_id") or "apply_data" in approval):
            raise ConfigError("mappings.oa_approval.template_id is required", code="missing_field")
        controls = self.config.extra("controls")
        if controls is not None and not isinstance(controls, Mapping):
            raise ConfigError("controls must map data keys to WeCom control ids", code="bad_config")
        if "message" in self.config.mappings:
            self._agent_id()

    def _agent_id(self) -> int:
        raw = self.config.secret("agentId", "agentid")
        try:
            return int(raw)
        except ValueError:
            raise ConfigError("credentials.agentId must be the app's numeric AgentId", code="bad_config") from None

    def classifier(self) -> Classifier:
        blocks = self.blocks

        def classify(response: Response) -> DeliveryError | None:
            return _classify(response, blocks)

        return classify

    def applyevent(self, fields: dict[str, Any]) -> dict[str, Any]:
        if "apply_data" in fields:  # already WeCom's shape
            return {"use_template_approver": 0 if fields.get("approver") else 1, **fields}
        creator = fields.get("applicant") or fields.get("creator_userid")
        if not creator:
            raise PermanentError(
                "oa_approval needs an applicant (creator_userid): the event has no such user id",
                code="missing_field",
            )
        data = fields.get("data") or {}
        contents = [self._control(key, value) for key, value in data.items()]
        if not contents:
            raise PermanentError("oa_approval needs at least one data value", code="missing_field")
        approvers = _user_ids(fields.get("approver"))
        body: dict[str, Any] = {
            "creator_userid": str(creator),
            "template_id": fields["template_id"],
            "use_template_approver": 0 if approvers else 1,
            "apply_data": {"contents": contents},
            "summary_list": _summary(fields.get("summary"), data),
        }
        if approvers:
            body["approver"] = [{"attr": 1, "userid": approvers}]
        return body

    def _control(self, key: str, value: Any) -> dict[str, Any]:
        spec = (self.config.extra("controls") or {}).get(key, key)
        control_id, control = spec, "Text"
        if isinstance(spec, Mapping):
            control_id, control = spec.get("id", key), spec.get("control", "Text")
        table = self._value_maps.get(f"oa_approval.{key}")
        text = _text(value)
        if table:
            text = str(table.get(text, table.get(text.lower(), text)))
        return {"control": control, "id": str(control_id), "value": {"text": text}}

    def message(self, fields: dict[str, Any]) -> dict[str, Any]:
        msgtype = str(fields.get("msgtype") or "text")
        content = fields.get("content") or (fields.get(msgtype) or {}).get("content")
        if not content:
            raise PermanentError("message needs content", code="missing_field")
        body: dict[str, Any] = {
            "msgtype": msgtype,
            "agentid": self._agent_id(),
            msgtype: {"content": _text(content)},
            "enable_duplicate_check": int(fields.get("enable_duplicate_check", 1)),
            "duplicate_check_interval": int(fields.get("duplicate_check_interval", 1800)),
        }
        for key in ("touser", "toparty", "totag"):
            if ids := _user_ids(fields.get(key)):
                body[key] = "|".join(ids)
        if not any(key in body for key in ("touser", "toparty", "totag")):
            raise PermanentError("message needs touser, toparty or totag", code="missing_field")
        return body

    async def test_connection(self) -> None:
        if self.config.secret("agentId", "agentid", required=False):
            await self.http.send(Request("GET", AGENT_PATH, params={"agentid": str(self._agent_id())}, paced=False))
        else:
            await self.http.send(Request("GET", "/cgi-bin/get_api_domain_ip", paced=False))


def _summary(custom: Any, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """≤ 3 summary lines for the approval card: the mapping's ``summary`` or category / customer."""
    if custom:
        lines = [_text(v) for v in (custom if isinstance(custom, list) else [custom])]
    else:
        lines = [
            _text(data.get("category")),
            f"客户: {_text(data['customer_name'])}" if data.get("customer_name") else "",
            f"来源: {_text(data['platform'])}" if data.get("platform") else "",
        ]
    return [{"summary_info": [{"text": line, "lang": "zh_CN"}]} for line in lines if line][:3]
