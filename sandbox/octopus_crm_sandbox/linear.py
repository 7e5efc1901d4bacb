"""A Linear fake: GraphQL on ``/graphql``, ``issueCreate``, ``issue(id:)``, ``viewer``.

Every request is validated against the saved SDL fragment (``specs/linear.graphql``) and its
variables coerced with graphql-core (sandbox/octopus_crm_sandbox/graphql.py). Who may call comes
from the adapter's spec (an API key in ``Authorization`` as is, or an OAuth ``Bearer`` token).
``issueCreate`` checks the team and the client-chosen ``id`` (a UUID v4, not yet used: a second
create with the same id is refused — Linear does not document that error, the fake's wording is
its own) and the priority range. Every answer carries the request and complexity budget headers
(reset times in UTC epoch ms, ``X-Complexity`` the cost of the query); a spent budget, or the
kit's sliding window, answers HTTP 400 with ``RATELIMITED``, as Linear does.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from typing import Any, ClassVar

from aiohttp import web
from graphql import GraphQLError

from octopus_crm.adapters.linear import SPEC as LINEAR
from octopus_crm_sandbox.graphql import GraphQLFake, Resolver

__all__ = ["LinearFake"]

TEAM_ID = "5f1c3b2a-8d4e-4c6f-9a1b-2e3d4c5b6a7f"


def _user_error(message: str) -> GraphQLError:
    return GraphQLError(
        message,
        extensions={"type": "invalid input", "code": "INVALID_INPUT", "userError": True,
                    "userPresentableMessage": message},
    )  # fmt: skip


class LinearFake(GraphQLFake):
    name = "linear"
    spec = LINEAR
    schema_file = "linear.graphql"
    ENV: ClassVar[dict[str, str]] = {"LINEAR_API_KEY": "lin_api_fake0octopus0key0000000000000000000"}

    def __init__(
        self,
        *,
        api_key: str = ENV["LINEAR_API_KEY"],
        teams: dict[str, str] | None = None,
        requests_limit: int = 5000,
        complexity_limit: int = 250_000,
        **kw: Any,
    ) -> None:
        super().__init__(accepted={"apiKey": api_key, "accessToken": "lin_oauth_fake_token"}, **kw)
        self.teams = teams or {TEAM_ID: "SUP"}
        self.numbers = {team: itertools.count(1) for team in self.teams}
        self.requests_limit = requests_limit
        self.complexity_limit = complexity_limit
        self.spent: list[tuple[float, int]] = []  # (at, complexity) of each counted request, last hour

    def unauthorized(self, request: web.Request) -> web.Response:
        message = "Authentication required, not authenticated"
        error = {"message": message, "extensions": {"type": "authentication error", "code": "AUTHENTICATION_ERROR",
                                                    "userPresentableMessage": message}}  # fmt: skip
        return web.json_response({"errors": [error]}, status=401)

    # -- budgets -----------------------------------------------------------------------------

    def _window(self) -> tuple[int, int]:
        cutoff = time.time() - 3600
        self.spent = [(at, cost) for at, cost in self.spent if at > cutoff]
        return len(self.spent), sum(cost for _, cost in self.spent)

    def budget_headers(self, cost: int) -> dict[str, str]:
        requests, points = self._window()
        reset_ms = str(int((time.time() + 3600) * 1000) if not self.spent else int((self.spent[0][0] + 3600) * 1000))
        return {
            "X-RateLimit-Requests-Limit": str(self.requests_limit),
            "X-RateLimit-Requests-Remaining": str(max(0, self.requests_limit - requests)),
            "X-RateLimit-Requests-Reset": reset_ms,
            "X-Complexity": str(cost),
            "X-RateLimit-Complexity-Limit": str(self.complexity_limit),
            "X-RateLimit-Complexity-Remaining": str(max(0, self.complexity_limit - points)),
            "X-RateLimit-Complexity-Reset": reset_ms,
        }

    def ratelimited(self, wait: float | None = None) -> web.Response:
        headers = self.budget_headers(0)
        if wait is not None:
            headers["X-RateLimit-Requests-Reset"] = str(int((time.time() + max(1, math.ceil(wait))) * 1000))
            headers["X-RateLimit-Requests-Remaining"] = "0"
        message = "Rate limit exceeded"
        extensions = {"code": "RATELIMITED", "type": "ratelimited", "userPresentableMessage": message}
        error = {"message": message, "extensions": extensions}
        return web.json_response({"errors": [error]}, status=400, headers=headers)

    def too_many(self, wait: float) -> web.Response:
        return self.ratelimited(wait)

    def answer(self, result: dict[str, Any], request_error: bool) -> web.Response:
        requests, points = self._window()
        if requests >= self.requests_limit or points >= self.complexity_limit:
            return self.ratelimited()
        creates = bool(self.operations) and self.operations[-1][0] == "issueCreate"
        cost = 0 if request_error else 10 if creates else 1
        self.spent.append((time.time(), cost))
        return web.json_response(result, status=400 if request_error else 200, headers=self.budget_headers(cost))

    # -- resolvers ---------------------------------------------------------------------------

    def resolvers(self) -> dict[str, Resolver]:
        return {"issueCreate": self.issue_create, "issue": self.issue, "viewer": self.viewer}

    def issue_create(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        team = input["teamId"]
        if team not in self.teams:
            raise _user_error(f"Entity not found: Team - could not find team {team}")
        issue_id = input.get("id")
        if issue_id is not None:
            try:
                if uuid.UUID(issue_id).version != 4:
                    raise ValueError(issue_id)
            except ValueError:
                raise _user_error("id must be a UUID v4") from None
            if issue_id in self.records:
                raise _user_error(f"An issue with the id {issue_id} already exists")
        priority = input.get("priority")
        if priority is not None and not 0 <= priority <= 4:
            raise _user_error("priority must be between 0 and 4")
        issue_id = issue_id or str(uuid.uuid4())
        identifier = f"{self.teams[team]}-{next(self.numbers[team])}"
        issue = {
            **input,
            "id": issue_id,
            "identifier": identifier,
            "url": f"https://linear.app/octopus-fake/issue/{identifier.lower()}",
        }
        self.records[issue_id] = issue
        return {"success": True, "lastSyncId": float(len(self.records)), "issue": issue}

    def issue(self, info: Any, id: str) -> dict[str, Any]:
        issue = self.records.get(id) or next((i for i in self.records.values() if i["identifier"] == id), None)
        if issue is None:
            raise _user_error("Entity not found: Issue")
        return issue

    def viewer(self, info: Any) -> dict[str, Any]:
        return {"id": "0b6a6a3c-6f0e-4a55-9d2b-1c1e8c0f9a11", "name": "Octopus Bot", "email": "bot@example.com"}
