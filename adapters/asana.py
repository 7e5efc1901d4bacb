"""Asana: create a task with ``POST /tasks`` (``{"data": {...}}`` → 201 ``{"data": {"gid", ...}}``).

Base ``https://app.asana.com/api/1.0``; ``Authorization: Bearer`` with a personal access token
(``authType: "pat"``, ``credentials.token``) or an OAuth access token (``authType: "oauth"``,
``credentials.accessToken``; scope ``tasks:write``). Every task lives in one workspace: the body
names ``workspace``, or ``projects`` / ``parent`` instead. The mapping holds Asana's task fields
(``name``, ``notes``, ``html_notes``, ``assignee``, ``due_on``, ``due_at``, ``custom_fields`` …);
a comma-separated ``projects`` / ``tags`` / ``followers`` becomes a list, and the integration's
``projects`` or ``workspace`` fills the container when the mapping names none. Asana has no task
priority: a ``priority`` key goes to the enum custom field ``priorityField`` (map our
low/medium/high/urgent to its enum option gids with ``valueMaps["task.priority"]``).

Errors: ``{"errors": [{"message", "help", "phrase"}]}`` on 400, 401, 402 (premium only), 403,
404, 429, 500 (``phrase`` only on 500s); every message is kept. 429 carries ``Retry-After``.
Limits per token: 150 requests/min on free domains, 1,500 on paid ones, and at most 15
concurrent writes; we pace at 150/min with 15 in flight (paid domains raise ``rateLimit``).

Asana has no idempotency key. With OAuth, each task carries custom external data ``external.gid
= octopus-<24 hex of sha256(idempotency key)>`` (app-private, OAuth-only per Asana's docs) and
:meth:`AsanaAdapter.find_existing` reads ``GET /tasks/external:<gid>``. A personal access token
cannot use external data, so PAT integrations rely on the daemon's ledger alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, Delivered, DeliveryContext
from octopus_crm.adapters.http import Request, Response
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import (
    Bearer,
    ConnectionCheck,
    CreateCall,
    Errors,
    SpecAdapter,
    VendorSpec,
    at_path,
    dedupe_marker,
)
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError, PermanentError

__all__ = ["AsanaAdapter", "external_gid"]

BASE_URL = "https://app.asana.com/api/1.0"
TASKS_PATH = "/tasks"
OPT_FIELDS = {"opt_fields": "gid,name,permalink_url"}
_LISTS = ("projects", "tags", "followers")
_CONTAINERS = ("workspace", "projects", "parent")


def external_gid(idempotency_key: str) -> str:
    return dedupe_marker(idempotency_key, 24)


def _error_messages(response: Response) -> str:
    errors = response.field("errors")
    if not isinstance(errors, list):
        return response.text[:500]
    parts = [str(e.get("message") or e.get("phrase") or "") for e in errors if isinstance(e, dict)]
    return "; ".join(p for p in parts if p) or f"HTTP {response.status}"


def _list(value: Any) -> Any:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class AsanaCredentials(Credentials):
    token: SecretStr | None = alias("token", "personalAccessToken", "pat", description="Personal access token.")
    accessToken: SecretStr | None = alias("accessToken", "access_token", description="OAuth access token.")


class AsanaEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description=f"Default {BASE_URL}.")


class AsanaSettings(VendorSettings):
    credentials: AsanaCredentials = Field(default_factory=AsanaCredentials)
    endpoints: AsanaEndpoints = Field(default_factory=AsanaEndpoints)
    workspace: str | None = alias("workspace", "workspaceId", "workspaceGid", description="Workspace gid.")
    projects: str | list[str] | None = alias("projects", "projectId", "projectGid", description="Project gid(s).")
    priorityField: str | None = Field(default=None, description="Gid of the enum custom field for priority.")
    externalId: bool = Field(default=True, description="OAuth: set external.gid to find tasks again.")


SPEC = VendorSpec(
    auth={
        "pat": Bearer(("token", "personalAccessToken", "pat")),
        "oauth": Bearer(("accessToken", "access_token")),
    },
    default_auth="pat",
    objects={
        "task": CreateCall(
            TASKS_PATH,
            body=lambda adapter, fields, event, ctx: adapter.task_body(fields, ctx),
            params=lambda adapter, ctx: dict(OPT_FIELDS),
            id_at=("data", "gid"),
            url=lambda adapter, gid, body: at_path(body, ("data", "permalink_url")) or f"{adapter.app_url}/0/0/{gid}/f",
            what="a task gid",
        )
    },
    errors=Errors(message=_error_messages),
    test_call=ConnectionCheck("/users/me"),
    headers={"Accept": "application/json"},
)


class AsanaAdapter(SpecAdapter):
    info = AdapterInfo(
        type="asana",
        display_name="Asana",
        display_name_zh="Asana",
        object_types=("task",),
        auth_types=("pat", "oauth"),
        rate_limit=RateLimit(requests=150, perSeconds=60, concurrency=15),
        idempotency="OAuth: external.gid from the idempotency key, read back with GET /tasks/external:<gid>;"
        " PAT: ledger only",
        docs="https://developers.asana.com/reference/createtask",
    )
    settings_model = AsanaSettings
    spec = SPEC
    default_base_url = BASE_URL
    app_url = "https://app.asana.com"

    @property
    def asana(self) -> AsanaSettings:
        assert isinstance(self.settings, AsanaSettings)
        return self.settings

    @property
    def uses_external(self) -> bool:
        return self.auth_type == "oauth" and self.asana.externalId

    def validate_config(self) -> None:
        super().validate_config()
        mapping = self.config.mappings.get("task")
        fields = mapping.get("data", mapping) if isinstance(mapping, dict) else {}
        if not isinstance(fields, dict):
            raise ConfigError("mappings.task.data must be an object", code="bad_template")
        if "priority" in fields and not self.asana.priorityField:
            raise ConfigError(
                "mappings.task.priority needs priorityField (the gid of an enum custom field); Asana has no priority",
                code="missing_field",
            )
        if not any(k in fields for k in _CONTAINERS) and not (self.asana.workspace or self.asana.projects):
            raise ConfigError("asana needs projects or workspace (config or mappings.task)", code="missing_field")

    def task_body(self, rendered: dict[str, Any], ctx: DeliveryContext) -> dict[str, Any]:
        """The rendered mapping as a createTask body: lists split, container and priority placed."""
        nested = set(rendered) == {"data"} and isinstance(rendered["data"], dict)
        data = {k: v for k, v in (rendered["data"] if nested else rendered).items() if v is not None}
        for key in _LISTS:
            if key in data:
                data[key] = _list(data[key])
        custom_fields = data.get("custom_fields") or {}
        if not isinstance(custom_fields, dict):
            raise PermanentError("custom_fields must render to an object (field gid → value)", code="bad_value")
        if (priority := data.pop("priority", None)) not in (None, ""):
            data["custom_fields"] = {**custom_fields, str(self.asana.priorityField): priority}
        if not any(data.get(k) for k in _CONTAINERS):
            if self.asana.projects:
                data["projects"] = _list(self.asana.projects)
            elif self.asana.workspace:
                data["workspace"] = self.asana.workspace
        if not data.get("name"):
            raise PermanentError("task name rendered empty", code="missing_field")
        if self.uses_external:
            data["external"] = {**(data.get("external") or {}), "gid": external_gid(ctx.idempotency_key)}
        return {"data": data}

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        if not self.uses_external:
            return None
        path = f"{TASKS_PATH}/external:{external_gid(ctx.idempotency_key)}"
        try:
            response = await self.http.send(Request("GET", path, params=dict(OPT_FIELDS)))
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return self.create_call(object_type).delivered(self, response, None)
