"""A ClickUp fake (API v2 under ``/api/v2``): create a task in a list, list a list's tasks (filtered by
``tags[]``), ``GET /user``.

The envelope (who may call — the personal token in ``Authorization`` without a scheme — and the
create, list and ``/user`` routes) comes from the adapter's spec (specfake.py). Create bodies are
checked the way ClickUp answers them — ``name`` required, ``priority`` 1–4 or null, ``status`` one
of the list's statuses, ``assignees`` user ids, ``tags`` strings (lower-cased and created on first
use, as ClickUp does), dates in ms — and fail with ``{"err": …, "ECODE": …}``. ClickUp publishes no
spec in a repository, so the checks follow its REST reference for Create Task; the ECODE values are
examples from community reports, not a documented list. Every answer carries
``X-RateLimit-Limit/-Remaining/-Reset`` (Unix seconds); the rate limit answers 429 with them.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from aiohttp import web
from multidict import MultiMapping

from octopus_crm.adapters.clickup import SPEC as CLICKUP
from octopus_crm.adapters.spec import CreateCall, FindCall
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["ClickUpFake"]

PRIORITIES = {1: ("urgent", "#f50000"), 2: ("high", "#ffcc00"), 3: ("normal", "#6fddff"), 4: ("low", "#d8d8d8")}
STATUSES = ("to do", "in progress", "complete")


class ClickUpFake(SpecFake):
    name = "clickup"
    spec = CLICKUP
    mount = "/api/v2"
    created_status = 200
    ENV: ClassVar[dict[str, str]] = {"CLICKUP_API_TOKEN": "pk_81234567_FAKE0CLICKUP0PERSONAL0TOKEN00000"}
    LIST_ID = "901234567"

    def __init__(
        self,
        *,
        token: str = ENV["CLICKUP_API_TOKEN"],
        lists: tuple[str, ...] = (LIST_ID,),
        members: tuple[int, ...] = (81234567,),
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"apiToken": token}, **kw)
        self.lists = set(lists)
        self.members = set(members)
        self.space_tags: set[str] = set()

    def limited_paths(self) -> tuple[str, ...]:
        return ("/api/v2/",)

    # -- shapes ------------------------------------------------------------------------------

    def limit_headers(self, wait: float = 0.0) -> dict[str, str]:
        limit = self.window.limit if self.window else 100
        remaining = self.window.remaining if self.window else limit
        reset = time.time() + (wait if wait else (self.window.per if self.window else 60))
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers={**self.limit_headers(), **(headers or {})})

    def err(self, status: int, message: str, ecode: str) -> web.Response:
        return self.answer({"err": message, "ECODE": ecode}, status)

    def too_many(self, wait: float) -> web.Response:
        return web.json_response(
            {"err": "Rate limit reached", "ECODE": "APP_002"}, status=429, headers=self.limit_headers(wait)
        )

    async def admit(self, request: web.Request) -> web.Response | None:
        if self.caller(request) is None:
            if "Authorization" not in request.headers:
                return self.err(400, "Authorization header required", "OAUTH_017")
            return self.err(401, "Token invalid", "OAUTH_025")
        if "list_id" in request.match_info and request.match_info["list_id"] not in self.lists:
            return self.err(401, "Team not authorized", "OAUTH_027")
        return None

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        return self.err(400, "Invalid JSON body", "INPUT_001")

    # -- tasks -------------------------------------------------------------------------------

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        if not isinstance(body, dict):
            return self.err(400, "Body must be an object", "INPUT_001")
        problem = self.problem(body)
        return None if problem is None else self.err(400, *problem)

    @staticmethod
    def problem(body: dict[str, Any]) -> tuple[str, str] | None:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return "Task name invalid", "INPUT_005"
        for text in ("description", "markdown_description"):
            if text in body and not isinstance(body[text], str):
                return f"{text} must be a string", "INPUT_002"
        priority = body.get("priority")
        if priority is not None and (isinstance(priority, bool) or priority not in PRIORITIES):
            return "Priority invalid", "INPUT_003"
        status = body.get("status")
        if status is not None and (not isinstance(status, str) or status.lower() not in STATUSES):
            return "Status not found", "CRTSK_001"
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            return "Tags must be an array of strings", "INPUT_004"
        assignees = body.get("assignees", [])
        if not isinstance(assignees, list) or not all(isinstance(a, int) for a in assignees):
            return "Assignees must be an array of user ids", "INPUT_006"
        for date in ("due_date", "start_date"):
            if body.get(date) is not None and not isinstance(body[date], int):
                return f"{date} must be a Unix time in milliseconds", "INPUT_007"
        return None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        tags = [t.lower() for t in body.get("tags", [])]
        self.space_tags.update(tags)
        task_id = "86" + secrets.token_hex(4)[:7]
        priority = body.get("priority")
        description = body.get("markdown_description") or body.get("description") or ""
        task = {
            "id": task_id,
            "custom_id": None,
            "name": body["name"],
            "text_content": description,
            "description": description,
            "status": {"status": (body.get("status") or STATUSES[0]).lower(), "type": "open", "orderindex": 0},
            "date_created": str(int(time.time() * 1000)),
            "creator": {"id": 81234567, "username": "Octopus Bot"},
            "assignees": [{"id": a} for a in body.get("assignees", [])],
            "tags": [{"name": t, "tag_fg": "#800000", "tag_bg": "#800000", "creator": 81234567} for t in tags],
            "priority": None
            if priority is None
            else {"id": str(priority), "priority": PRIORITIES[priority][0], "color": PRIORITIES[priority][1]},
            "due_date": None if body.get("due_date") is None else str(body["due_date"]),
            "list": {"id": request.match_info["list_id"]},
            "url": f"https://app.clickup.com/t/{task_id}",
        }
        return task_id, {**task, "body": body}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return _public(record), {}

    # -- the list's tasks and /user ----------------------------------------------------------

    def matches(self, object_type: str, record: dict[str, Any], query: MultiMapping[str]) -> bool:
        wanted = {t.lower() for t in query.getall("tags[]", [])}
        return record["list"]["id"] == query["list_id"] and (
            not wanted or bool(wanted & {t["name"] for t in record["tags"]})
        )

    def found(self, object_type: str, record_id: str, record: dict[str, Any]) -> Any:
        return _public(record)

    def listing(self, find: FindCall, hits: list[Any], query: MultiMapping[str]) -> Any:
        return {"tasks": hits[:100], "last_page": len(hits) <= 100}

    def whoami(self, who: str) -> Any:
        return {"user": {"id": 81234567, "username": "Octopus Bot", "email": "bot@example.com"}}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "body"}
