"""Linear: create an issue with the GraphQL mutation ``issueCreate(input: IssueCreateInput!)``.

One endpoint, ``POST https://api.linear.app/graphql``. A personal API key goes in ``Authorization``
as is (``authType: "api_key"``, the default); an OAuth access token as ``Bearer`` (``"oauth"``).
``teamId`` is the only required input (config ``teamId``, or ``teamId`` in the mapping); the mapping
fills ``title``, ``description`` (markdown), ``priority`` (0 none, 1 urgent, 2 high, 3 medium, 4 low),
``stateId``, ``assigneeId``, ``labelIds``, ``projectId``, ``dueDate`` … as the schema names them.

Idempotency: ``IssueCreateInput.id`` lets the client choose the issue's UUID v4 ("if none is
provided, the backend will generate one"). We derive it from the delivery's idempotency key (a
SHA-256 with the version and variant bits of a v4), so a re-sent create names the same issue. A
re-sent create that is refused (Linear does not document the error for an id in use) is answered
by reading ``issue(id:)``: if the issue exists it is the delivery's record; otherwise the
refusal stands. :meth:`find_existing` reads the same query after an ambiguous attempt.

Errors are GraphQL ``errors[]`` with ``extensions.code``; user errors come with HTTP 400, and so
does rate limiting (``RATELIMITED``), which is why codes are read before the status. Limits are
leaky buckets per API key: requests (``X-RateLimit-Requests-Limit/-Remaining/-Reset``, reset in
UTC epoch ms) and complexity points (``X-RateLimit-Complexity-…``, ``X-Complexity`` the cost of the
last query). The documented figures (5,000 requests and 250,000 points an hour for an API key,
10,000 points per query) size the default pace; the headers pause the integration before
either bucket runs dry, and date a ``RATELIMITED`` answer.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from octopus_crm.adapters.base import AdapterInfo, Delivered, DeliveryContext
from octopus_crm.adapters.graphql import (
    Budget,
    GraphQLAdapter,
    GraphQLErrors,
    Lookup,
    epoch_ms_header,
    graphql_create,
    header_number,
)
from octopus_crm.adapters.ratelimit import RateLimit
from octopus_crm.adapters.settings import Credentials, Endpoints, Url, VendorSettings, alias
from octopus_crm.adapters.spec import ApiKeyHeader, Bearer, Errors, VendorSpec
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import ConfigError, PermanentError

__all__ = ["CREATE", "LOOKUP", "PROBE", "LinearAdapter", "issue_id"]

API_URL = "https://api.linear.app/graphql"
CREATE = """mutation IssueCreate($input: IssueCreateInput!) {
  issueCreate(input: $input) { success issue { id identifier url } }
}"""
LOOKUP = "query Issue($id: String!) { issue(id: $id) { id identifier url } }"
PROBE = "query Viewer { viewer { id } }"

PRIORITY_LINEAR = {"low": 4, "medium": 3, "high": 2, "urgent": 1}


def issue_id(idempotency_key: str) -> str:
    """The issue's UUID v4, derived from the delivery's idempotency key (same key, same issue)."""
    return str(uuid.UUID(bytes=hashlib.sha256(idempotency_key.encode()).digest()[:16], version=4))


class LinearCredentials(Credentials):
    apiKey: SecretStr | None = alias("apiKey", "api_key", "token", description="Personal API key (api_key).")
    accessToken: SecretStr | None = alias("accessToken", "access_token", description="OAuth token (oauth).")


class LinearEndpoints(Endpoints):
    baseUrl: Url | None = Field(default=None, description=f"GraphQL endpoint (default {API_URL}).")


class LinearSettings(VendorSettings):
    credentials: LinearCredentials = Field(default_factory=LinearCredentials)
    endpoints: LinearEndpoints = Field(default_factory=LinearEndpoints)
    teamId: str | None = alias("teamId", "team_id", description="The team's UUID (or set teamId in the mapping).")


def _input(adapter: LinearAdapter, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
    fields = dict(rendered)
    fields.setdefault("teamId", adapter.team_id)
    if isinstance(fields.get("priority"), str) and fields["priority"].isdigit():
        fields["priority"] = int(fields["priority"])
    if isinstance(fields.get("labelIds"), str):
        fields["labelIds"] = [x.strip() for x in fields["labelIds"].split(",") if x.strip()]
    return {"input": {**fields, "id": issue_id(ctx.idempotency_key)}}


SPEC = VendorSpec(
    auth={
        "api_key": ApiKeyHeader("Authorization", ("apiKey", "api_key", "token")),
        "oauth": Bearer(("accessToken", "access_token")),
    },
    default_auth="api_key",
    objects={
        "issue": graphql_create(
            CREATE,
            _input,
            id_at=("data", "issueCreate", "issue", "id"),
            url_at=("data", "issueCreate", "issue", "url"),
            detail={"identifier": ("data", "issueCreate", "issue", "identifier")},
            what="an issue",
        )
    },
    errors=Errors(graphql=True, graphql_rules=GraphQLErrors()),
)


class LinearAdapter(GraphQLAdapter):
    info = AdapterInfo(
        type="linear",
        display_name="Linear",
        display_name_zh="Linear",
        object_types=("issue",),
        auth_types=("api_key", "oauth"),
        rate_limit=RateLimit(requests=5000, perSeconds=3600, concurrency=4),
        idempotency="client-chosen issue id (UUID v4 from the idempotency key); a refused re-send reads issue(id:)",
        docs="https://linear.app/developers/graphql",
    )
    settings_model = LinearSettings
    spec = SPEC
    default_base_url = API_URL
    value_maps: ClassVar[Mapping[str, Mapping[str, Any]]] = {"issue.priority": PRIORITY_LINEAR}
    budgets: ClassVar[tuple[Budget, ...]] = (
        Budget(
            "requests",
            header_number("X-RateLimit-Requests-Remaining"),
            epoch_ms_header("X-RateLimit-Requests-Reset"),
            limit=header_number("X-RateLimit-Requests-Limit"),
            period=3600.0,
        ),
        Budget(
            "complexity",
            header_number("X-RateLimit-Complexity-Remaining"),
            epoch_ms_header("X-RateLimit-Complexity-Reset"),
            cost=header_number("X-Complexity"),
            limit=header_number("X-RateLimit-Complexity-Limit"),
            period=3600.0,
        ),
    )
    lookups: ClassVar[Mapping[str, Lookup]] = {
        "issue": Lookup(
            LOOKUP,
            lambda adapter, ctx: {"id": issue_id(ctx.idempotency_key)},
            ("data", "issue"),
            detail={"identifier": "identifier"},
        )
    }
    probe = PROBE

    @property
    def team_id(self) -> str | None:
        return self.settings.teamId if isinstance(self.settings, LinearSettings) else None

    def validate_config(self) -> None:
        super().validate_config()
        mapping = self.config.mappings.get("issue")
        if not (self.team_id or (isinstance(mapping, dict) and mapping.get("teamId"))):
            raise ConfigError("teamId is required (config.teamId or mappings.issue.teamId)", code="missing_setting")

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        try:
            return await super().create(event, object_type, ctx)
        except PermanentError:
            found = await self.find_existing(event, object_type, ctx)  # our id in use: an earlier attempt
            if found is None:
                raise
            return found
