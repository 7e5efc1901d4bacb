"""A monday.com fake: GraphQL on ``/v2``, ``create_item``, ``items_page_by_column_values``, ``me``.

Every request is validated against the saved SDL fragment (``specs/monday.graphql``) and its
variables coerced with graphql-core. The token goes in ``Authorization`` as is (the adapter's
spec); ``API-Version`` must look like ``YYYY-MM`` when sent. ``create_item`` checks the board, the
group, the item name's length and ``column_values`` the way monday does: a JSON-encoded *string*
keyed by existing column ids, status labels known unless ``create_labels_if_missing``, dates as
``YYYY-MM-DD[ HH:MM:SS]``. Application errors are HTTP 200 with ``errors[]``
(``extensions.code``/``status_code``/``error_data``, ``request_id``); the per-minute complexity
budget (``complexity { before after query reset_in_x_seconds }``) answers
``COMPLEXITY_BUDGET_EXHAUSTED`` with ``retry_in_seconds``; the minute limit (the kit's window) and
the daily limit answer 429 with ``Retry-After``. Every answer carries ``RateLimit-Policy`` and
``RateLimit`` headers.
"""

from __future__ import annotations

import itertools
import math
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from aiohttp import web
from graphql import GraphQLError

from octopus_crm.adapters.monday import SPEC as MONDAY
from octopus_crm_sandbox.graphql import GraphQLFake, Resolver

__all__ = ["BOARD_ID", "MondayFake"]

BOARD_ID = "1234567890"
COLUMNS = {
    "status": ("status", ("Working on it", "Done", "Stuck", "待处理")),
    "priority": ("status", ("Critical ⚠️", "High", "Medium", "Low")),
    "platform": ("text", ()),
    "customer_name": ("text", ()),
    "content": ("long_text", ()),
    "received_date": ("date", ()),
    "email": ("email", ()),
    "category": ("text", ()),
    "octopus_key": ("text", ()),
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?$")
CREATE_COST = 10_000


def _error(message: str, code: str, status_code: int = 200, **error_data: Any) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code, "status_code": status_code, "error_data": error_data})


class MondayFake(GraphQLFake):
    name = "monday"
    spec = MONDAY
    schema_file = "monday.graphql"
    mount = "/v2"
    ENV: ClassVar[dict[str, str]] = {"MONDAY_API_TOKEN": "eyJhbGciOiJIUzI1NiJ9.fake-monday-token"}

    def __init__(
        self,
        *,
        token: str = ENV["MONDAY_API_TOKEN"],
        boards: dict[str, dict[str, tuple[str, tuple[str, ...]]]] | None = None,
        complexity_budget: int = 10_000_000,
        daily_limit: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"token": token}, **kw)
        self.boards = boards or {BOARD_ID: {k: (t, tuple(labels)) for k, (t, labels) in COLUMNS.items()}}
        self.groups = {board: ("topics", "new_group") for board in self.boards}
        self._ids = itertools.count(9_000_000_001)
        self.complexity_budget = complexity_budget
        self.spent: list[tuple[float, int]] = []  # (at, points) in the sliding minute
        self.daily_limit = daily_limit
        self.calls_today = 0
        self.versions: list[str | None] = []

    def unauthorized(self, request: web.Request) -> web.Response:
        error = {"message": "Not Authenticated", "extensions": {"code": "UNAUTHENTICATED", "status_code": 401}}
        return web.json_response({"errors": [error]}, status=401)

    # -- limits ------------------------------------------------------------------------------

    def left(self) -> tuple[int, float]:
        """Points left in the sliding minute, and seconds until the oldest spend leaves it."""
        now = time.monotonic()
        self.spent = [(at, p) for at, p in self.spent if at > now - 60]
        reset = self.spent[0][0] + 60 - now if self.spent else 60.0
        return self.complexity_budget - sum(p for _, p in self.spent), reset

    def limit_headers(self) -> dict[str, str]:
        _, reset = self.left()
        policy = f'"minute";q={self.window.limit if self.window else 5000};w=60'
        remaining = self.window.remaining if self.window else 5000
        return {"RateLimit-Policy": policy, "RateLimit": f'"minute";r={remaining};t={math.ceil(reset)}'}

    def limited(self, code: str, message: str, wait: float, status: int = 429) -> web.Response:
        seconds = max(1, math.ceil(wait))
        error = {"message": message, "extensions": {"code": code, "retry_in_seconds": seconds}}
        headers = {**self.limit_headers(), "Retry-After": str(seconds)}
        return web.json_response({"errors": [error], "account_id": 1}, status=status, headers=headers)

    def too_many(self, wait: float) -> web.Response:
        return self.limited("RATE_LIMIT_EXCEEDED", "Rate limit exceeded", wait)

    async def graphql(self, request: web.Request) -> web.Response:
        version = request.headers.get("API-Version")
        self.versions.append(version)
        if version is not None and not re.fullmatch(r"\d{4}-\d{2}", version):
            error = {"message": f"Invalid API version: {version}", "extensions": {"code": "InvalidVersionException"}}
            return web.json_response({"errors": [error]}, status=400)
        if self.daily_limit is not None:
            self.calls_today += 1
            if self.calls_today > self.daily_limit:
                midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
                wait = (midnight - datetime.now(UTC)).total_seconds()
                return self.limited("DAILY_LIMIT_EXCEEDED", "Daily limit exceeded", wait)
        return await super().graphql(request)

    def answer(self, result: dict[str, Any], request_error: bool) -> web.Response:
        result = {**result, "account_id": 1, "extensions": {"request_id": secrets.token_hex(8)}}
        return web.json_response(result, status=400 if request_error else 200, headers=self.limit_headers())

    def spend(self, points: int) -> None:
        left, reset = self.left()
        if points > left:
            raise GraphQLError(
                "Complexity budget exhausted",
                extensions={"code": "COMPLEXITY_BUDGET_EXHAUSTED", "retry_in_seconds": max(1, math.ceil(reset))},
            )
        self.spent.append((time.monotonic(), points))

    # -- resolvers ---------------------------------------------------------------------------

    def resolvers(self) -> dict[str, Resolver]:
        return {
            "create_item": self.create_item,
            "items_page_by_column_values": self.items_page,
            "me": lambda info: {"id": "4012689", "name": "Octopus Bot"},
            "complexity": self.complexity,
        }

    def complexity(self, info: Any) -> dict[str, Any]:
        query = CREATE_COST if "create_item" in info.context["query"] else 1_000
        left, reset = self.left()
        return {"before": left + query, "after": left, "query": query, "reset_in_x_seconds": math.ceil(reset)}

    def create_item(
        self,
        info: Any,
        board_id: str,
        item_name: str,
        group_id: str | None = None,
        column_values: Any = None,
        create_labels_if_missing: bool | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        self.spend(CREATE_COST)
        columns = self.boards.get(board_id)
        if columns is None:
            raise _error("The board does not exist", "InvalidBoardIdException", board_id=board_id)
        if group_id is not None and group_id not in self.groups[board_id]:
            raise _error("The group does not exist", "InvalidGroupIdException", group_id=group_id)
        if len(item_name) > 255:
            raise _error("Item name is too long (max 255 characters)", "ItemNameTooLongException")
        cells = self.check_columns(columns, column_values, bool(create_labels_if_missing))
        item_id = str(next(self._ids))
        item = {
            "id": item_id,
            "name": item_name,
            "board_id": board_id,
            "group_id": group_id or self.groups[board_id][0],
            "column_values": cells,
            "url": f"https://octopus-fake.monday.com/boards/{board_id}/pulses/{item_id}",
        }
        self.records[item_id] = item
        return item

    def check_columns(self, columns: dict[str, Any], raw: Any, create_labels: bool) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, str):
            raise _error("column_values must be a JSON-encoded string", "JsonParseException", 400)
        try:
            cells = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _error("Unable to parse column_values", "JsonParseException", 400) from None
        if not isinstance(cells, dict):
            raise _error("column_values must be an object keyed by column id", "JsonParseException", 400)
        for column_id, value in cells.items():
            if column_id not in columns:
                raise _error(f"This column ID doesn't exist for the board: {column_id}", "InvalidColumnIdException",
                             column_id=column_id)  # fmt: skip
            kind, labels = columns[column_id]
            problem = self.cell_problem(kind, labels, value, create_labels)
            if problem:
                raise _error(
                    f"invalid value - {problem}", "ColumnValueException", column_type=kind, column_id=column_id
                )
            if kind == "status" and create_labels:
                label = value.get("label") if isinstance(value, dict) else value
                if isinstance(label, str) and label not in labels:
                    columns[column_id] = (kind, (*labels, label))
        return cells

    @staticmethod
    def cell_problem(kind: str, labels: tuple[str, ...], value: Any, create_labels: bool) -> str | None:
        if kind == "status":
            label = value.get("label") if isinstance(value, dict) else value
            if isinstance(value, dict) and "index" in value:
                return None if isinstance(value["index"], int) else "index must be a number"
            if not isinstance(label, str):
                return "a status takes a label"
            return None if label in labels or create_labels else "label does not exist in column"
        if kind in ("text",):
            return None if isinstance(value, str) else "a text column takes a string"
        if kind == "long_text":
            ok = isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("text"), str))
            return None if ok else "a long text column takes a string or {text}"
        if kind == "date":
            date = value.get("date") if isinstance(value, dict) else value
            return None if isinstance(date, str) and _DATE.match(date) else "date must be YYYY-MM-DD[ HH:MM:SS]"
        if kind == "email":
            ok = isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("email"), str))
            return None if ok else "an email column takes {email, text}"
        return None

    def items_page(self, info: Any, board_id: str, columns: list[dict[str, Any]] | None = None, limit: int = 25,
                   **_: Any) -> dict[str, Any]:  # fmt: skip
        if board_id not in self.boards:
            raise _error("The board does not exist", "InvalidBoardIdException", board_id=board_id)
        hits = [
            item for item in self.records.values()
            if item["board_id"] == board_id and all(
                str(item["column_values"].get(c["column_id"])) in [str(v) for v in c["column_values"]]
                for c in columns or []
            )
        ]  # fmt: skip
        return {"cursor": None, "items": hits[:limit]}
