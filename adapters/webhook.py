"""Generic webhook: POST a templated JSON body to a configured URL.

2xx is success, 429 and 5xx are retryable, any other 4xx is permanent. Each request carries an
``Idempotency-Key`` header (stable per event, integration and object type) so that a receiver
can drop a redelivery.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from adapters.auth import HeaderAuth
from adapters.base import AdapterInfo, Delivered, DeliveryContext, HttpAdapter
from adapters.errors import ConfigError
from adapters.http import HttpClient, Request
from adapters.ratelimit import Limiter, RateLimit
from adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from daemon.contracts import ClassifiedMessage
from daemon.redaction import register_secret_parts

__all__ = ["WebhookAdapter"]


class WebhookCredentials(Credentials):
    token: SecretStr | None = alias("token", "bearerToken", description="Sent as `Authorization: Bearer <token>`.")


class WebhookEndpoints(Endpoints):
    url: Url | None = Field(default=None, description="The receiver (required); userinfo, query values are secrets.")


class WebhookSettings(VendorSettings):
    credentials: WebhookCredentials = Field(default_factory=WebhookCredentials)
    endpoints: WebhookEndpoints = Field(default_factory=WebhookEndpoints)
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (values are secrets).")


class WebhookAdapter(HttpAdapter):
    info = AdapterInfo(
        type="webhook",
        display_name="Webhook",
        display_name_zh="Webhook 回调",
        object_types=("message",),
        auth_types=("none", "bearer", "header"),
        rate_limit=RateLimit(requests=1000, concurrency=64),
        idempotency="Idempotency-Key header",
    )
    settings_model = WebhookSettings
    base_url_key = "url"
    allows_unmapped = True

    def object_types(self) -> tuple[str, ...]:
        return tuple(self.config.mappings) or self.info.object_types

    def validate_config(self) -> None:
        super().validate_config()
        if not self.config.endpoints.get("url"):
            raise ConfigError("endpoints.url is required for a webhook", code="missing_url")

    def make_http(self, limiter: Limiter) -> HttpClient:
        headers: dict[str, str] = {str(k): str(v) for k, v in (self.config.extra("headers") or {}).items()}
        for value in headers.values():
            register_secret_parts(value)  # "Bearer X": X leaks on its own too
        register_secret_parts(self.base_url)  # user:password@ and ?code= / ?sig= values
        token = self.config.secret("token", "bearerToken", required=False)
        return HttpClient(
            name=self.integration_id,
            limiter=limiter,
            auth=HeaderAuth("Authorization", f"Bearer {token}") if token else None,
            timeouts=self.timeouts,
            default_headers=headers,
        )

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        body: dict[str, Any] = self.render(event, object_type, ctx) if self.templates else _default_body(event)
        response = await self.http.send(
            Request(
                "POST",
                self.base_url,
                json=body,
                headers={"Idempotency-Key": ctx.idempotency_key, "X-Octopus-Event-Id": event.eventId},
            )
        )
        data = response.json()
        external_id = str(data.get("id")) if isinstance(data, dict) and data.get("id") else ctx.idempotency_key
        url = data.get("url") if isinstance(data, dict) else None
        return Delivered(external_id, url if isinstance(url, str) else None)

    async def test_connection(self) -> None:
        # A webhook has one verb, POST, and every POST is a record at the receiver.
        raise ConfigError("a webhook cannot be tested without posting to it (it has no read call)", code="not_testable")


def _default_body(event: ClassifiedMessage) -> dict[str, Any]:
    return event.model_dump(mode="json")
