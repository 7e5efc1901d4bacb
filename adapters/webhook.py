"""Generic webhook: POST a templated JSON body to a configured URL.

2xx is success, 429 and 5xx are retryable, any other 4xx is permanent. Each request carries an
``Idempotency-Key`` header (stable per event, integration and object type) so that a receiver
can drop a redelivery.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import Bearer, CreateCall, SpecAdapter, VendorSpec
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError
from octopus_crm.core.redaction import register_secret_parts

__all__ = ["WebhookAdapter"]


class WebhookCredentials(Credentials):
    token: SecretStr | None = alias("token", "bearerToken", description="Sent as `Authorization: Bearer <token>`.")


class WebhookEndpoints(Endpoints):
    url: Url | None = Field(default=None, description="The receiver (required); userinfo, query values are secrets.")


class WebhookSettings(VendorSettings):
    credentials: WebhookCredentials = Field(default_factory=WebhookCredentials)
    endpoints: WebhookEndpoints = Field(default_factory=WebhookEndpoints)
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (values are secrets).")


def _body(adapter: WebhookAdapter, fields: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    return fields if adapter.templates else event.model_dump(mode="json")  # unmapped: the whole event


_TOKEN = Bearer(("token", "bearerToken"), optional=True)  # "header": the credential is in config.headers

SPEC = VendorSpec(
    auth={"none": _TOKEN, "bearer": _TOKEN, "header": _TOKEN},
    default_auth="none",
    objects={
        "message": CreateCall(
            "",  # the configured URL
            body=_body,
            idempotency_header="Idempotency-Key",
            event_headers=lambda event: {"X-Octopus-Event-Id": event.eventId},
            url_at=("url",),
            key_as_id=True,
            any_body=True,
        )
    },
    # A webhook has one verb, POST, and every POST is a record at the receiver.
    not_testable="a webhook cannot be tested without posting to it (it has no read call)",
)


class WebhookAdapter(SpecAdapter):
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
    spec = SPEC
    base_url_key = "url"
    allows_unmapped = True

    def object_types(self) -> tuple[str, ...]:
        return tuple(self.config.mappings) or self.info.object_types

    def validate_config(self) -> None:
        super().validate_config()
        if not self.config.endpoints.get("url"):
            raise ConfigError("endpoints.url is required for a webhook", code="missing_url")

    def create_call(self, object_type: str) -> CreateCall:
        return self.spec.objects["message"]  # every mapping key posts to the one URL

    def default_headers(self) -> dict[str, str]:
        headers = {str(k): str(v) for k, v in (self.config.extra("headers") or {}).items()}
        for value in headers.values():
            register_secret_parts(value)  # "Bearer X": X leaks on its own too
        register_secret_parts(self.base_url)  # user:password@ and ?code= / ?sig= values
        return headers
