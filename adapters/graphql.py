"""GraphQL vendors on the spec engine: one URL, a document plus variables, ``errors[]`` typed, budgets paced.

A GraphQL vendor answers every call on one endpoint, often with HTTP 200 whatever happened; what
differs between vendors is the document, how their ``errors[]`` entries name a failure, and the
budgets they report on each answer. This module holds those three as data:

* :func:`graphql_create` builds the :class:`~adapters.spec.CreateCall` of a mutation (the body is
  ``{"query", "variables"}``; the id is read under ``data``), :class:`Lookup` a query that finds a
  record again, :attr:`GraphQLAdapter.probe` the test-connection query;
* :class:`GraphQLErrors` classifies ``errors[]`` by code (``extensions.code``, or a top-level
  ``error_code`` as older monday.com answers carry it) *before* the HTTP status, since vendors
  differ in the status they send with the same error (Linear's ``RATELIMITED`` comes with 400);
  a code it does not know falls back to the status the error states (``extensions.status_code``);
  an answer with errors fails even with partial ``data``, unless every error is on a side field;
* :class:`Budget` reads a budget the vendor reports (request count, complexity points) from the
  headers or the body; :class:`GraphQLAdapter` pauses the integration's limiter before the next
  call would overspend it, and dates a rate-limit error without ``Retry-After`` by the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from octopus_crm.adapters.base import Delivered, DeliveryContext
from octopus_crm.adapters.http import Classifier, Request, Response, classify_status, parse_retry_after
from octopus_crm.adapters.spec import CreateCall, SpecAdapter, at_path
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm.core.redaction import redact

__all__ = [
    "Budget",
    "GraphQLAdapter",
    "GraphQLErrors",
    "Lookup",
    "Reader",
    "body_number",
    "epoch_ms_header",
    "graphql_create",
    "header_number",
]

Path = tuple[str | int, ...]
#: (adapter, rendered mapping, event, ctx) → the operation's variables.
Variables = Callable[[Any, dict[str, Any], ClassifiedMessage, DeliveryContext], dict[str, Any]]
Reader = Callable[[Response], float | None]


def graphql_create(
    document: str,
    variables: Variables,
    *,
    id_at: Path,
    url_at: Path | None = None,
    detail: Mapping[str, Path] | None = None,
    path: str = "",
    what: str = "a record id",
) -> CreateCall:
    """The create call of a mutation: POST ``{"query": document, "variables": …}`` to the endpoint
    (``path`` "" is the configured URL itself); paths are read from the whole answer (``data`` …)."""

    def body(adapter: Any, rendered: dict[str, Any], event: ClassifiedMessage, ctx: DeliveryContext) -> Any:
        return {"query": document, "variables": variables(adapter, rendered, event, ctx)}

    return CreateCall(path, body=body, id_at=id_at, url_at=url_at, detail=dict(detail or {}), what=what)


@dataclass(frozen=True)
class Lookup:
    """A query that finds a record an earlier attempt created.

    ``variables`` (adapter, ctx) returns None when this configuration cannot look up (no marker
    column); ``items_at`` points at a list of records or at one record (null when absent).
    """

    document: str
    variables: Callable[[Any, DeliveryContext], dict[str, Any] | None]
    items_at: Path
    id_key: str = "id"
    url_key: str = "url"
    detail: Mapping[str, str] = field(default_factory=dict)


# -- errors --------------------------------------------------------------------------------------

_STATUS_KINDS = {401: "token_expired", 403: "auth", 404: "permanent", 429: "rate_limited"}


@dataclass(frozen=True)
class GraphQLErrors:
    """How a GraphQL vendor's ``errors[]`` map onto the taxonomy (codes compared case-insensitively).

    Plugs into :class:`~adapters.spec.Errors` as ``Errors(graphql=True, graphql_rules=…)``. The first
    error whose code is in a set decides; otherwise the HTTP status, or the status the error states
    (``status_paths``) when HTTP says 200, decides as :func:`~adapters.http.classify_status` would;
    otherwise the answer is permanent. Seconds to wait come from ``Retry-After`` or ``retry_paths``.
    """

    rate_limited: frozenset[str] = frozenset({"RATELIMITED", "RATE_LIMITED"})
    quota: frozenset[str] = frozenset()
    auth: frozenset[str] = frozenset({"AUTHENTICATION_ERROR", "UNAUTHENTICATED", "FORBIDDEN"})
    token_expired: frozenset[str] = frozenset()
    retryable: frozenset[str] = frozenset({"INTERNAL_SERVER_ERROR", "INTERNAL_ERROR"})
    code_paths: tuple[Path, ...] = (("extensions", "code"),)
    status_paths: tuple[Path, ...] = (("extensions", "status_code"),)
    retry_paths: tuple[Path, ...] = (("extensions", "retry_in_seconds"),)
    #: Top-level fields of a non-standard error body (``{"error_code", "status_code", "error_message"}``).
    top_code: str = "error_code"
    top_status: str = "status_code"
    top_message: str = "error_message"
    quota_retry_after: float = 3600.0
    #: Root fields read on the side (monday's ``complexity``): an error only there fails nothing.
    side_fields: frozenset[str] = frozenset()

    def kind(self, code: str) -> str | None:
        upper = code.upper()
        for name in ("token_expired", "quota", "rate_limited", "auth", "retryable"):
            if upper in {c.upper() for c in getattr(self, name)}:
                return name
        return None

    def classify(self, response: Response) -> DeliveryError | None:
        body = response.json()
        if not isinstance(body, dict):
            return classify_status(response)
        raw = body.get("errors")
        entries = [e if isinstance(e, dict) else {"message": str(e)} for e in raw] if isinstance(raw, list) else []
        entries = [e for e in entries if at_path(e, ("path", 0)) not in self.side_fields]
        top = body.get(self.top_code)
        if not entries and not top:
            return classify_status(response)
        codes = [str(c) for e in entries for p in self.code_paths if isinstance(c := at_path(e, p), (str, int))]
        codes += [str(top)] if isinstance(top, (str, int)) and top != "" else []
        messages = [str(e.get("message")) for e in entries if e.get("message")]
        message = redact("; ".join(messages) or str(body.get(self.top_message) or "") or "GraphQL error")[:500]
        kind = next((k for c in codes if (k := self.kind(c)) is not None), None)
        code = next((c for c in codes if self.kind(c) == kind), codes[0]) if codes else "graphql_error"
        status = response.status
        if kind is None:
            stated = [s for e in entries for p in self.status_paths if isinstance(s := at_path(e, p), int)]
            stated += [t] if isinstance(t := body.get(self.top_status), int) else []
            effective = status if status != 200 or not stated else stated[0]
            kind = _STATUS_KINDS.get(effective) or ("retryable" if effective >= 500 else "permanent")
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            waits = [w for e in entries for p in self.retry_paths if isinstance(w := at_path(e, p), (int, float))]
            retry_after = float(waits[0]) if waits else None
        label = code[:64]
        if kind == "token_expired":
            return TokenExpiredError(message, code=label, status=status)
        if kind == "quota":
            wait = retry_after if retry_after is not None else self.quota_retry_after
            return QuotaExhaustedError(message, code=label, status=status, retry_after=wait)
        if kind == "rate_limited":
            return RateLimitedError(message, code=label, status=status, retry_after=retry_after)
        if kind == "auth":
            return AuthError(message, code=label, status=status)
        if kind == "retryable":
            return RetryableError(message, code=label, status=status, retry_after=retry_after)
        return PermanentError(message, code=label, status=status)


# -- budgets -------------------------------------------------------------------------------------


def header_number(name: str) -> Reader:
    """A number in a response header."""

    def read(response: Response) -> float | None:
        try:
            return float(response.headers.get(name, "").strip())
        except ValueError:
            return None

    return read


def epoch_ms_header(name: str) -> Reader:
    """Seconds from now until the UTC epoch-milliseconds time in a response header."""
    number = header_number(name)

    def read(response: Response) -> float | None:
        when = number(response)
        return None if when is None else max(0.0, when / 1000.0 - time.time())

    return read


def body_number(*path: str | int) -> Reader:
    """A number at ``path`` in the decoded JSON answer."""

    def read(response: Response) -> float | None:
        value = at_path(response.json(), path)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return read


@dataclass(frozen=True)
class Budget:
    """A budget the vendor reports on each answer (requests left, complexity points left).

    ``remaining`` and ``reset`` (seconds until it is full again) read the answer; ``cost`` is what
    one call spends (the last call's reported cost, or a constant). With ``limit`` and ``period``
    (a leaky bucket refilling ``limit`` per ``period`` seconds) the pause is the time to refill
    the shortfall; otherwise it lasts until the reset. ``reserve`` calls' worth is kept back for
    the requests already in flight.
    """

    name: str
    remaining: Reader
    reset: Reader
    cost: Reader | float = 1.0
    limit: Reader | None = None
    period: float = 0.0
    reserve: float = 2.0
    default_wait: float = 60.0

    def pause(self, response: Response) -> float | None:
        """Seconds to hold the integration after this answer; None when the budget suffices."""
        left = self.remaining(response)
        if left is None:
            return None
        cost = self.cost if isinstance(self.cost, (int, float)) else (self.cost(response) or 1.0)
        shortfall = cost * self.reserve - left
        if shortfall <= 0:
            return None
        limit = self.limit(response) if self.limit is not None else None
        reset = self.reset(response)
        if limit and self.period:
            refill = shortfall * self.period / limit
            return min(refill, reset) if reset is not None else refill
        return reset if reset is not None else self.default_wait


# -- the adapter ---------------------------------------------------------------------------------


class GraphQLAdapter(SpecAdapter):
    """A :class:`SpecAdapter` speaking GraphQL: budgets paced, lookups and the probe as queries."""

    #: Budgets read from every answer; the limiter pauses before the next call would overspend one.
    budgets: ClassVar[tuple[Budget, ...]] = ()
    #: Object type → how to find a record an earlier attempt created.
    lookups: ClassVar[Mapping[str, Lookup]] = {}
    #: The test-connection query (the cheapest authenticated read).
    probe: ClassVar[str] = ""

    def classifier(self) -> Classifier:
        rules = self.spec.errors.classify

        def classify(response: Response) -> DeliveryError | None:
            error = rules(response)
            pause = self.budget_pause(response)
            if isinstance(error, RateLimitedError) and error.retry_after is None:
                error.retry_after = pause
            elif error is None and pause:
                limiter = self.current_limiter()
                if limiter is not None:
                    limiter.slow_down(pause)
            return error

        return classify

    def budget_pause(self, response: Response) -> float | None:
        """The longest pause any budget asks for after ``response`` (None: none is short)."""
        pauses = [p for budget in self.budgets if (p := budget.pause(response)) is not None]
        return max(pauses) if pauses else None

    async def query(self, document: str, variables: dict[str, Any] | None = None, *, paced: bool = True) -> Any:
        """Send one operation; the decoded ``data`` (errors have been raised as typed errors)."""
        body = {"query": document, "variables": variables or {}}
        response = await self.http.send(Request("POST", self.base_url, json=body, paced=paced))
        return response.json_object("GraphQL").get("data")

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        lookup = self.lookups.get(object_type)
        variables = lookup.variables(self, ctx) if lookup is not None else None
        if lookup is None or variables is None:
            return None
        try:
            data = await self.query(lookup.document, variables)
        except PermanentError:
            return None  # "not found" is an error on some vendors (Linear's issue(id:)): can't tell
        found = at_path({"data": data}, lookup.items_at)
        item = (found[0] if found else None) if isinstance(found, list) else found
        if not isinstance(item, dict) or item.get(lookup.id_key) in (None, ""):
            return None
        url = item.get(lookup.url_key)
        detail = {name: item[key] for name, key in lookup.detail.items() if item.get(key)}
        return Delivered(str(item[lookup.id_key]), url if isinstance(url, str) and url else None, detail)

    async def test_connection(self) -> None:
        if not self.probe:
            await super().test_connection()
            return
        await self.query(self.probe, paced=False)
