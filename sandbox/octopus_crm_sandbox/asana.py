"""An Asana fake: bearer tokens (PAT or OAuth), ``POST /tasks``, ``GET /tasks/{gid}``, ``/users/me``.

Create bodies are validated with ``jsonschema`` against ``TaskCreateRequest`` from Asana's
published OpenAPI (fragment in ``specs/asana_task_create.json``), then the way Asana checks them:
the ``data`` envelope is there, read-only properties are not written, the task has a workspace,
project or parent that exists, enum custom fields get one of their option gids, and custom
external data comes only from an OAuth caller. Errors are ``{"errors": [{"message", "help"}]}``;
the rate limit answers 429 with ``Retry-After``. ``GET /tasks/external:<gid>`` finds a task by its
external gid, as Asana's ``external:`` notation does.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.asana import SPEC as ASANA
from octopus_crm_sandbox.envelope import caller
from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["AsanaFake"]

SPEC = Path(__file__).resolve().parent / "specs" / "asana_task_create.json"
_SCHEMAS = json.loads(SPEC.read_text(encoding="utf-8"))["components"]
_CREATE = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/TaskCreateRequest", "components": _SCHEMAS})
_ERRORS = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/ErrorResponse", "components": _SCHEMAS})
HELP = "For more information on API status codes and how to handle them, read the docs on errors: https://developers.asana.com/docs/errors"


def _read_only(schema: dict[str, Any]) -> set[str]:
    """Property names the spec marks readOnly anywhere in TaskCreateRequest's allOf chain."""
    names: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if "$ref" in node:
            stack.append(_SCHEMAS["schemas"][node["$ref"].rsplit("/", 1)[-1]])
        stack.extend(node.get("allOf", []))
        names |= {k for k, v in node.get("properties", {}).items() if v.get("readOnly")}
    return names


READ_ONLY = _read_only(_SCHEMAS["schemas"]["TaskCreateRequest"])


class AsanaFake(FakeVendor):
    name = "asana"
    ENV: ClassVar[dict[str, str]] = {
        "ASANA_TOKEN": "2/1200000000000100/1209000000000000:fakeasanapat0000000000000000",
        "ASANA_ACCESS_TOKEN": "2/1200000000000100/1209000000000000:fakeasanaoauth00000000000000",
    }
    WORKSPACE = "1200000000000001"
    PROJECT = "1200000000000002"
    PRIORITY_FIELD = "1200000000000901"
    PRIORITY_OPTIONS: ClassVar[dict[str, str]] = {
        "1200000000000911": "Low",
        "1200000000000912": "Medium",
        "1200000000000913": "High",
        "1200000000000914": "Urgent",
    }

    def __init__(self, *, token: str = ENV["ASANA_TOKEN"], access_token: str = ENV["ASANA_ACCESS_TOKEN"], **kw: Any):
        super().__init__(**kw)
        self.accepted = {"token": token, "accessToken": access_token}
        self.projects = {self.PROJECT: self.WORKSPACE}
        self.external: dict[str, str] = {}
        self._gids = itertools.count(1209000000000001)

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": f"{self.base_url}/api/1.0", "allowPrivateNetwork": True}  # the fakes listen on loopback

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/1.0/tasks", self.create_task),
            web.get("/api/1.0/tasks/{gid}", self.get_task),
            web.get("/api/1.0/users/me", self.me),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/api/1.0/",)

    # -- shapes ------------------------------------------------------------------------------

    @staticmethod
    def errors(status: int, *messages: str) -> web.Response:
        body = {"errors": [{"message": m, "help": HELP} for m in messages]}
        assert not list(_ERRORS.iter_errors(body))
        return web.json_response(body, status=status)

    def too_many(self, wait: float) -> web.Response:
        body = {"errors": [{"message": "You have made too many requests recently. Please, be chill."}]}
        return web.json_response(body, status=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def authenticated(self, request: web.Request) -> str | None:
        """``pat`` or ``oauth``: which of the accepted tokens the caller presented."""
        for auth_type in ("oauth", "pat"):
            if caller(ASANA.auth[auth_type], request, self.accepted, self) is not None:
                return auth_type
        return None

    def unauthorized(self) -> web.Response:
        return self.errors(401, "Not Authorized")

    def task(self, gid: str, opt_fields: str | None) -> dict[str, Any]:
        record = self.records[gid]
        full = {
            "gid": gid,
            "resource_type": "task",
            "name": record["data"].get("name", ""),
            "notes": record["data"].get("notes", ""),
            "permalink_url": f"https://app.asana.com/0/{record['project'] or 0}/{gid}/f",
            "workspace": {"gid": record["workspace"], "resource_type": "workspace"},
        }
        if not opt_fields:
            return full
        return {k: v for k, v in full.items() if k in {"gid", "resource_type", *opt_fields.split(",")}}

    # -- handlers ----------------------------------------------------------------------------

    async def create_task(self, request: web.Request) -> web.Response:
        who = self.authenticated(request)
        if who is None:
            return self.unauthorized()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self.errors(400, "Could not parse request data, invalid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            return self.errors(400, "data: Missing input")
        problems = [f"{'.'.join(map(str, e.path)) or 'data'}: {e.message}" for e in _CREATE.iter_errors(body["data"])]
        data = body["data"]
        problems += [f"{name}: Cannot write this property" for name in sorted(READ_ONLY & set(data))]
        if problems:
            return self.errors(400, *problems)
        workspace, project, problem = self.container(data)
        problem = problem or self.check_custom_fields(data.get("custom_fields"))
        if "external" in data and who != "oauth":
            problem = problem or "external: Custom external data can only be set by an OAuth app"
        if problem:
            return self.errors(400, problem)
        gid = str(next(self._gids))
        self.records[gid] = {"gid": gid, "data": data, "workspace": workspace, "project": project, "auth": who}
        if isinstance(data.get("external"), dict) and data["external"].get("gid"):
            self.external[str(data["external"]["gid"])] = gid
        return web.json_response({"data": self.task(gid, request.query.get("opt_fields"))}, status=201)

    def container(self, data: dict[str, Any]) -> tuple[str, str | None, str | None]:
        """(workspace, first project, problem) the way Asana places a new task."""
        projects = data.get("projects") or []
        for project in projects:
            if project not in self.projects:
                return "", None, f"projects: Not a recognized ID: {project}"
        if projects:
            return self.projects[projects[0]], projects[0], None
        if data.get("parent"):
            parent = self.records.get(str(data["parent"]))
            if parent is None:
                return "", None, f"parent: Not a recognized ID: {data['parent']}"
            return parent["workspace"], None, None
        if data.get("workspace"):
            if data["workspace"] != self.WORKSPACE:
                return "", None, f"workspace: Not a recognized ID: {data['workspace']}"
            return self.WORKSPACE, None, None
        return "", None, "You should specify one of workspace, parent, projects"

    def check_custom_fields(self, custom_fields: Any) -> str | None:
        for field, value in (custom_fields or {}).items():
            if field != self.PRIORITY_FIELD:
                return f"custom_fields: Custom field with ID {field} is not on given object"
            if value not in self.PRIORITY_OPTIONS:
                return f"custom_fields: enum_value {value} is not a valid option of custom field {field}"
        return None

    async def get_task(self, request: web.Request) -> web.Response:
        if self.authenticated(request) is None:
            return self.unauthorized()
        ref = request.match_info["gid"]
        gid = self.external.get(ref.removeprefix("external:"), "") if ref.startswith("external:") else ref
        if gid not in self.records:
            return self.errors(404, f"task: Unknown object: {ref}")
        return web.json_response({"data": self.task(gid, request.query.get("opt_fields"))})

    async def me(self, request: web.Request) -> web.Response:
        if self.authenticated(request) is None:
            return self.unauthorized()
        workspace = {"gid": self.WORKSPACE, "resource_type": "workspace", "name": "Octopus Support"}
        user = {"gid": "1200000000000100", "resource_type": "user", "name": "Octopus Bot", "workspaces": [workspace]}
        return web.json_response({"data": user})
