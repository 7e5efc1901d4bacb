"""The GraphQL kit: errors[] classification, budgets, and the fakes' SDL fragments."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from graphql import parse, validate

from octopus_crm.adapters import linear, monday
from octopus_crm.adapters.graphql import Budget, GraphQLErrors, body_number, epoch_ms_header, header_number
from octopus_crm.adapters.http import Response
from octopus_crm.adapters.spec import Errors
from octopus_crm.core.errors import (
    AuthError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm_sandbox.graphql import SPECS, fragment, load_schema

PUBLISHED = Path("/work/shared/vendor-specs")


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, headers or {}, orjson.dumps(body))


RULES = GraphQLErrors(quota=frozenset({"DAILY_LIMIT_EXCEEDED"}), rate_limited=frozenset({"RATELIMITED", "Slow"}))


@pytest.mark.parametrize(
    ("response", "expected", "code"),
    [
        (answer({"errors": [{"message": "m", "extensions": {"code": "RATELIMITED"}}]}, 400), RateLimitedError, None),
        (answer({"errors": [{"message": "m", "extensions": {"code": "slow"}}]}), RateLimitedError, "slow"),
        (answer({"errors": [{"message": "m", "extensions": {"code": "DAILY_LIMIT_EXCEEDED"}}]}), QuotaExhaustedError,
         None),
        (answer({"errors": [{"message": "m", "extensions": {"code": "UNAUTHENTICATED"}}]}, 400), AuthError, None),
        (answer({"errors": [{"message": "m", "extensions": {"code": "Odd", "status_code": 403}}]}), AuthError, "Odd"),
        (answer({"errors": [{"message": "m", "extensions": {"code": "Odd", "status_code": 503}}]}), RetryableError,
         None),
        (answer({"errors": [{"message": "m", "extensions": {"code": "Odd"}}]}, 401), TokenExpiredError, None),
        (answer({"errors": [{"message": "m"}]}), PermanentError, "graphql_error"),
        (answer({"error_code": "X", "status_code": 500, "error_message": "old", "errors": ["text"]}), RetryableError,
         "X"),
    ],
)  # fmt: skip
def test_errors_are_classified_by_code_then_by_the_stated_status(
    response: Response, expected: type[DeliveryError], code: str | None
) -> None:
    error = RULES.classify(response)
    assert type(error) is expected, repr(error)
    if code is not None:
        assert error.code == code


def test_a_clean_answer_is_no_error_and_a_wait_comes_from_the_error() -> None:
    assert RULES.classify(answer({"data": {"x": 1}})) is None
    assert RULES.classify(answer({"data": None, "errors": []})) is None
    limited = RULES.classify(
        answer({"errors": [{"message": "m", "extensions": {"code": "Slow", "retry_in_seconds": 7}}]})
    )
    assert limited is not None and limited.retry_after == 7.0
    header = RULES.classify(answer({"errors": [{"extensions": {"code": "Slow"}}]}, 429, {"Retry-After": "3"}))
    assert header is not None and header.retry_after == 3.0
    quota = RULES.classify(answer({"errors": [{"extensions": {"code": "DAILY_LIMIT_EXCEEDED"}}]}))
    assert quota is not None and quota.retry_after == 3600.0


def test_spec_errors_read_errors_before_the_status_only_for_graphql() -> None:
    ratelimited = answer({"errors": [{"message": "m", "extensions": {"code": "RATELIMITED"}}]}, 400)
    assert isinstance(Errors(graphql=True).classify(ratelimited), RateLimitedError)
    assert type(Errors().classify(ratelimited)) is PermanentError  # a REST vendor's 400 stays a 400


def test_a_budget_pauses_when_the_next_calls_would_overspend_it() -> None:
    reset_ms = str(int((time.time() + 120) * 1000))
    complexity = Budget(
        "complexity",
        header_number("X-Left"),
        epoch_ms_header("X-Reset"),
        cost=header_number("X-Cost"),
        limit=header_number("X-Limit"),
        period=3600.0,
    )
    assert complexity.pause(answer({}, 200, {"X-Left": "100", "X-Cost": "10", "X-Reset": reset_ms})) is None
    refill = complexity.pause(answer({}, 200, {"X-Left": "5", "X-Cost": "10", "X-Reset": reset_ms, "X-Limit": "3600"}))
    assert refill == pytest.approx(15.0)  # 15 points short, refilled at one a second
    capped = complexity.pause(answer({}, 200, {"X-Left": "0", "X-Cost": "10", "X-Reset": reset_ms, "X-Limit": "1"}))
    assert capped is not None and 110 < capped <= 120  # never past the reset
    assert complexity.pause(answer({})) is None  # a vendor that reports nothing
    minute = Budget("minute", body_number("c", "after"), body_number("c", "reset"), cost=body_number("c", "query"))
    assert minute.pause(answer({"c": {"after": 15_000, "query": 10_000, "reset": 42}})) == 42.0


def test_fragment_keeps_what_the_documents_use_and_whole_inputs() -> None:
    sdl = """
    type Query { a(filter: Filter): A  b: String }
    type A { x: Int  y: B  z: String }
    type B { w: Int }
    input Filter { name: String  kind: Kind }
    enum Kind { ONE TWO }
    """
    out = fragment(sdl, ["query { a(filter: {kind: ONE}) { x } }"])
    assert "b: String" not in out and "z: String" not in out and "type B" not in out
    assert "input Filter" in out and "enum Kind" in out and "x: Int" in out


@pytest.mark.parametrize("vendor", [linear, monday], ids=["linear", "monday"])
def test_every_document_validates_against_the_saved_fragment(vendor: Any) -> None:
    schema = load_schema(f"{vendor.__name__.rsplit('.', 1)[-1]}.graphql")
    for document in (vendor.CREATE, vendor.LOOKUP, vendor.PROBE):
        assert validate(schema, parse(document)) == []


@pytest.mark.parametrize("vendor", [linear, monday], ids=["linear", "monday"])
def test_the_saved_fragment_is_the_published_sdl_cut_to_our_documents(vendor: Any) -> None:
    name = vendor.__name__.rsplit(".", 1)[-1]
    published = PUBLISHED / name / "schema.graphql"
    if not published.exists():
        pytest.skip("the published SDLs are not on this machine")
    saved = (SPECS / f"{name}.graphql").read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in saved.splitlines() if line.startswith("#")) + "\n"
    cut = fragment(published.read_text(encoding="utf-8"), [vendor.CREATE, vendor.LOOKUP, vendor.PROBE], header)
    assert cut == saved
