"""A Slack fake: ``chat.postMessage`` and ``auth.test`` (Web API) and an incoming webhook.

The Web API half checks the bot token (``Authorization: Bearer xoxb-…``, or a ``token`` form
field), accepts JSON and form bodies, validates the arguments against ``chat.postMessage``'s
parameters from Slack's OpenAPI (``specs/slack_web_api.json``: ``channel`` required, ``blocks``
per the spec's Block Kit definition) and answers HTTP 200 with ``{"ok": false, "error": …}`` the
way Slack does: ``not_authed``, ``invalid_auth``, ``token_revoked``, ``invalid_arguments`` (with
``response_metadata.messages``), ``channel_not_found``, ``not_in_channel``, ``is_archived``,
``no_text``, ``msg_too_long``. Channels are known by name (with or without ``#``) and by id.
Successful answers are checked against the spec's success schema. The rate limit answers HTTP 429
with ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``.

The Web API's envelope (the ``chat.postMessage`` and ``auth.test`` routes under ``/api``) comes from
the adapter's spec (sandbox/octopus_crm_sandbox/specfake.py); the token check reads Slack's two
places for a token. The webhook half serves ``/services/T000/B000/XXXX``: 200 ``ok``, or a status with a short text
reason (``invalid_payload``, ``no_text``, ``invalid_token``, ``no_service``,
``channel_is_archived``).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.slack import SPEC as SLACK
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, Refusal, SpecFake

__all__ = ["SPEC_ERRORS", "SlackFake"]

SPEC = Path(__file__).resolve().parent / "specs" / "slack_web_api.json"
_SPEC = json.loads(SPEC.read_text(encoding="utf-8"))
_POST = _SPEC["paths"]["/chat.postMessage"]["post"]
_ARGS = {p["name"]: p for p in _POST["parameters"] if p["in"] == "formData"}
_TYPES = {"string": ["string"], "boolean": ["boolean", "string"], "integer": ["integer", "string"]}
_ARGS_SCHEMA = {
    "type": "object",
    "required": [name for name, p in _ARGS.items() if p.get("required")],
    "properties": {
        name: {"type": ["array", "string"] if name in ("blocks", "attachments") else _TYPES[p["type"]]}
        for name, p in _ARGS.items()
    },
}
_DEFS = _SPEC["definitions"]
_ARGS_CHECK = jsonschema.Draft7Validator(_ARGS_SCHEMA)
_BLOCKS_CHECK = jsonschema.Draft7Validator({"$ref": "#/definitions/blocks", "definitions": _DEFS})
_SUCCESS_CHECK = jsonschema.Draft7Validator({**_POST["responses"]["200"]["schema"], "definitions": _DEFS})
# The error enum the spec lists for chat.postMessage (old; the live API has more codes).
SPEC_ERRORS = frozenset(_POST["responses"]["default"]["schema"]["properties"]["error"]["enum"])
MAX_TEXT = 40_000
_WARNINGS = web.RequestKey("slack_warnings", list[str])  # Slack's warnings about one call


class SlackFake(SpecFake):
    name = "slack"
    spec = SLACK
    mount = "/api"
    created_status = 200
    ENV: ClassVar[dict[str, str]] = {"SLACK_BOT_TOKEN": "xoxb-1111111111-2222222222-fakeslacktoken"}
    WEBHOOK_PATH = "/services/T000/B000/XXXX"

    def __init__(
        self,
        *,
        tokens: tuple[str, ...] = (ENV["SLACK_BOT_TOKEN"],),
        channels: dict[str, str] | None = None,
        archived: frozenset[str] = frozenset({"C0ARCHIVE1"}),
        not_member: frozenset[str] = frozenset({"C0PRIVATE1"}),
        webhooks: dict[str, str] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={}, **kw)
        self.bot_tokens = set(tokens)
        self.revoked: set[str] = set()
        self.channels = channels or {
            "customer-support": "C0SUPPORT1",
            "general": "C0GENERAL1",
            "old-support": "C0ARCHIVE1",
            "private-ops": "C0PRIVATE1",
        }
        self.archived = archived
        self.not_member = not_member
        self.webhooks = webhooks or {self.WEBHOOK_PATH: "C0SUPPORT1"}
        self.messages: list[dict[str, Any]] = []
        self._seq = itertools.count(1)

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}{self.WEBHOOK_PATH}"

    def extra_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/auth.test", self._whoami),
            web.post("/services/{team}/{bot}/{secret}", self.incoming_webhook),
        ]

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def too_many(self, wait: float) -> web.Response:
        return web.json_response(
            {"ok": False, "error": "ratelimited"},
            status=429,
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    # -- Web API -----------------------------------------------------------------------------

    @staticmethod
    def fail(error: str, *messages: str, **extra: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error": error, **extra}
        if messages:
            body["response_metadata"] = {"messages": list(messages)}
        return web.json_response(body)

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return self.fail(fields.get("error", "invalid_arguments"), *messages)

    async def arguments(self, request: web.Request) -> tuple[dict[str, Any] | None, list[str]]:
        """The call's arguments (JSON or form) and any Slack warnings, or None if unreadable."""
        warnings: list[str] = []
        if request.content_type == "application/json":
            if request.charset is None:
                warnings.append("missing_charset")
            try:
                args = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                return None, warnings
            return (args if isinstance(args, dict) else None), warnings
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}, warnings
        return {}, warnings

    async def admit(self, request: web.Request) -> web.Response | None:
        """The bot token, from ``Authorization: Bearer`` or the ``token`` argument."""
        header = request.headers.get("Authorization", "")
        args, _ = await self.arguments(request)
        token = header[7:] if header.startswith("Bearer ") else str((args or {}).get("token", "") or "")
        if not token:
            return self.fail("not_authed")
        if token in self.revoked:
            return self.fail("token_revoked")
        return None if token in self.bot_tokens else self.fail("invalid_auth")

    async def read_body(self, object_type: str, request: web.Request) -> Any:
        args, warnings = await self.arguments(request)
        if args is None:
            raise Refusal(self.fail("invalid_json"))
        request[_WARNINGS] = warnings  # answered with the message
        return {k: v for k, v in args.items() if k != "token"}

    def channel_id(self, channel: str) -> str | None:
        name = channel.removeprefix("#")
        if name in self.channels:
            return self.channels[name]
        return channel if channel in self.channels.values() else None

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        args = body
        problems = [
            f"[ERROR] {e.message} [json-pointer:/{'/'.join(map(str, e.path))}]" for e in _ARGS_CHECK.iter_errors(args)
        ]
        blocks = _blocks(args)
        if blocks is _UNREADABLE:
            return self.fail("invalid_blocks_format")
        if blocks is not None and list(_BLOCKS_CHECK.iter_errors(blocks)):
            return self.fail("invalid_blocks", "[ERROR] blocks must be a list of objects with a type")
        if problems:
            return self.fail("invalid_arguments", *problems)
        channel = self.channel_id(str(args["channel"]))
        if channel is None:
            return self.fail("channel_not_found")
        if channel in self.archived:
            return self.fail("is_archived")
        if channel in self.not_member:
            return self.fail("not_in_channel")
        text = args.get("text")
        if not text and not blocks and not args.get("attachments"):
            return self.fail("no_text")
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return self.fail("msg_too_long")
        return None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        channel = self.channel_id(str(body["channel"]))
        ts = f"{int(time.time()):010d}.{next(self._seq):06d}"
        record = {"channel": channel, "ts": ts, "text": body.get("text"), "blocks": _blocks(body), "args": body}
        self.messages.append(record)
        return f"{channel}:{ts}", {**record, "warnings": request[_WARNINGS]}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "text": record["text"] or "",
            "ts": record["ts"],
            "bot_id": "B0OCTOPUS1",
        }
        if record["blocks"] is not None:
            message["blocks"] = record["blocks"]
        answer: dict[str, Any] = {"ok": True, "channel": record["channel"], "ts": record["ts"], "message": message}
        assert not list(_SUCCESS_CHECK.iter_errors(answer)), "fake answer off-spec"
        if warnings := record["warnings"]:
            answer["warning"] = ",".join(warnings)
            answer["response_metadata"] = {"warnings": warnings}
        return answer, {}

    def whoami(self, who: str) -> Any:
        return {
            "ok": True,
            "url": "https://octopus-fake.slack.com/",
            "team": "Octopus Fake",
            "user": "octopus-bot",
            "team_id": "T000",
            "user_id": "U0OCTOPUS1",
            "bot_id": "B0OCTOPUS1",
        }

    # -- incoming webhooks -------------------------------------------------------------------

    async def incoming_webhook(self, request: web.Request) -> web.Response:
        path = request.path
        channel = self.webhooks.get(path)
        if channel is None:
            prefix = path.rsplit("/", 1)[0] + "/"
            known_hook = any(hook.startswith(prefix) for hook in self.webhooks)
            return web.Response(
                status=403 if known_hook else 404,
                text="invalid_token" if known_hook else "no_service",
            )
        try:
            if request.content_type == "application/x-www-form-urlencoded":
                payload = json.loads(str((await request.post()).get("payload", "")))
            else:
                payload = orjson.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(payload, dict):
            return web.Response(status=400, text="invalid_payload")
        if not (payload.get("text") or payload.get("blocks") or payload.get("attachments")):
            return web.Response(status=400, text="no_text")
        if payload.get("blocks") is not None and list(_BLOCKS_CHECK.iter_errors(payload["blocks"])):
            return web.Response(status=400, text="invalid_blocks")
        if channel in self.archived:
            return web.Response(status=410, text="channel_is_archived")
        record = {"channel": channel, "text": payload.get("text"), "payload": payload}
        self.records[f"webhook:{next(self._seq)}"] = record
        self.messages.append(record)
        return web.Response(status=200, text="ok")


_UNREADABLE = object()


def _blocks(args: dict[str, Any]) -> Any:
    """The ``blocks`` argument decoded (a form sends it as a JSON string); _UNREADABLE if it is not JSON."""
    blocks = args.get("blocks")
    if isinstance(blocks, str):
        try:
            return json.loads(blocks)
        except ValueError:
            return _UNREADABLE
    return blocks
