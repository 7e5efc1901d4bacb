"""A fake built from the adapter's :class:`~adapters.spec.VendorSpec`: the envelope stated once.

From the spec come who may call (each ``authType``'s scheme, read from the wire by
:func:`~octopus_crm_sandbox.envelope.caller`), the token endpoint of token schemes, one create route
per object type (its method and path; the new id placed where the spec reads it — a body path or a
response header), the lookup route of each :class:`~adapters.spec.FindCall` (its result list where
the spec reads it) and the connection-test route. The kit's envelope adds the 429 window, latency
and injected faults. A vendor's fake keeps only its domain: the credentials it accepts, its error
body, the JSON Schema of each create body (from the vendor's published spec) and the checks the
vendor makes beyond it, what a created record looks like, and how a lookup matches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

import jsonschema
import orjson
from aiohttp import web

from adapters.spec import CreateCall, FindCall, JsonToken, OAuth2ClientCredentials, VendorSpec
from octopus_crm_sandbox.envelope import caller, token_route
from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["SpecFake", "placed", "schema_problems"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def placed(path: Sequence[str | int], value: Any) -> Any:
    """A JSON value holding ``value`` at ``path`` (the inverse of :func:`adapters.spec.at_path`)."""
    for key in reversed(path):
        value = [value] if isinstance(key, int) else {key: value}
    return value


def schema_problems(validator: jsonschema.protocols.Validator, body: Any) -> list[str]:
    """Each schema violation as ``path: message``, the way the vendors' 400 answers name fields."""
    return [f"{'/'.join(map(str, e.path)) or 'body'}: {e.message}" for e in validator.iter_errors(body)]


class SpecFake(FakeVendor):
    """A fake whose routes and caller check come from ``spec``; subclasses state the vendor's domain."""

    spec: ClassVar[VendorSpec]
    #: Object type → validator of its create body (a fragment of the vendor's published spec).
    schemas: ClassVar[Mapping[str, jsonschema.protocols.Validator]] = {}
    created_status: ClassVar[int] = 201

    def __init__(self, *, accepted: Mapping[str, str], **kw: Any) -> None:
        super().__init__(**kw)
        #: Credential name (as the spec's auth schemes read it) → the value this fake accepts.
        self.accepted = dict(accepted)

    # -- the vendor's shapes: override what differs --------------------------------------------

    def error(self, status: int, messages: Sequence[str], **fields: str) -> web.Response:
        return web.json_response({"errors": list(messages), **fields}, status=status)

    def unauthorized(self) -> web.Response:
        return self.error(401, ["unauthorized"])

    def check(self, object_type: str, body: Any) -> tuple[list[str], dict[str, str]]:
        """Messages and per-field problems beyond the schema (what the vendor's server checks)."""
        return [], {}

    def store(self, object_type: str, body: Any, request: web.Request) -> tuple[str, dict[str, Any]]:
        """Keep a valid create: (the new record's id, the record)."""
        record_id = self.new_id()
        return record_id, {"id": record_id, "objectType": object_type, "body": body}

    def created(self, call: CreateCall, record_id: str, record: dict[str, Any]) -> tuple[Any, dict[str, str]]:
        """The create answer: body and headers, the id where the adapter's spec reads it."""
        if call.id_header is not None:
            return None, {call.id_header: f"{self.base_url}/{call.path.strip('/')}({record_id})"}
        return placed(call.id_at, record_id), {}

    def matches(self, object_type: str, record: dict[str, Any], query: Mapping[str, str]) -> bool:
        """Whether a lookup (the spec's FindCall parameters) finds ``record``."""
        return False

    def found(self, object_type: str, record_id: str, record: dict[str, Any]) -> Any:
        """One record as the lookup lists it; the adapter reads its id like a create answer's."""
        return placed(self.spec.objects[object_type].id_at, record_id)

    def whoami(self, who: str) -> Any:
        """The connection-test read's answer."""
        return {"ok": True, "user": who}

    def extra_routes(self) -> list[web.RouteDef]:
        """Routes the spec does not describe (a removed API answering 410, an admin listing)."""
        return []

    # -- the envelope, from the spec -------------------------------------------------------------

    def caller(self, request: web.Request) -> str | None:
        """Who calls, under any of the spec's auth schemes whose credentials this fake accepts."""
        for scheme in self.spec.auth.values():
            who = caller(scheme, request, self.accepted, self)
            if who is not None:
                return who
        return None

    def routes(self) -> list[web.RouteDef]:
        routes = [
            token_route(scheme, self.accepted, self)
            for scheme in self.spec.auth.values()
            if isinstance(scheme, (OAuth2ClientCredentials, JsonToken))
        ]
        for object_type, call in self.spec.objects.items():
            routes.append(web.route(call.method, _route_path(call.path), self._create_handler(object_type, call)))
        for object_type, find in self.spec.find.items():
            routes.append(web.route(find.method, _route_path(find.path), self._find_handler(object_type, find)))
        if self.spec.test_call is not None:
            routes.append(web.route(self.spec.test_call.method, _route_path(self.spec.test_call.path), self._whoami))
        return [*routes, *self.extra_routes()]

    def _create_handler(self, object_type: str, call: CreateCall) -> Handler:
        async def create(request: web.Request) -> web.StreamResponse:
            if self.caller(request) is None:
                return self.unauthorized()
            if request.content_type != "application/json":
                return web.Response(status=415, text="Unsupported Media Type")
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                return self.error(400, [f"Unexpected character in JSON body: {exc}"])
            validator = self.schemas.get(object_type)
            problems = schema_problems(validator, body) if validator is not None else []
            if problems:
                return self.error(400, problems)
            messages, fields = self.check(object_type, body)
            if messages or fields:
                return self.error(400, messages, **fields)
            record_id, record = self.store(object_type, body, request)
            self.records[record_id] = record
            answer, headers = self.created(call, record_id, record)
            if answer is None:
                return web.Response(status=204, headers=headers)
            return web.json_response(answer, status=self.created_status, headers=headers)

        return create

    def _find_handler(self, object_type: str, find: FindCall) -> Handler:
        async def lookup(request: web.Request) -> web.StreamResponse:
            if self.caller(request) is None:
                return self.unauthorized()
            hits = [
                self.found(object_type, record_id, record)
                for record_id, record in self.records.items()
                if self.matches(object_type, record, request.query)
            ]
            return web.json_response(placed(find.items_at, hits))

        return lookup

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        who = self.caller(request)
        return self.unauthorized() if who is None else web.json_response(self.whoami(who))


def _route_path(path: str) -> str:
    return "/" + path.lstrip("/")  # ``{placeholders}`` are aiohttp's own route variables
