"""ClickUp: create a task in a list (API v2 ``POST /list/{list_id}/task``, 200 with the task).

Auth: a personal token (``pk_…``, never expires) in ``Authorization`` *without* a scheme
(``authType: "token"``, the default), or an OAuth 2.0 access token as ``Bearer`` (``"oauth2"``).
The list is ``listId`` in the integration's config. Body: ``name`` (required), ``description`` or
``markdown_description``, ``assignees`` (user ids), ``status`` (must exist in the list),
``priority`` 1–4 (1 urgent, 2 high, 3 normal, 4 low — our vocabulary maps onto it), ``due_date``
(ms), ``tags``, ``custom_fields``. The answer is the task, with ``id`` and ``url``.

Errors are JSON ``{"err": "…", "ECODE": "…"}`` with the HTTP status saying the class (401 bad or
revoked token, 400 invalid input, 404, 429, 5xx); the message keeps both. Limits are per token
and per minute by the workspace's plan: 100 (Free Forever, Unlimited, Business), 1,000 (Business
Plus), 10,000 (Enterprise); we pace at the lowest, a customer on a bigger plan raises
``rateLimit``. A 429 carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (Unix seconds), the wait we honour.

ClickUp has no idempotency key. Each task gets a tag ``octopus-<16 hex of sha256(idempotency
key)>`` (``dedupeTag``, default on; ClickUp creates a tag it does not know in the list's space)
and :meth:`find_existing` asks the list for tasks with that tag (``GET /list/{list_id}/task
?tags[]=…``, closed tasks and subtasks included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, DeliveryContext
from octopus_crm.adapters.fleet import scope_of_secret
from octopus_crm.adapters.http import Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    Bearer,
    ConnectionCheck,
    CreateCall,
    Errors,
    FindCall,
    SpecAdapter,
    VendorSpec,
    dedupe_marker,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError

__all__ = ["ClickUpAdapter"]

PRIORITY_CLICKUP = {"low": 4, "normal": 3, "medium": 3, "high": 2, "urgent": 1}
TOKEN_KEYS = ("apiToken", "token", "personalToken", "apiKey")
OAUTH_KEYS = ("accessToken",)


class ClickUpCredentials(Credentials):
    apiToken: SecretStr | None = alias(*TOKEN_KEYS, description="Personal token pk_… (authType token).")
    accessToken: SecretStr | None = alias(*OAUTH_KEYS, description="OAuth 2.0 access token (authType oauth2).")


class ClickUpEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description="Default https://api.clickup.com/api/v2.")


class ClickUpSettings(VendorSettings):
    credentials: ClickUpCredentials = Field(default_factory=ClickUpCredentials)
    endpoints: ClickUpEndpoints = Field(default_factory=ClickUpEndpoints)
    listId: str | None = alias("listId", "list_id", description="The list new tasks go to (required).")
    dedupeTag: bool = Field(default=True, description="Tag each task with the idempotency key's hash.")


def _message(response: Response) -> str:
    body = response.json()
    if isinstance(body, dict) and "err" in body:
        return f"{body.get('err')} (ECODE {body.get('ECODE') or '-'})"
    return response.text[:500]


def _tags(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    return [str(item).strip() for item in items if str(item).strip()]


def _task_body(
    adapter: ClickUpAdapter, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext
) -> Any:
    body = dict(rendered)
    priority = body.get("priority")
    if isinstance(priority, str):  # a value the map did not know: a digit passes, anything else is dropped
        if priority.strip().isdigit():
            body["priority"] = int(priority)
        else:
            del body["priority"]
    tags = _tags(body.pop("tags", None))
    if adapter.dedupe:
        tags.append(dedupe_marker(ctx.idempotency_key))
    if tags:
        body["tags"] = list(dict.fromkeys(tags))
    return body


def _tagged(adapter: ClickUpAdapter, task: Any, ctx: DeliveryContext) -> bool:
    tags = task.get("tags") if isinstance(task, dict) else None
    names = [t.get("name") if isinstance(t, dict) else t for t in tags] if isinstance(tags, list) else []
    return dedupe_marker(ctx.idempotency_key) in names


SPEC = VendorSpec(
    auth={"token": Bearer(TOKEN_KEYS, scheme=""), "oauth2": Bearer(OAUTH_KEYS)},
    default_auth="token",
    objects={"task": CreateCall("/list/{list_id}/task", body=_task_body, url_at=("url",), what="a task id")},
    find={
        "task": FindCall(
            "/list/{list_id}/task",
            params=lambda adapter, ctx: {
                "tags[]": dedupe_marker(ctx.idempotency_key),
                "include_closed": "true",
                "subtasks": "true",
            },
            items_at=("tasks",),
            enabled=lambda adapter: adapter.dedupe,
            match=_tagged,
        )
    },
    errors=Errors(message=_message, reset_at_headers=("X-RateLimit-Reset",)),
    test_call=ConnectionCheck("/user"),
)


class ClickUpAdapter(SpecAdapter):
    info = AdapterInfo(
        type="clickup",
        display_name="ClickUp",
        display_name_zh="ClickUp 任务",
        object_types=("task",),
        auth_types=("token", "oauth2"),
        rate_limit=RateLimit(requests=100, perSeconds=60, concurrency=10),
        idempotency="tag octopus-<hash of key> on each task, found again by tag in the list",
        docs="https://developer.clickup.com/reference/createtask",
    )
    settings_model = ClickUpSettings
    spec = SPEC
    default_base_url = "https://api.clickup.com/api/v2"
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"task.priority": PRIORITY_CLICKUP}

    def validate_config(self) -> None:
        super().validate_config()
        if not self.list_id:
            raise ConfigError("listId is required (the ClickUp list new tasks go to)", code="missing_list")

    @property
    def list_id(self) -> str:
        return str(self.config.extra("listId") or self.config.extra("list_id") or "")

    @property
    def dedupe(self) -> bool:
        return bool(self.config.extra("dedupeTag", True))

    def path_vars(self) -> dict[str, str]:
        return {"list_id": self.list_id}

    @property
    def limit_scope(self) -> str:
        """ClickUp counts per token, whichever integration or list uses it."""
        keys = OAUTH_KEYS if self.auth_type == "oauth2" else TOKEN_KEYS
        return scope_of_secret("clickup:token", self.config.secret(*keys))
