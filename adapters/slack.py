"""Slack: post a message with ``chat.postMessage`` (bot token) or an incoming webhook.

``authType: "bot_token"`` (the seed's shape) posts JSON to ``{baseUrl}/chat.postMessage`` with
``Authorization: Bearer xoxb-…``; the mapping gives ``channel`` (name or id) and ``text`` and/or
``blocks`` / ``attachments``. The Web API answers HTTP 200 with ``{"ok": false, "error": …}`` for
almost every failure, so the body decides (:data:`WEB_API_CODES`); rate limits come as HTTP 429 +
``Retry-After``. The message's reference is its channel id and ``ts``; the permalink is built as
``{workspaceUrl}/archives/{channel}/p{ts without the dot}`` (``chat.getPermalink`` would be a
second call per message), with ``endpoints.workspaceUrl`` defaulting to ``https://slack.com``.

``authType: "webhook"`` posts to ``credentials.webhookUrl`` — a secret: it is registered for
redaction and never appears in messages. Webhooks answer 200 ``ok`` and report errors as an HTTP
status plus a short text reason (400 ``invalid_payload``/``no_text``, 403 ``action_prohibited``
or ``invalid_token``, 404 ``channel_not_found``/``no_service``, 410 ``channel_is_archived``, 500
``rollup_error``). They return no id, so the delivery's idempotency key stands in for one.

Slack text treats ``&``, ``<`` and ``>`` as control characters (``<!channel>`` pings everyone), so
those three are escaped in the event's free-text values before rendering (``escapeText: false``
turns that off); the template's own markup is left as written.

Rate limit: ``chat.postMessage`` is "special tier", about one message per second per channel with
short, unspecified bursts, and incoming webhooks are one per second too. One limiter serves an
integration, so the default is a strict 1 request/s (burst 1: the kit's bucket would add a burst
on top of the rate); an integration that fans out over several channels may raise ``rateLimit``.
Slack has no idempotency key and no cheap lookup, so an ambiguous post cannot be resolved.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, BodyCodes, Delivered, DeliveryContext
from octopus_crm.adapters.fleet import scope_of_secret
from octopus_crm.adapters.http import Classifier, Response, classify_status
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    Bearer,
    ConnectionCheck,
    CreateCall,
    Errors,
    NoAuth,
    SpecAdapter,
    VendorSpec,
    at_path,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import AuthError, ConfigError, DeliveryError, PermanentError
from octopus_crm.core.redaction import register_secret

__all__ = ["WEB_API_CODES", "SlackAdapter", "classify_web_api", "classify_webhook"]

# Web API ``error`` codes (chat.postMessage enum in the saved spec plus the common errors page).
WEB_API_CODES = BodyCodes(
    field="error",
    ok=None,
    message_field="error",
    rate_limited=frozenset({"ratelimited", "rate_limited", "message_limit_exceeded"}),
    retryable=frozenset(
        {
            "internal_error", "fatal_error", "service_unavailable", "request_timeout",
            "team_added_to_org",
        }
    ),
    auth=frozenset(
        {
            "invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive",
            "missing_scope", "no_permission", "not_allowed_token_type", "ekm_access_denied",
            "access_denied", "team_access_not_granted", "org_login_required",
        }
    ),
)  # fmt: skip
# Webhook reasons that mean the URL itself is dead or revoked (a credential problem).
WEBHOOK_AUTH = frozenset({"invalid_token", "no_service", "no_team", "no_active_hooks", "team_disabled"})
_TOKEN = re.compile(r"^[a-z_]{2,60}$")


def classify_web_api(response: Response) -> DeliveryError | None:
    """:data:`WEB_API_CODES`, with Slack's ``response_metadata.messages`` / scope hints kept."""
    error = WEB_API_CODES.classify(response)
    body = response.json()
    if error is None or not isinstance(body, dict) or "error" not in body:
        return error
    messages = response.field("response_metadata", "messages")
    detail = [str(m) for m in messages] if isinstance(messages, list) else []
    if body.get("needed"):
        detail.append(f"needed scope: {body['needed']}")
    message = f"{body['error']}: {'; '.join(detail)}" if detail else str(body["error"])
    return type(error)(message, code=error.code, status=error.status, retry_after=error.retry_after)


def classify_webhook(response: Response) -> DeliveryError | None:
    if response.ok:
        return None
    reason = response.text.strip()[:200]
    code = f"webhook_{reason}" if _TOKEN.match(reason) else f"http_{response.status}"
    if reason in WEBHOOK_AUTH:
        return AuthError(f"incoming webhook rejected: {reason}", code=code, status=response.status)
    if response.status == 403:  # action_prohibited: a workspace restriction, not a bad URL
        return PermanentError(f"incoming webhook refused: {reason}", code=code, status=response.status)
    error = classify_status(response, lambda _: f"incoming webhook: {reason}")
    if error is not None and _TOKEN.match(reason):
        error.code = code
    return error


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escaped(event: ClassifiedMessage) -> ClassifiedMessage:
    """The event with its free-text values made inert for Slack's markup."""

    def fields(model: Any, names: tuple[str, ...]) -> dict[str, str]:
        return {n: slack_escape(v) for n in names if isinstance(v := getattr(model, n, None), str)}

    return event.model_copy(
        update={
            **fields(event, ("content", "tenantName")),
            "sender": event.sender.model_copy(
                update=fields(event.sender, ("name", "firstName", "lastName", "username", "email"))
            ),
            "classification": event.classification.model_copy(
                update=fields(event.classification, ("category", "subcategory"))
            ),
        }
    )


class SlackCredentials(Credentials):
    token: SecretStr | None = alias("token", "botToken", "accessToken", description="Bot token xoxb- (bot_token).")
    webhookUrl: SecretStr | None = alias("webhookUrl", "url", description="Incoming webhook URL (webhook).")


class SlackEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="Default https://slack.com/api.")
    workspaceUrl: Url | None = Field(default=None, description="For message permalinks (default https://slack.com).")


class SlackSettings(VendorSettings):
    credentials: SlackCredentials = Field(default_factory=SlackCredentials)
    endpoints: SlackEndpoints = Field(default_factory=SlackEndpoints)
    escapeText: bool = Field(default=True, description="Escape <, > and & in customer text.")


def _message_id(body: Any) -> str | None:
    channel, ts = at_path(body, ("channel",)), at_path(body, ("ts",))
    return f"{channel}:{ts}" if isinstance(channel, str) and isinstance(ts, str) and channel and ts else None


def _permalink(adapter: SlackAdapter, record_id: str, body: Any) -> str:
    channel, _, ts = record_id.partition(":")
    return adapter.permalink(channel, ts)


SPEC = VendorSpec(
    auth={"bot_token": Bearer(("token", "botToken", "accessToken")), "webhook": NoAuth()},
    default_auth="bot_token",
    objects={
        "message": CreateCall(
            "chat.postMessage",
            id_of=_message_id,
            what="a channel and ts",
            url=_permalink,
            detail={"channel": ("channel",), "ts": ("ts",)},
        ),
    },
    errors=Errors(body_codes=WEB_API_CODES),
    test_call=ConnectionCheck("auth.test", method="POST"),  # reads the token's identity
)
#: An incoming webhook: the secret URL, no id in the answer, a status plus a text reason.
WEBHOOK_POST = CreateCall("", key_as_id=True, any_body=True)


class SlackAdapter(SpecAdapter):
    info = AdapterInfo(
        type="slack",
        display_name="Slack",
        display_name_zh="Slack",
        object_types=("message",),
        auth_types=("bot_token", "webhook"),
        rate_limit=RateLimit(requests=1, perSeconds=1.0, burst=1, concurrency=4),
        idempotency="none (Slack has no idempotency key; ledger only)",
        docs="https://docs.slack.dev/reference/methods/chat.postMessage",
    )
    settings_model = SlackSettings
    spec = SPEC
    default_base_url = "https://slack.com/api"

    @property
    def auth_type(self) -> str:
        if self.config.authType:
            return self.config.authType
        return "webhook" if self.config.secret("webhookUrl", "url", required=False) else "bot_token"

    @property
    def webhook(self) -> bool:
        return self.auth_type == "webhook"

    def validate_config(self) -> None:
        super().validate_config()
        for object_type, mapping in self.config.mappings.items():
            keys = set(mapping) if isinstance(mapping, dict) else set()
            if not keys & {"text", "blocks", "attachments"}:
                raise ConfigError(f"mappings.{object_type} needs text, blocks or attachments", code="missing_text")
            if not self.webhook and "channel" not in keys:
                raise ConfigError(f"mappings.{object_type}.channel is required", code="missing_channel")
        if self.webhook:
            register_secret(self.config.secret("webhookUrl", "url"))

    @property
    def limit_scope(self) -> str:
        """Slack counts per workspace token and method (or per incoming webhook); the adapter calls
        one method, so the token (or the webhook URL) is the scope."""
        if self.webhook:
            return scope_of_secret("slack:webhook", self.config.secret("webhookUrl", "url"))
        return scope_of_secret("slack:chat.postMessage", self.config.secret("token", "botToken", "accessToken"))

    @property
    def base_url(self) -> str:
        if self.webhook:  # the secret URL is the whole address
            url = self.config.secret("webhookUrl", "url")
            register_secret(url)
            register_secret(url.rstrip("/").rsplit("/", 1)[-1])
            return url.rstrip("/")
        return super().base_url

    def classifier(self) -> Classifier:
        return classify_webhook if self.webhook else classify_web_api

    def create_call(self, object_type: str) -> CreateCall:
        return WEBHOOK_POST if self.webhook else super().create_call(object_type)

    def request_body(self, call: CreateCall, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Any:
        if self.config.extra("escapeText", True):
            event = _escaped(event)
        return self.render(event, object_type, ctx)

    def permalink(self, channel: str, ts: str) -> str:
        workspace = str(self.config.endpoints.get("workspaceUrl") or "https://slack.com").rstrip("/")
        return f"{workspace}/archives/{channel}/p{ts.replace('.', '')}"

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        delivered = await super().create(event, object_type, ctx)
        return Delivered(delivered.external_id, None, {"via": "webhook"}) if self.webhook else delivered

    async def test_connection(self) -> None:
        if self.webhook:
            # An incoming webhook has no read call: any request is a post to the channel.
            raise ConfigError(
                "a Slack incoming webhook cannot be tested without posting to its channel", code="not_testable"
            )
        await super().test_connection()
