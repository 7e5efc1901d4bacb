"""A Trello fake: ``POST /1/cards``, ``GET /1/lists/{id}/cards``, ``GET /1/members/me``.

Who may call comes from the adapter's spec (``key`` and ``token`` query parameters, see
envelope.py); a wrong key or token gets Trello's plain-text 401 (``invalid key`` / ``invalid
token``). Card parameters are read from the query string and the JSON body, as Trello does, and
checked the way Trello answers them: plain-text 400 ``invalid value for <param>`` (``idList``
must name a known list; ``pos`` is top, bottom or a positive number; ``desc`` and ``name`` at
most 16,384 characters; ``due`` a date; id lists of 24-hex ids). Trello publishes no
machine-readable spec, so these checks follow its REST reference for ``POST /1/cards``. The rate
limit answers 429 ``{"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}``
with no rate-limit headers (none are documented).
"""

from __future__ import annotations

import itertools
import re
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web

from octopus_crm.adapters.trello import SPEC as TRELLO
from octopus_crm_sandbox.envelope import caller
from octopus_crm_sandbox.kit import FakeVendor

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


class TrelloFake(FakeVendor):
    name = "trello"
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
        super().__init__(**kw)
        self.accepted = {"apiKey": key, "token": token}
        self.lists = {list_id: secrets.token_hex(12) for list_id in lists}  # list → its board
        self._short = itertools.count(1)

    def endpoints(self) -> dict[str, Any]:
        return {"baseUrl": self.base_url, "allowPrivateNetwork": True}  # the fakes listen on loopback

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/1/cards", self.create_card),
            web.get("/1/lists/{list_id}/cards", self.list_cards),
            web.get("/1/members/me", self.me),
        ]

    def limited_paths(self) -> tuple[str, ...]:
        return ("/1/",)

    def too_many(self, wait: float) -> web.Response:
        return web.json_response({"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}, status=429)

    def refused(self, request: web.Request) -> web.Response | None:
        if caller(TRELLO.auth["key_token"], request, self.accepted, self) is not None:
            return None
        wrong = "key" if request.query.get("key") != self.accepted["apiKey"] else "token"
        return web.Response(status=401, text=f"invalid {wrong}")

    @staticmethod
    def invalid(param: str) -> web.Response:
        return web.Response(status=400, text=f"invalid value for {param}")

    async def create_card(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        params: dict[str, Any] = {k: v for k, v in request.query.items() if k not in ("key", "token")}
        raw = await request.read()
        if raw:
            if request.content_type != "application/json":
                return self.invalid("body")
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return self.invalid("body")
            if not isinstance(body, dict):
                return self.invalid("body")
            params.update(body)
        if params.get("idList") not in self.lists:
            return self.invalid("idList")
        for name in ("name", "desc"):
            if name in params and not (isinstance(params[name], str) and len(params[name]) <= TEXT_MAX):
                return self.invalid(name)
        pos = params.get("pos", "bottom")
        if not _pos_ok(pos):
            return self.invalid("pos")
        for name in ("due", "start"):
            if params.get(name) is not None:
                try:
                    datetime.fromisoformat(str(params[name]).replace("Z", "+00:00"))
                except ValueError:
                    return self.invalid(name)
        for name in ("idLabels", "idMembers"):
            if name in params and _ids(params[name]) is None:
                return self.invalid(name)
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
            "pos": pos,
            "due": params.get("due"),
            "closed": False,
            "idLabels": _ids(params.get("idLabels", [])),
            "idMembers": _ids(params.get("idMembers", [])),
            "labels": [],
            "dateLastActivity": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "shortUrl": f"https://trello.com/c/{short_link}",
            "url": f"https://trello.com/c/{short_link}/{id_short}-{_slug(str(params.get('name', '')))}",
        }
        self.records[card_id] = {**card, "card": card, "params": params, "ignored": sorted(set(params) - CARD_PARAMS)}
        return web.json_response(card)

    async def list_cards(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        list_id = request.match_info["list_id"]
        if list_id not in self.lists:
            return web.Response(status=404, text="The requested resource was not found.")
        wanted = [f for f in request.query.get("fields", "").split(",") if f]
        cards = [
            {"id": r["id"], **{f: r.get(f) for f in wanted}} if wanted else r["card"]
            for r in self.records.values()
            if r["idList"] == list_id and not r["closed"]
        ]
        return web.json_response(cards)

    async def me(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        return web.json_response(
            {"id": "5abbe4b7ddc1b351ef961414", "username": "octopusbot", "fullName": "Octopus Bot",
             "url": "https://trello.com/octopusbot"}
        )  # fmt: skip
