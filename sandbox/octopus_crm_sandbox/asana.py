"""An Asana fake: bearer tokens (PAT or OAuth), ``POST /tasks``, ``GET /tasks/{gid}``, ``/users/me``.

The envelope (who may call, the create and ``/users/me`` routes) comes from the adapter's spec
(specfake.py). Create bodies are validated with ``jsonschema`` against ``TaskCreateRequest`` from
Asana's published OpenAPI (fragment in ``specs/asana_task_create.json``), then the way Asana checks
them: the ``data`` envelope is there, read-only properties are not written, the task has a
workspace, project or parent that exists, enum custom fields get one of their option gids, and
custom external data comes only from an OAuth caller. Errors are ``{"errors": [{"message",
"help"}]}``; the rate limit answers 429 with ``Retry-After``. ``GET /tasks/external:<gid>`` finds a
task by its external gid, as Asana's ``external:`` notation does.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
from aiohttp import web

from octopus_crm.adapters.asana import SPEC as ASANA
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, SpecFake

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


class AsanaFake(SpecFake):
    name = "asana"
    spec = ASANA
    mount = "/api/1.0"
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
        super().__init__(accepted={"token": token, "accessToken": access_token}, **kw)
        self.projects = {self.PROJECT: self.WORKSPACE}
        self.external: dict[str, str] = {}
        self._gids = itertools.count(1209000000000001)

    def limited_paths(self) -> tuple[str, ...]:
        return ("/api/1.0/",)

    # -- shapes ------------------------------------------------------------------------------

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        body = {"errors": [{"message": m, "help": HELP} for m in messages]}
        assert not list(_ERRORS.iter_errors(body))
        return web.json_response(body, status=status)

    def too_many(self, wait: float) -> web.Response:
        body = {"errors": [{"message": "You have made too many requests recently. Please, be chill."}]}
        return web.json_response(body, status=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def unauthorized(self, request: web.Request) -> web.Response:
        return self.error(401, ["Not Authorized"])

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        return self.error(400, ["Could not parse request data, invalid JSON"])

    def auth_type(self, request: web.Request) -> str:
        """``oauth`` or ``pat``: which of the accepted tokens the caller presented."""
        return "oauth" if self.caller(request) == "accessToken" else "pat"  # the scheme's first credential name

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

    # -- tasks -------------------------------------------------------------------------------

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            return self.error(400, ["data: Missing input"])
        data = body["data"]
        problems = [f"{'.'.join(map(str, e.path)) or 'data'}: {e.message}" for e in _CREATE.iter_errors(data)]
        problems += [f"{name}: Cannot write this property" for name in sorted(READ_ONLY & set(data))]
        if problems:
            return self.error(400, problems)
        problem = self.container(data)[2] or self.check_custom_fields(data.get("custom_fields"))
        if "external" in data and self.auth_type(request) != "oauth":
            problem = problem or "external: Custom external data can only be set by an OAuth app"
        return self.error(400, [problem]) if problem else None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        data = body["data"]
        workspace, project, _ = self.container(data)
        gid = str(next(self._gids))
        if isinstance(data.get("external"), dict) and data["external"].get("gid"):
            self.external[str(data["external"]["gid"])] = gid
        return gid, {
            "gid": gid,
            "data": data,
            "workspace": workspace,
            "project": project,
            "auth": self.auth_type(request),
        }

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return {"data": self.task(record_id, request.query.get("opt_fields"))}, {}

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

    # -- reads -------------------------------------------------------------------------------

    def extra_routes(self) -> list[web.RouteDef]:
        return [web.get("/api/1.0/tasks/{gid}", self.get_task)]

    async def get_task(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        ref = request.match_info["gid"]
        gid = self.external.get(ref.removeprefix("external:"), "") if ref.startswith("external:") else ref
        if gid not in self.records:
            return self.error(404, [f"task: Unknown object: {ref}"])
        return web.json_response({"data": self.task(gid, request.query.get("opt_fields"))})

    def whoami(self, who: str) -> Any:
        workspace = {"gid": self.WORKSPACE, "resource_type": "workspace", "name": "Octopus Support"}
        return {
            "data": {
                "gid": "1200000000000100",
                "resource_type": "user",
                "name": "Octopus Bot",
                "workspaces": [workspace],
            }
        }
