"""The GraphQL half of a vendor fake: the vendor's SDL, validation with graphql-core, execution.

A GraphQL fake answers on one path. :class:`GraphQLFake` parses each request's ``query``, validates
it against the vendor's schema (a fragment of the published SDL saved under ``specs/``, made by
:func:`fragment`), coerces its ``variables`` the way the vendor's server does, and executes it with
the fake's resolvers (root field name → method). Who may call comes from the adapter's spec
(:class:`~octopus_crm_sandbox.specfake.SpecEnvelope`). What a vendor does differently — the status
of an error answer, its ``extensions``, its headers — is the subclass's :meth:`GraphQLFake.answer`.
Resolvers raise :class:`graphql.GraphQLError` with the vendor's ``extensions``.

:func:`fragment` keeps, of a published SDL, the root fields the adapter's documents use, every field
those documents select, and whole argument input types and enums (variables are checked in full): a
document that selects anything else fails validation, as it would where the field is missing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import orjson
from aiohttp import web
from graphql import (
    ExecutionResult,
    GraphQLEnumType,
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    build_schema,
    execute,
    get_named_type,
    parse,
    print_type,
    validate,
    visit,
)
from graphql.language import FieldNode

from octopus_crm_sandbox.specfake import SpecEnvelope

__all__ = ["GraphQLError", "GraphQLFake", "Resolver", "fragment", "load_schema"]

SPECS = Path(__file__).resolve().parent / "specs"


@functools.cache
def load_schema(name: str) -> GraphQLSchema:
    """A saved SDL fragment (``specs/<name>``), built once per process."""
    return build_schema((SPECS / name).read_text(encoding="utf-8"))


def fragment(sdl: str, documents: Iterable[str], header: str = "") -> str:
    """The part of ``sdl`` that ``documents`` use, as SDL (see the module docstring)."""
    schema = build_schema(sdl)
    used: dict[str, set[str]] = {}
    type_info = TypeInfo(schema)

    class Collect(Visitor):
        def enter_field(self, node: FieldNode, *_: Any) -> None:
            parent = type_info.get_parent_type()
            if parent is not None and type_info.get_field_def() is not None:
                used.setdefault(parent.name, set()).add(node.name.value)

    for document in documents:
        visit(parse(document), TypeInfoVisitor(type_info, Collect()))
    keep: dict[str, GraphQLNamedType] = {}

    def need(named: GraphQLNamedType) -> None:
        if named.name in keep or named.name.startswith("__"):
            return
        if isinstance(named, GraphQLObjectType):
            fields = {n: f for n, f in named.fields.items() if n in used.get(named.name, set())}
            keep[named.name] = GraphQLObjectType(named.name, fields, description=named.description)
            for f in fields.values():
                need(get_named_type(f.type))
                for arg in f.args.values():
                    need(get_named_type(arg.type))
        elif isinstance(named, GraphQLInputObjectType):
            keep[named.name] = named
            for input_field in named.fields.values():
                need(get_named_type(input_field.type))
        elif isinstance(named, GraphQLEnumType) or named.name not in ("String", "Int", "Float", "Boolean", "ID"):
            keep[named.name] = named

    for root in (schema.query_type, schema.mutation_type):
        if root is not None and root.name in used:
            need(root)
    return header + "\n\n".join(print_type(t) for t in keep.values()) + "\n"


Resolver = Callable[..., Any]


class GraphQLFake(SpecEnvelope):
    """A fake answering GraphQL on :attr:`mount`, validating against :attr:`schema_file`.

    Who may call and the token endpoints come from the adapter's ``spec`` (:class:`SpecEnvelope`).
    """

    schema_file: ClassVar[str]
    mount: ClassVar[str] = "/graphql"

    def __init__(self, *, accepted: Mapping[str, str], **kw: Any) -> None:
        super().__init__(accepted=accepted, **kw)
        self.schema = load_schema(self.schema_file)
        #: Every operation that validated: (root field, variables), in arrival order.
        self.operations: list[tuple[str, dict[str, Any]]] = []

    def routes(self) -> list[web.RouteDef]:
        return [*self.token_routes(), web.post(self.mount, self.graphql)]

    def limited_paths(self) -> tuple[str, ...]:
        return (self.mount,)

    def resolvers(self) -> dict[str, Resolver]:
        """Root field name → ``method(info, **arguments)``."""
        raise NotImplementedError

    def answer(self, result: dict[str, Any], request_error: bool) -> web.Response:
        """The HTTP answer for an execution result (``request_error``: nothing ran)."""
        return web.json_response(result, status=400 if request_error else 200)

    def error(self, message: str, **extensions: Any) -> dict[str, Any]:
        return {"message": message, "extensions": extensions}

    async def graphql(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if who is None:
            return self.unauthorized(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self.answer({"errors": [self.error("Body is not valid JSON", code="BAD_REQUEST")]}, True)
        query = body.get("query") if isinstance(body, dict) else None
        variables = body.get("variables") or {} if isinstance(body, dict) else {}
        if not isinstance(query, str) or not isinstance(variables, dict):
            return self.answer({"errors": [self.error("Must provide query string.", code="BAD_REQUEST")]}, True)
        try:
            document = parse(query)
        except GraphQLError as exc:
            return self.answer({"errors": [self.error(exc.message, code="GRAPHQL_PARSE_FAILED")]}, True)
        problems = validate(self.schema, document)
        if problems:
            errors = [self.error(p.message, code="GRAPHQL_VALIDATION_FAILED") for p in problems]
            return self.answer({"errors": errors}, True)
        context = {"request": request, "caller": who, "query": query}
        result = execute(
            self.schema,
            document,
            variable_values=variables,
            context_value=context,
            field_resolver=self._resolve,
        )
        if not isinstance(result, ExecutionResult):
            raise TypeError("the fake's resolvers are synchronous")
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            errors = [self.error(e.message, code="BAD_USER_INPUT") for e in result.errors]
            return self.answer({"errors": errors}, True)  # variables did not coerce: nothing ran
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        return self.answer(out, False)

    def _resolve(self, source: Any, info: Any, **arguments: Any) -> Any:
        if info.parent_type in (self.schema.query_type, self.schema.mutation_type):
            resolver = self.resolvers().get(info.field_name)
            if resolver is None:
                raise GraphQLError(f"the fake does not serve {info.field_name}", extensions={"code": "NOT_SERVED"})
            self.operations.append((info.field_name, arguments))
            return resolver(info, **arguments)
        if isinstance(source, dict):
            return source.get(info.field_name)
        return getattr(source, info.field_name, None)
