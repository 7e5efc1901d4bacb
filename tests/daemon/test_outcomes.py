"""A result is built as its JSON dict, not as a ``SyncResult``: the bytes the reporter publishes
must equal what the model path published (``SyncResult(...)``, ``model_dump(mode="json",
by_alias=True, exclude_none=True)``, the vendor fields scrubbed, ``orjson.dumps``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.base import Delivered
from octopus_crm.core.contracts import (
    ClassifiedMessage,
    ResultError,
    ResultSource,
    SyncResult,
    SyncStatus,
)
from octopus_crm.core.errors import ErrorInfo
from octopus_crm.core.redaction import redact, redact_value, register_secret
from octopus_crm.daemon import outcomes
from octopus_crm.daemon import sync_status as sync_status_module
from octopus_crm.daemon.outcomes import _bounded, _completed_at, failed, finished, result, sync_result
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.reporting import _FROM_VENDOR, _outcome, _scrubbed
from octopus_crm.daemon.retrying import AttemptRecord, TargetSpec
from octopus_crm.daemon.route import RouteState
from octopus_crm.daemon.sync_status import StatusBook
from octopus_crm.strategies.routing import Skip
from tests.events import make_event

SECRET = "s3cr3t-outcomes-9f2c"
RECEIVED = 1_767_000_000.25
PRIMARY = TargetSpec(integration_id="primary", integration_type="webhook", object_type="message")
BACKUP = TargetSpec(integration_id="backup", integration_type="jira", object_type="issue")
ERROR = ErrorInfo("permanent", "http_400", "bad request: 字段无效 Authorization: Bearer abc.def")


def _model_bytes(model: SyncResult) -> bytes:
    """The reporter's serialisation before results were dicts."""
    data = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name in _FROM_VENDOR:
        if name in data:
            data[name] = redact_value(data[name])
    return orjson.dumps(data)


def _model(
    state: RouteState,
    event: ClassifiedMessage,
    status: SyncStatus,
    target: TargetSpec,
    now: float,
    delivered: Delivered | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> SyncResult:
    """``outcomes.result`` as it was, with ``now`` for the clock."""
    return SyncResult(
        eventId=event.eventId,
        messageId=event.messageId,
        tenantId=event.tenantId,
        integrationId=target.integration_id,
        integrationType=target.integration_type,
        objectType=target.object_type,
        strategy=state.strategy,
        status=status,
        externalId=delivered.external_id if delivered else None,
        externalUrl=delivered.external_url if delivered else None,
        attempts=len(state.history),
        latencyMs=round((now - state.received_at) * 1000, 3),
        error=ResultError.model_validate(error.as_dict()) if error else None,
        reason=reason,
        fallbackFrom=state.chain[0].integration_id if status == "fallback" else None,
        detail=_bounded(detail) if detail else None,
        source=ResultSource(topic=state.source.topic, partition=state.source.partition, offset=state.source.offset),
        completedAt=datetime.fromtimestamp(now, UTC),
    )


def _state(attempts: int = 1) -> tuple[RouteState, ClassifiedMessage]:
    event = ClassifiedMessage.model_validate(make_event(3, tenant="t-7"))
    record = InboundRecord("crm.input", 5, 1234567, b"k0", b"{}")
    state = RouteState(event.eventId, record, RECEIVED, "primary_backup", (PRIMARY, BACKUP))
    state.history = [AttemptRecord(integration="primary", at=RECEIVED + i) for i in range(attempts)]
    return state, event


WIDE_DETAIL: dict[Any, Any] = {
    "refused": ["a@example.com", "b@example.com"],
    "nested": {"k": [1, 2.5, None, True], "名": "值"},
    "none": None,
    "flag": False,
    "count": 3,
    "ratio": 0.1 + 0.2,
    "nan": float("nan"),
    "long": "x" * 1500,
    7: "int key",
    "k" * 150: "long key",
    "api_key": "plain-looking",
    "echo": f"the vendor said {SECRET} and https://bot:pw@example.com/x?token=abc",
    **{f"extra{i}": i for i in range(20)},
}

CASES: list[tuple[str, SyncStatus, TargetSpec, dict[str, Any]]] = [
    ("succeeded", "succeeded", PRIMARY, {"delivered": Delivered("ID-1", "https://crm.example.com/r/ID-1")}),
    ("duplicate, no url", "duplicate", PRIMARY, {"delivered": Delivered("ID-2")}),
    ("fallback with error", "fallback", BACKUP, {"delivered": Delivered("B-9", None, {"via": "api"}), "error": ERROR}),
    ("failed with error", "failed", PRIMARY, {"error": ErrorInfo("retryable", "timeout", "no answer in 10 s")}),
    ("failed, sync_back gave up", "failed", PRIMARY, {"error": ERROR, "reason": "sync_back to primary gave up"}),
    (
        "sync_back reason",
        "succeeded",
        PRIMARY,
        {"delivered": Delivered("P-1"), "reason": "sync_back: delivered to the primary after fallback to backup"},
    ),
    ("wide detail", "succeeded", PRIMARY, {"delivered": Delivered("ID-3", None, WIDE_DETAIL)}),
    (
        "unicode",
        "succeeded",
        BACKUP,
        {"delivered": Delivered("工单-42 🚀", "https://例子.example/工单/42"), "detail": {"标题": "客户投诉 ✓"}},
    ),
    (
        "secrets in vendor fields",
        "failed",
        PRIMARY,
        {
            "delivered": Delivered(f"id-{SECRET}", f"https://user:{SECRET}@crm.example.com/r?sig=zzz&x=1"),
            "error": ErrorInfo("auth", "http_401", f"token {SECRET} rejected; password=hunter22"),
            "reason": f"echo {SECRET}",
            "detail": {"authorization": "Bearer q", "body": f'{{"access_token": "{SECRET}"}}'},
        },
    ),
]


@pytest.mark.parametrize("now", [RECEIVED + 0.0123456, 1_767_000_001.0, RECEIVED + 86_400.000001])
@pytest.mark.parametrize(("name", "status", "target", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_a_result_publishes_the_bytes_the_model_did(
    monkeypatch: pytest.MonkeyPatch,
    now: float,
    name: str,
    status: SyncStatus,
    target: TargetSpec,
    kwargs: dict[str, Any],
) -> None:
    register_secret(SECRET)
    monkeypatch.setattr(outcomes, "time", SimpleNamespace(time=lambda: now))
    state, event = _state(attempts=2 if status == "fallback" else 1)
    args = {**kwargs}
    if "delivered" in args and "detail" not in args:
        args["detail"] = args["delivered"].detail
    built = result(state, event, status, target, **args)
    model = _model(state, event, status, target, now, **args)
    assert _scrubbed(built) == _model_bytes(model)
    assert SECRET.encode() not in _scrubbed(built)
    assert _outcome(built) == {
        "integration": model.integrationId,
        "object": model.objectType,
        "status": model.status,
        **({"externalId": redact(model.externalId)} if model.externalId else {}),
        **({"error": redact(model.error.code)} if model.error else {}),
        **({"detail": redact_value(model.detail)} if model.detail else {}),
    }  # the canonical line scrubs what a vendor wrote


@pytest.mark.parametrize(
    "skip",
    [
        Skip("jira-main", "jira", "no rule for category 客户投诉", "issue"),
        Skip(None, None, "no integration enabled for tenant"),
    ],
)
def test_a_skip_publishes_the_bytes_the_model_did(monkeypatch: pytest.MonkeyPatch, skip: Skip) -> None:
    now = RECEIVED + 0.5
    monkeypatch.setattr(outcomes, "time", SimpleNamespace(time=lambda: now))
    state, event = _state()
    built = sync_result(event, "fanout", "skipped", skip, state.source, RECEIVED, reason=skip.reason)
    model = SyncResult(
        eventId=event.eventId,
        messageId=event.messageId,
        tenantId=event.tenantId,
        integrationId=skip.integration_id,
        integrationType=skip.integration_type,
        objectType=skip.object_type,
        strategy="fanout",
        status="skipped",
        reason=skip.reason,
        source=ResultSource(topic="crm.input", partition=5, offset=1234567),
        latencyMs=round((now - RECEIVED) * 1000, 3),
        completedAt=datetime.fromtimestamp(now, UTC),
    )
    assert _scrubbed(built) == _model_bytes(model)


def test_the_result_is_valid_and_not_changed_by_scrubbing() -> None:
    state, event = _state()
    built = result(state, event, "failed", PRIMARY, error=ErrorInfo("auth", "http_401", f"bad {SECRET}"))
    register_secret(SECRET)
    before = orjson.dumps(built)
    _scrubbed(built)
    assert orjson.dumps(built) == before  # the status book and the log line read it after
    assert SyncResult.model_validate(built).completedAt.tzinfo is not None


def test_the_status_book_keeps_epochs_and_answers_iso_times(monkeypatch: pytest.MonkeyPatch) -> None:
    state, event = _state()
    target = TargetSpec(integration_id="book-test", integration_type="webhook", object_type="message")
    ok = result(state, event, "succeeded", target, Delivered("ID-1", "https://crm.example.com/r/ID-1"))
    bad = result(state, event, "failed", target, error=ErrorInfo("auth", "http_401", f"bad {SECRET}"))
    register_secret(SECRET)
    book = StatusBook()
    monkeypatch.setattr(sync_status_module, "BOOK", book)
    monkeypatch.setattr(sync_status_module, "time", SimpleNamespace(time=lambda: 1_767_000_000.75))
    book.published([ok, bad])
    answer = sync_status_module.sync_status("book-test", None, None)
    assert answer["lastSuccess"] == {
        "at": "2025-12-29T09:20:00Z",
        "eventId": event.eventId,
        "externalId": "ID-1",
        "externalUrl": "https://crm.example.com/r/ID-1",
    }
    assert answer["lastError"] == {
        "at": "2025-12-29T09:20:00Z",
        "eventId": event.eventId,
        "error": {"class": "auth", "code": "http_401", "message": "bad [REDACTED]"},
    }
    assert book.last_success["book-test"]["at"] == 1_767_000_000.75  # formatted on read only


@pytest.mark.parametrize(
    "now",
    [
        1_767_000_000.0,
        1_767_000_000.25,
        1_767_000_000.0000005,  # micros rounded half to even, as fromtimestamp does
        1_767_000_000.0000015,
        1_767_000_000.9999995,  # rounds up into the next second
        1_767_000_000.9999999,
        1_767_000_059.999_999_7,  # ... and the next minute
    ],
)
def test_completed_at_is_pydantics_form_of_the_datetime(now: float) -> None:
    expected = SyncResult.model_validate(
        {**_minimal_result(), "completedAt": datetime.fromtimestamp(now, UTC)}
    ).model_dump(mode="json")["completedAt"]
    assert _completed_at(now) == expected == datetime.fromtimestamp(now, UTC).isoformat()[:-6] + "Z"
    assert _completed_at(now) == expected  # the second formatted once, then reused


def _minimal_result() -> dict[str, Any]:
    return {
        "eventId": "e",
        "messageId": "m",
        "tenantId": "t",
        "integrationId": None,
        "integrationType": None,
        "objectType": None,
        "strategy": "primary_backup",
        "status": "succeeded",
        "attempts": 1,
        "latencyMs": 1.0,
        "source": {"topic": "crm.input", "partition": 0, "offset": 1},
    }


@pytest.mark.parametrize(
    ("index", "duplicate", "status"), [(0, False, "succeeded"), (1, False, "fallback"), (0, True, "duplicate")]
)
def test_finished_is_the_result_of_its_route(
    monkeypatch: pytest.MonkeyPatch, index: int, duplicate: bool, status: SyncStatus
) -> None:
    monkeypatch.setattr(outcomes, "time", SimpleNamespace(time=lambda: RECEIVED + 0.75))
    state, event = _state(attempts=2)
    state.index = index
    state.first_error = ERROR
    delivered = Delivered("ID-7", "https://crm.example.com/r/ID-7", {"via": "api"})
    (built,) = finished(state, event, delivered, duplicate=duplicate).results
    expected = result(
        state,
        event,
        status,
        state.target,
        delivered,
        error=ERROR if status == "fallback" else None,
        detail=delivered.detail,
    )
    assert orjson.dumps(built) == orjson.dumps(expected)


# finished() builds its common results (first target, no sync-back, no detail) as one literal;
# the general path (``result``) is what it built before: the same bytes, scrubbed and not, the
# same canonical-line entry and the same status-book answers, for every shape.
SHAPES: list[tuple[str, int, bool, bool, Delivered]] = [
    # (name, index, duplicate, sync_back, delivered)
    ("succeeded", 0, False, False, Delivered("ID-1", "https://crm.example.com/r/ID-1")),
    ("succeeded, no url", 0, False, False, Delivered("ID-2")),
    ("duplicate", 0, True, False, Delivered("ID-3", "https://crm.example.com/r/ID-3")),
    ("duplicate, no url", 0, True, False, Delivered("ID-4")),
    ("fallback with error", 1, False, False, Delivered("B-9", None, {"via": "api"})),
    ("fallback, duplicate", 1, True, False, Delivered("B-10")),
    ("sync_back", 0, False, True, Delivered("P-1", "https://crm.example.com/r/P-1")),
    ("with detail", 0, False, False, Delivered("ID-5", None, WIDE_DETAIL)),
    (
        "secret in the vendor's id and url",
        0,
        False,
        False,
        Delivered(f"id-{SECRET}", f"https://u:{SECRET}@x.io/r?sig=z"),
    ),
    ("unicode", 0, False, False, Delivered("工单-42 🚀", "https://例子.example/工单/42")),
]


@pytest.mark.parametrize(
    "error",
    [ErrorInfo("retryable", "timeout", "no answer in 10 s"), ErrorInfo("auth", "http_401", f"token {SECRET} rejected")],
)
def test_a_failed_result_is_published_and_booked_with_its_error_scrubbed(
    monkeypatch: pytest.MonkeyPatch, error: ErrorInfo
) -> None:
    register_secret(SECRET)
    now = RECEIVED + 0.5
    monkeypatch.setattr(outcomes, "time", SimpleNamespace(time=lambda: now))
    state, event = _state(attempts=2)
    state.first_error = error
    (built,) = failed(state, event).results
    model = _model(state, event, "failed", PRIMARY, now, error=error)
    assert _scrubbed(built) == _model_bytes(model)
    assert SECRET.encode() not in _scrubbed(built)
    book = StatusBook()
    book.scheduled(event.eventId, "primary")
    book.published([built])
    assert book.pending("primary") == 0
    assert book.last_error["primary"]["error"] == redact_value(error.as_dict())
    assert "primary" not in book.last_success
