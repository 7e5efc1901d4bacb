"""A fake built from the adapter's :class:`~adapters.spec.VendorSpec`: the envelope stated once.

From the spec come who may call (each ``authType``'s scheme, read from the wire by
:func:`~octopus_crm_sandbox.envelope.caller`), the token endpoint of token schemes, one create route
per object type (its method and path; the new id placed where the spec reads it — a body path or a
response header), the lookup route of each :class:`~adapters.spec.FindCall` (its result list where
the spec reads it) and the connection-test route; a repeated idempotency key replays the first
record. The kit's envelope adds the 429 window, latency and injected faults. A vendor's fake keeps
only its domain: the credentials it accepts, its error body, the JSON Schema of each create body
(from the vendor's published spec) and the checks the vendor makes beyond it, what a created record
looks like, and how a lookup matches (``matches`` and ``listing`` get the lookup's query with the
route's path variables in it, e.g. the ``list_id`` of ``/list/{list_id}/task``).
:class:`SpecEnvelope` is the part without routes — who may call, token routes, ``endpoints()`` — for
fakes whose wire is not one create per object (GraphQL, batch writes).

Hooks for wires that differ: ``mount`` (the spec's paths under a base-URL prefix), ``create_path``
(a path the adapter computes), ``admit`` (a caller check of the vendor's own, e.g. a token in the
body or a daily allowance), ``read_body`` / ``unreadable`` (form bodies, the vendor's 400/415),
``refused`` (the whole domain check in one answer), ``answer`` / ``answer_headers`` (a 200-with-code
envelope, rate-limit headers on every answer), ``created_status`` (a create answered 200),
``idempotency_key`` / ``replay_answer`` (a key in the body or query, a replay's own answer),
``token_routes`` (a token endpoint with the vendor's own errors), ``extra_routes`` (reads the spec
does not describe) and :class:`Refusal`, which any hook or extra route raises to answer instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web
from multidict import MultiDict, MultiMapping

from octopus_crm.adapters.spec import CreateCall, FindCall, JsonToken, OAuth2ClientCredentials, VendorSpec
from octopus_crm_sandbox.envelope import caller, token_route
from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["Created", "Refusal", "SpecEnvelope", "SpecFake", "placed", "schema_problems"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Created = tuple[Any, dict[str, str]]  # a create's answer: the body (None: no content) and headers


def placed(path: Sequence[str | int], value: Any) -> Any:
    """A JSON value holding ``value`` at ``path`` (the inverse of :func:`octopus_crm.adapters.spec.at_path`)."""
    for key in reversed(path):
        value = [value] if isinstance(key, int) else {key: value}
    return value


def schema_problems(validator: jsonschema.protocols.Validator, body: Any) -> list[str]:
    """Each schema violation as ``path: message``, the way the vendors' 400 answers name fields."""
    return [f"{'/'.join(map(str, e.path)) or 'body'}: {e.message}" for e in validator.iter_errors(body)]


class Refusal(Exception):
    """Raised by any hook to answer ``response`` instead (a lookup query the vendor rejects)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class SpecEnvelope(FakeVendor):
    """Who may call, the token endpoints and ``endpoints()``, from ``spec``: the part of a fake every wire shares.

    :class:`SpecFake` adds the REST routes; :class:`~octopus_crm_sandbox.graphql.GraphQLFake` its one
    GraphQL path.
    """

    spec: ClassVar[VendorSpec]
    #: Where the spec's relative paths live on this fake (the ``/api`` of ``https://slack.com/api``).
    mount: ClassVar[str] = ""

    def __init__(self, *, accepted: Mapping[str, str], **kw: Any) -> None:
        super().__init__(**kw)
        #: Credential name (as the spec's auth schemes read it) → the value this fake accepts.
        self.accepted = dict(accepted)

    def endpoints(self) -> dict[str, Any]:
        """The ``config.endpoints`` pointing an integration here (the fakes listen on loopback)."""
        return {"baseUrl": f"{self.base_url}{self.mount}", "allowPrivateNetwork": True}

    def unauthorized(self, request: web.Request) -> web.Response:
        return web.json_response({"errors": ["unauthorized"]}, status=401)

    def caller(self, request: web.Request) -> str | None:
        """Who calls, under any of the spec's auth schemes whose credentials this fake accepts."""
        for scheme in self.spec.auth.values():
            who = caller(scheme, request, self.accepted, self)
            if who is not None:
                return who
        return None

    async def admit(self, request: web.Request) -> web.Response | None:
        """The refusal of a request the vendor would not serve (no valid caller), or None."""
        return self.unauthorized(request) if self.caller(request) is None else None

    def token_routes(self) -> list[web.RouteDef]:
        """The token endpoint of each token scheme (override for a vendor's own token errors)."""
        routes = []
        for scheme in self.spec.auth.values():
            if isinstance(scheme, (OAuth2ClientCredentials, JsonToken)):
                token = token_route(scheme, self.accepted, self)
                routes.append(web.route(token.method, self.mount + token.path, token.handler))
        return routes


class SpecFake(SpecEnvelope):
    """A fake whose routes and caller check come from ``spec``; subclasses state the vendor's domain."""

    #: Object type → validator of its create body (a fragment of the vendor's published spec).
    schemas: ClassVar[Mapping[str, jsonschema.protocols.Validator]] = {}
    created_status: ClassVar[int] = 201

    def __init__(self, *, accepted: Mapping[str, str], **kw: Any) -> None:
        super().__init__(accepted=accepted, **kw)
        #: Idempotency key → the record id its first create made (a replay answers that record).
        self.by_key: dict[str, str] = {}
        self.replays = 0

    # -- the vendor's shapes: override what differs --------------------------------------------

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        """Every JSON answer of the envelope goes out here (headers a vendor adds to all of them)."""
        return web.json_response(body, status=status, headers=headers)

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return self.answer({"errors": list(messages), **fields}, status=status)

    def answer_headers(self, request: web.Request) -> Mapping[str, str]:
        """Headers on each successful answer to ``request`` (rate-limit counters for its caller)."""
        return {}

    def unauthorized(self, request: web.Request) -> web.Response:
        return self.error(401, ["unauthorized"])

    def unreadable(self, object_type: str, status: int, message: str) -> web.Response:
        """A body that is not JSON: 415 for another content type, 400 for bad JSON."""
        if status == 415:
            return web.Response(status=415, text="Unsupported Media Type")
        return self.error(status, [message])

    def refused(self, object_type: str, body: Any, request: web.Request) -> web.Response | None:
        """The domain check of a create body: the schema, then :meth:`check`; None accepts it."""
        validator = self.schemas.get(object_type)
        problems = schema_problems(validator, body) if validator is not None else []
        if problems:
            return self.error(400, problems)
        messages, fields = self.check(object_type, body)
        return self.error(400, messages, **fields) if messages or fields else None

    def idempotency_key(self, call: CreateCall, body: Any, request: web.Request) -> str | None:
        """The create's idempotency key (the spec's header by default); a repeat replays the first."""
        return request.headers.get(call.idempotency_header) if call.idempotency_header else None

    def check(self, object_type: str, body: Any) -> tuple[list[str], dict[str, str]]:
        """Messages and per-field problems beyond the schema (what the vendor's server checks)."""
        return [], {}

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        """Keep a valid create: (the new record's id, the record)."""
        record_id = self.new_id()
        return record_id, {"id": record_id, "objectType": object_type, "body": body}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any], request: web.Request) -> Created:
        """The create answer: body and headers, the id where the adapter's spec reads it."""
        if call.id_header is not None:
            return None, {call.id_header: f"{self.base_url}/{call.path.strip('/')}({record_id})"}
        return placed(call.id_at, record_id), {}

    def created_answer(self, call: CreateCall, record_id: str, request: web.Request) -> web.Response:
        answer, headers = self.created(call, record_id, self.records[record_id], request)
        headers = {**self.answer_headers(request), **headers}
        if answer is None:
            return web.Response(status=204, headers=headers)
        return self.answer(answer, status=self.created_status, headers=headers)

    def replay_answer(self, call: CreateCall, record_id: str, request: web.Request) -> web.Response:
        """The answer to a repeated idempotency key: the first create's answer by default."""
        return self.created_answer(call, record_id, request)

    def matches(self, object_type: str, record: dict[str, Any], query: MultiMapping[str]) -> bool:
        """Whether a lookup finds ``record``: ``query`` holds the FindCall's parameters and path variables."""
        return False

    def found(self, object_type: str, record_id: str, record: dict[str, Any]) -> Any:
        """One record as the lookup lists it; the adapter reads its id like a create answer's."""
        return placed(self.spec.objects[object_type].id_at, record_id)

    def listing(self, find: FindCall, hits: list[Any], query: MultiMapping[str]) -> Any:
        """The lookup answer: the hits where the spec reads them (``query`` as :meth:`matches` gets it)."""
        return placed(find.items_at, hits)

    def whoami(self, who: str) -> Any:
        """The connection-test read's answer."""
        return {"ok": True, "user": who}

    def create_path(self, object_type: str, call: CreateCall) -> str:
        """The create route's path: the spec's, or the pattern of a path the adapter computes."""
        return call.path

    def extra_routes(self) -> list[web.RouteDef]:
        """Routes the spec does not describe (a removed API answering 410, an admin listing)."""
        return []

    # -- the envelope, from the spec -------------------------------------------------------------

    async def read_body(self, object_type: str, request: web.Request) -> Any:
        """The create's decoded body; raises :class:`Refusal` with :meth:`unreadable`'s answer."""
        if request.content_type != "application/json":
            raise Refusal(self.unreadable(object_type, 415, "Content-Type must be application/json"))
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise Refusal(self.unreadable(object_type, 400, f"Unexpected character in JSON body: {exc}")) from None

    def routes(self) -> list[web.RouteDef]:
        routes = self.token_routes()
        created: set[tuple[str, str]] = set()
        for object_type, call in self.spec.objects.items():
            path = self._path(self.create_path(object_type, call))
            if (call.method, path) not in created:  # two names for one table: the first one's route serves both
                created.add((call.method, path))
                routes.append(web.route(call.method, path, self._create_handler(object_type, call)))
        for object_type, find in self.spec.find.items():
            routes.append(web.route(find.method, self._path(find.path), self._find_handler(object_type, find)))
        if self.spec.test_call is not None:
            routes.append(web.route(self.spec.test_call.method, self._path(self.spec.test_call.path), self._whoami))
        return [web.route(r.method, r.path, _answering(r.handler)) for r in routes + self.extra_routes()]

    def _create_handler(self, object_type: str, call: CreateCall) -> Handler:
        async def create(request: web.Request) -> web.StreamResponse:
            if (denied := await self.admit(request)) is not None:
                return denied
            body = await self.read_body(object_type, request)
            refusal = self.refused(object_type, body, request)
            if refusal is not None:
                return refusal
            key = self.idempotency_key(call, body, request)
            if key and key in self.by_key:
                self.replays += 1
                return self.replay_answer(call, self.by_key[key], request)
            record_id, record = self.store(object_type, body, request)
            self.records[record_id] = record
            if key:
                self.by_key[key] = record_id
            return self.created_answer(call, record_id, request)

        return create

    def _find_handler(self, object_type: str, find: FindCall) -> Handler:
        async def lookup(request: web.Request) -> web.StreamResponse:
            if (denied := await self.admit(request)) is not None:
                return denied
            query = MultiDict(request.query)
            query.extend(request.match_info)  # ``/list/{list_id}/task``: the list is part of the lookup
            hits = [
                self.found(object_type, record_id, record)
                for record_id, record in self.records.items()
                if self.matches(object_type, record, query)
            ]
            return self.answer(self.listing(find, hits, query), headers=self.answer_headers(request))

        return lookup

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        if (denied := await self.admit(request)) is not None:
            return denied
        return self.answer(self.whoami(self.caller(request) or "anonymous"), headers=self.answer_headers(request))

    def _path(self, path: str) -> str:
        return self.mount + "/" + path.lstrip("/")  # ``{placeholders}`` are aiohttp's own route variables


def _answering(handler: Any) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except Refusal as refusal:
            return refusal.response
        return response

    return answer
