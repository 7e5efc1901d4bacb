"""A Trello fake: ``POST /1/cards``, ``GET /1/lists/{id}/cards``, ``GET /1/members/me``.

The envelope (who may call — ``key`` and ``token`` query parameters — and the create, list and
``members/me`` routes) comes from the adapter's spec (specfake.py); a wrong key or token gets
Trello's plain-text 401 (``invalid key`` / ``invalid token``), an unknown list a 404. Card
parameters are read from the query string and the JSON body, as Trello does, and checked the way
Trello answers them: plain-text 400 ``invalid value for <param>`` (``idList`` must name a known
list; ``pos`` is top, bottom or a positive number; ``desc`` and ``name`` at most 16,384 characters;
``due`` a date; id lists of 24-hex ids). Trello publishes no machine-readable spec, so these checks
follow its REST reference for ``POST /1/cards``. The rate limit answers 429 ``{"error":
"API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}`` with no rate-limit headers (none are
documented).
"""

from __future__ import annotations

import itertools
import re
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web
from multidict import MultiMapping

from octopus_crm.adapters.spec import CreateCall, FindCall
from octopus_crm.adapters.trello import SPEC as TRELLO
from octopus_crm_sandbox.specfake import Created, Refusal, SpecFake

__all__ = ["TrelloFake"]

_ID = re.compile(r"^[0-9a-f]{24}$")
TEXT_MAX = 16384
CARD_PARAMS = frozenset(
    {"name", "desc", "pos", "due", "start", "dueComplete", "idList", "idMembers", "idLabels", "urlSource",
     "fileSource", "mimeType", "idCardSource", "keepFromSource", "address", "locationName", "coordinates"}
)  # fmt: skip


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "card"


def _ids(value: Any) -> list[str] | None:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else None
    if items is None or not all(isinstance(i, str) and _ID.match(i) for i in items if i != ""):
        return None
    return [i for i in items if i]


def _pos_ok(pos: Any) -> bool:
    if pos in ("top", "bottom"):
        return True
    try:
        return float(pos) > 0
    except (TypeError, ValueError):
        return False


class TrelloFake(SpecFake):
    name = "trello"
    spec = TRELLO
    created_status = 200
    ENV: ClassVar[dict[str, str]] = {
        "TRELLO_API_KEY": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "TRELLO_TOKEN": "ATTAfake0trello0token0c0ffee0000000000000000000000000000000000000000",
    }
    LIST_ID = "62978c0194afec07a10b04d3"

    def __init__(
        self,
        *,
        key: str = ENV["TRELLO_API_KEY"],
        token: str = ENV["TRELLO_TOKEN"],
        lists: tuple[str, ...] = (LIST_ID,),
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"apiKey": key, "token": token}, **kw)
        self.lists = {list_id: secrets.token_hex(12) for list_id in lists}  # list → its board
        self._short = itertools.count(1)

    def limited_paths(self) -> tuple[str, ...]:
        return ("/1/",)

    def too_many(self, wait: float) -> web.Response:
        return web.json_response({"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}, status=429)

    async def admit(self, request: web.Request) -> web.Response | None:
        if self.caller(request) is None:
            wrong = "key" if request.query.get("key") != self.accepted["apiKey"] else "token"
            return web.Response(status=401, text=f"invalid {wrong}")
        if request.match_info.get("list_id") not in (None, *self.lists):
            return web.Response(status=404, text="The requested resource was not found.")
        return None

    @staticmethod
    def invalid(param: str) -> web.Response:
        return web.Response(status=400, text=f"invalid value for {param}")

    async def read_body(self, object_type: str, request: web.Request) -> Any:
        """Card parameters: the query string's, then the JSON body's (Trello reads both)."""
        params: dict[str, Any] = {k: v for k, v in request.query.items() if k not in ("key", "token")}
        raw = await request.read()
        if raw:
            try:
                body = orjson.loads(raw) if request.content_type == "application/json" else None
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                raise Refusal(self.invalid("body"))
            params.update(body)
        return params

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        if body.get("idList") not in self.lists:
            return self.invalid("idList")
        for name in ("name", "desc"):
            if name in body and not (isinstance(body[name], str) and len(body[name]) <= TEXT_MAX):
                return self.invalid(name)
        if not _pos_ok(body.get("pos", "bottom")):
            return self.invalid("pos")
        for name in ("due", "start"):
            if body.get(name) is not None:
                try:
                    datetime.fromisoformat(str(body[name]).replace("Z", "+00:00"))
                except ValueError:
                    return self.invalid(name)
        for name in ("idLabels", "idMembers"):
            if name in body and _ids(body[name]) is None:
                return self.invalid(name)
        return None

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        params = body
        card_id = secrets.token_hex(12)
        short_link = secrets.token_urlsafe(6)[:8]
        id_short = next(self._short)
        card = {
            "id": card_id,
            "idShort": id_short,
            "shortLink": short_link,
            "name": params.get("name", ""),
            "desc": params.get("desc", ""),
            "idList": params["idList"],
            "idBoard": self.lists[params["idList"]],
            "pos": params.get("pos", "bottom"),
            "due": params.get("due"),
            "closed": False,
            "idLabels": _ids(params.get("idLabels", [])),
            "idMembers": _ids(params.get("idMembers", [])),
            "labels": [],
            "dateLastActivity": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "shortUrl": f"https://trello.com/c/{short_link}",
            "url": f"https://trello.com/c/{short_link}/{id_short}-{_slug(str(params.get('name', '')))}",
        }
        return card_id, {**card, "card": card, "params": params, "ignored": sorted(set(params) - CARD_PARAMS)}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        return record["card"], {}

    # -- a list's cards and members/me -------------------------------------------------------

    def matches(self, object_type: str, record: dict[str, Any], query: MultiMapping[str]) -> bool:
        return bool(record["idList"] == query["list_id"] and not record["closed"])

    def found(self, object_type: str, record_id: str, record: dict[str, Any]) -> Any:
        return record

    def listing(self, find: FindCall, hits: list[Any], query: MultiMapping[str]) -> Any:
        wanted = [f for f in query.get("fields", "").split(",") if f]
        return [{"id": r["id"], **{f: r.get(f) for f in wanted}} if wanted else r["card"] for r in hits]

    def whoami(self, who: str) -> Any:
        return {
            "id": "5abbe4b7ddc1b351ef961414",
            "username": "octopusbot",
            "fullName": "Octopus Bot",
            "url": "https://trello.com/octopusbot",
        }
