"""A Notion fake (API version 2025-09-03): a database with one data source, pages, data-source query.

Routes: ``GET /v1/databases/{id}`` (lists the data sources), ``GET /v1/data_sources/{id}`` (the
property schema), ``POST /v1/data_sources/{id}/query`` (``rich_text.equals`` filters), ``POST
/v1/pages``. The envelope (who may call, the create route, JSON parsing) comes from the adapter's
spec (specfake.py); the reads are routes of the fake's own. Every request needs the integration
token and ``Notion-Version``. Create bodies are validated with ``jsonschema`` against ``post-page``
from the saved Notion OpenAPI (fragment in ``specs/notion_create_page.json``) with the source's
known errors corrected (FACTS.md §7): the data-source parent is ``{"type": "data_source_id",
"data_source_id"}`` and ``children`` are block objects, ``icon`` / ``cover`` objects. Then the way
Notion checks a page: the parent data source exists and is shared, each property exists and gets a
value of its type, text objects hold at most 2,000 characters and arrays at most 100 items. Errors
are ``{"object": "error", "status", "code", "message"}``; the rate limit answers 429
``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from octopus_crm.adapters.notion import NOTION_VERSION
from octopus_crm.adapters.notion import SPEC as NOTION
from octopus_crm.adapters.spec import CreateCall
from octopus_crm_sandbox.specfake import Created, SpecFake

__all__ = ["NotionFake"]

SPEC = Path(__file__).resolve().parent / "specs" / "notion_create_page.json"
_SAVED = json.loads(SPEC.read_text(encoding="utf-8"))


def _corrected() -> dict[str, Any]:
    """The saved post-page schema with the source's documented mistakes fixed (FACTS.md §7)."""
    schemas = copy.deepcopy(_SAVED["components"]["schemas"])
    schemas["dataSourceIdParentRequest"] = {
        "type": "object",
        "properties": {"type": {"const": "data_source_id"}, "data_source_id": {"type": "string"}},
        "required": ["data_source_id"],
    }
    body = copy.deepcopy(_SAVED["paths"]["/v1/pages"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    body["properties"]["children"] = {"type": "array", "items": {"$ref": "#/components/schemas/blockObjectRequest"}}
    body["properties"]["icon"] = {"type": "object"}
    body["properties"]["cover"] = {"type": "object"}
    return {**body, "components": {"schemas": schemas}}


_CREATE = jsonschema.Draft202012Validator(_corrected())
_RICH_TEXT = jsonschema.Draft202012Validator(
    {"$ref": "#/components/schemas/richTextRequest", "components": _SAVED["components"]}
)

SCHEMA: dict[str, str] = {
    "客户姓名": "title",
    "平台": "select",
    "分类": "select",
    "优先级": "select",
    "状态": "select",
    "内容": "rich_text",
    "创建时间": "date",
    "邮箱": "email",
    "电话": "phone_number",
    "标签": "multi_select",
    "负责人": "people",
    "链接": "url",
    "Octopus ID": "rich_text",
}


def _plain(items: Any) -> str:
    return "".join(str(i.get("text", {}).get("content", "")) for i in items or [] if isinstance(i, dict))


class NotionFake(SpecFake):
    name = "notion"
    spec = NOTION
    mount = "/v1"
    created_status = 200
    ENV: ClassVar[dict[str, str]] = {"NOTION_TOKEN": "ntn_fake0notion0integration0token0000000000000"}
    DATABASE = "2f1e7c3a-5b4d-4e6f-8a9b-0c1d2e3f4a5b"
    DATA_SOURCE = "8a0b1c2d-3e4f-4a5b-9c6d-7e8f9a0b1c2d"

    def __init__(self, *, token: str = ENV["NOTION_TOKEN"], data_sources: int = 1, **kw: Any) -> None:
        super().__init__(accepted={"token": token}, **kw)
        self.sources = {self.DATA_SOURCE: "客户消息"}
        for i in range(1, data_sources):
            self.sources[str(uuid.UUID(int=i))] = f"来源 {i + 1}"
        self.schema = dict(SCHEMA)

    def extra_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/databases/{id}", self.database),
            web.get("/v1/data_sources/{id}", self.data_source),
            web.post("/v1/data_sources/{id}/query", self.query),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/v1/",)

    # -- shapes ------------------------------------------------------------------------------

    @staticmethod
    def fail(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"object": "error", "status": status, "code": code, "message": message}, status=status)

    def too_many(self, wait: float) -> web.Response:
        body = {
            "object": "error",
            "status": 429,
            "code": "rate_limited",
            "message": "You have been rate limited. Please try again in a few minutes.",
        }
        return web.json_response(body, status=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def admit(self, request: web.Request) -> web.Response | None:
        """Notion's answer to a request without a valid token or Notion-Version, else None."""
        if self.caller(request) is None:
            return self.fail(401, "unauthorized", "API token is invalid.")
        version = request.headers.get("Notion-Version")
        if version is None:
            return self.fail(
                400,
                "missing_version",
                "Notion-Version header failed validation: Notion-Version header should be defined, instead was"
                " `undefined`.",
            )
        if version != NOTION_VERSION:
            return self.fail(
                400, "validation_error", f"this fake speaks Notion-Version {NOTION_VERSION}, not {version}"
            )
        return None

    def not_found(self, kind: str, ref: str) -> web.Response:
        return self.fail(
            404,
            "object_not_found",
            f"Could not find {kind} with ID: {ref}. Make sure the relevant pages and databases are shared with"
            " your integration.",
        )

    def page(self, record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k != "children"}

    # -- handlers ----------------------------------------------------------------------------

    async def database(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        if request.match_info["id"].replace("-", "") != self.DATABASE.replace("-", ""):
            return self.not_found("database", request.match_info["id"])
        sources = [{"id": i, "name": n} for i, n in self.sources.items()]
        return web.json_response({"object": "database", "id": self.DATABASE, "data_sources": sources})

    async def data_source(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        source = request.match_info["id"]
        if source not in self.sources:
            return self.not_found("data_source", source)
        properties = {
            name: {"id": f"p{i}", "name": name, "type": t, t: {}} for i, (name, t) in enumerate(self.schema.items())
        }
        body = {"object": "data_source", "id": source, "parent": {"type": "database_id", "database_id": self.DATABASE}}
        return web.json_response({**body, "properties": properties})

    async def query(self, request: web.Request) -> web.Response:
        if (denied := await self.admit(request)) is not None:
            return denied
        source = request.match_info["id"]
        if source not in self.sources:
            return self.not_found("data_source", source)
        body = orjson.loads(await request.read() or b"{}")
        flt = body.get("filter") or {}
        wanted = (flt.get("rich_text") or {}).get("equals")
        name = str(flt.get("property"))
        if self.schema.get(name) != "rich_text" or wanted is None:
            return self.fail(400, "validation_error", "this fake only understands rich_text equals filters")
        hits = [
            self.page(r)
            for r in self.records.values()
            if r["parent"].get("data_source_id") == source
            and _plain(r["properties"].get(name, {}).get("rich_text")) == wanted
        ]
        size = int(body.get("page_size") or 100)
        return web.json_response(
            {"object": "list", "results": hits[:size], "has_more": len(hits) > size, "next_cursor": None}
        )

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        return self.fail(400, "invalid_json", "Error parsing JSON body.")

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        problems = [f"body.{'.'.join(map(str, e.path)) or 'parent'}: {e.message}" for e in _CREATE.iter_errors(body)]
        if problems:
            return self.fail(400, "validation_error", "; ".join(problems))
        source = body["parent"].get("data_source_id")
        if source is None:
            return self.fail(400, "validation_error", "this fake only creates pages under a data_source_id parent")
        if source not in self.sources:
            return self.not_found("data_source", source)
        problem = self.check_properties(body["properties"]) or self.check_children(body.get("children", []))
        return self.fail(400, "validation_error", problem) if problem else None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        page_id = str(uuid.uuid4())
        title = next((_plain(v.get("title")) for v in body["properties"].values() if "title" in v), "")
        slug = "-".join(title.split())[:40]
        source = body["parent"]["data_source_id"]
        record = {
            "object": "page",
            "id": page_id,
            "created_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "parent": {"type": "data_source_id", "data_source_id": source, "database_id": self.DATABASE},
            "properties": body["properties"],
            "url": f"https://www.notion.so/{slug + '-' if slug else ''}{page_id.replace('-', '')}",
            "children": body.get("children", []),
        }
        return page_id, record

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return self.page(record), {}

    def check_properties(self, properties: dict[str, Any]) -> str | None:
        for name, value in properties.items():
            kind = self.schema.get(name)
            if kind is None:
                return f"{name} is not a property that exists."
            if not isinstance(value, dict) or kind not in value:
                return f"{name} is expected to be {kind}."
            inner = value[kind]
            if kind in ("title", "rich_text") and (problem := self.check_rich_text(inner, f"{name}.{kind}")):
                return problem
            if (
                kind in ("select", "status")
                and inner is not None
                and not (isinstance(inner, dict) and inner.get("name"))
            ):
                return f"body.properties.{name}.{kind}.name should be defined."
            if kind == "multi_select" and not (isinstance(inner, list) and len(inner) <= 100):
                return f"body.properties.{name}.multi_select should be an array of at most 100 options."
            if kind == "date" and inner is not None and not (isinstance(inner, dict) and inner.get("start")):
                return f"body.properties.{name}.date.start should be defined."
            if kind in ("email", "phone_number", "url") and inner is not None and not isinstance(inner, str):
                return f"body.properties.{name}.{kind} should be a string or `null`."
            if kind == "people" and not (
                isinstance(inner, list) and all(isinstance(p, dict) and p.get("id") for p in inner)
            ):
                return f"body.properties.{name}.people should be an array of user objects with an id."
        return None

    @staticmethod
    def check_rich_text(items: Any, where: str) -> str | None:
        if not isinstance(items, list):
            return f"body.properties.{where} should be an array."
        if len(items) > 100:
            return f"body.properties.{where}.length should be ≤ `100`, instead was `{len(items)}`."
        for i, item in enumerate(items):
            errors = list(_RICH_TEXT.iter_errors(item))
            if errors:
                return f"body.properties.{where}[{i}]: {errors[0].message}"
            content = item["text"]["content"]
            if len(content) > 2000:
                return (
                    f"body.properties.{where}[{i}].text.content.length should be ≤ `2000`,"
                    f" instead was `{len(content)}`."
                )
        return None

    @staticmethod
    def check_children(children: list[Any]) -> str | None:
        if len(children) > 100:
            return f"body.children.length should be ≤ `100`, instead was `{len(children)}`."
        for i, block in enumerate(children):
            for item in block.get(block.get("type", ""), {}).get("rich_text", []):
                if len(item["text"]["content"]) > 2000:
                    return f"body.children[{i}] rich text content.length should be ≤ `2000`."
        return None
