"""The retry record's wire form: what the record built from a route encodes is, byte for byte,
what the pydantic model it replaced encoded, each decodes the other's bytes, and a record that
is not ours ends in the DLQ as an invalid retry record."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, Field

from octopus_crm.core.errors import ErrorInfo
from octopus_crm.core.redaction import REDACTED, redact_value, register_secret
from octopus_crm.core.wire import DeadLetterClass, Header
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.reporting import Reporter
from octopus_crm.daemon.retry_handler import RetryHandler
from octopus_crm.daemon.retrying import AttemptRecord, InvalidRetryRecord, RetryKind, RetryRecord, TargetSpec
from octopus_crm.daemon.route import RouteState
from octopus_crm.strategies.routing import Route, Target
from tests.events import encode, make_event
from tests.kafka import TestBroker


class OldRetryRecord(BaseModel):
    """The retry record as the pydantic model it was (wire format v1)."""

    v: int = 1
    kind: RetryKind
    event_id: str
    key: str | None = None
    value: str
    headers: list[tuple[str, str]] = Field(default_factory=list)
    source_topic: str
    source_partition: int
    source_offset: int
    received_at: float
    strategy: str
    chain: list[TargetSpec]
    index: int = 0
    attempt: int = 0
    due: float = Field(default_factory=time.time)
    history: list[AttemptRecord] = Field(default_factory=list)
    first_error: dict[str, str] | None = None
    sync_back: bool = False
    sync_back_from: str | None = None

    def encode(self, *, scrub: bool) -> bytes:
        data = self.model_dump(mode="json")
        if scrub:
            for attempt in data["history"]:
                if attempt["error"] is not None:
                    attempt["error"] = redact_value(attempt["error"])
            if data["first_error"]:
                data["first_error"] = redact_value(data["first_error"])
        return orjson.dumps(data)


TOKEN = f"retry-secret-{time.time_ns()}"
EVENT = encode(make_event(1, content="您好 plain text"))
PRIMARY = Target("crm", "salesforce", "lead", {"owner": "u1", "tags": ["a", "b"]})
BACKUP = Target("hook", "webhook", "message", variant="v2")


def _state(
    *, key: bytes | None, headers: tuple[tuple[str, bytes], ...], history: int, error: bool, sync_back: bool
) -> RouteState:
    record = InboundRecord("in", 3, 41, key, EVENT, headers)
    route = Route((PRIMARY, BACKUP), sync_back)
    state = RouteState.fresh_route("e-1", record, 1_700_000_000.25, "primary_backup", route)
    failure = {"class": "retryable", "code": "http_503", "message": f"down, token {TOKEN}"}
    odd = {"class": "auth", "code": "401", "message": "no", "api_token": "plain"}  # a shape not ours
    for i in range(history):
        state.history.append(AttemptRecord(integration="crm", at=1_700_000_001.5 + i, error=failure if i else odd))
    state.history.append(AttemptRecord(integration="crm", at=1_700_000_009.0))
    if error:
        state.note(ErrorInfo("retryable", "timeout", f"no answer {TOKEN}"))
        state.next_target()
        state.sync_back_from = "crm"
    state.attempt = history
    return state


CASES = [
    {
        "key": b"t:c1",
        "headers": (("trace", b"t-1"), ("octopus-due-at", b"1")),
        "history": 2,
        "error": True,
        "sync_back": False,
    },
    {"key": None, "headers": (), "history": 0, "error": False, "sync_back": False},
    {"key": b"", "headers": (("bin", bytes(range(256))),), "history": 1, "error": False, "sync_back": True},
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["backlog", "retry", "park", "sync_back"])
def test_the_encoding_is_the_old_models_byte_for_byte_and_each_decodes_the_other(
    case: dict[str, Any], kind: RetryKind
) -> None:
    register_secret(TOKEN)
    state = _state(**case)
    record = state.to_retry(kind, 1_700_000_060.125)
    old = OldRetryRecord.model_validate(record, from_attributes=True)
    assert record.encode() == old.encode(scrub=False)
    assert record.encode_scrubbed() == old.encode(scrub=True) == record.scrubbed().encode()
    assert TOKEN.encode() not in record.encode_scrubbed()
    if case["history"]:
        assert b'"api_token":"' + REDACTED.encode() + b'"' in record.encode_scrubbed()
    assert RetryRecord.decode(old.encode(scrub=False)) == record
    assert OldRetryRecord.model_validate_json(record.encode()) == old
    back = RouteState.from_retry(RetryRecord.decode(record.encode()))
    assert back.source == InboundRecord("in", 3, 41, case["key"], EVENT, case["headers"][:1])
    assert back.to_retry(kind, 1_700_000_060.125) == record
    assert back.chain == state.chain and back.chain[1] is TargetSpec.of(BACKUP)  # the shared spec


def test_a_record_built_by_hand_encodes_as_the_old_model_did() -> None:
    fields: dict[str, Any] = {
        "kind": "retry",
        "event_id": "e",
        "value": "{}",
        "source_topic": "in",
        "source_partition": 0,
        "source_offset": 1,
        "received_at": 2,  # an int where the model kept a float
        "strategy": "s",
        "chain": [TargetSpec(integration_id="a", integration_type="webhook", object_type="message")],
        "due": 5,
    }
    assert RetryRecord(**fields).encode() == OldRetryRecord(**fields).encode(scrub=False)


# -- records that are not ours ---------------------------------------------------------------


def _raw(**change: Any) -> bytes:
    data = orjson.loads(
        _state(key=b"k", headers=(), history=1, error=False, sync_back=False).to_retry("retry", 0.0).encode()
    )
    data.update(change)
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


HOSTILE = {
    "not json": b"{not json",
    "empty": b"",
    "a list": b"[]",
    "no event id": _raw(event_id=...),
    "another version": _raw(v=2),
    "an unknown kind": _raw(kind="later"),
    "a chain of strings": _raw(chain=["crm"]),
    "a key not base64": _raw(key="abc"),
    "a header not base64": _raw(headers=[["trace", "x"]]),
    "an event not ours": _raw(value='{"eventId": "e"}'),
    "an event not json": _raw(value="{"),
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_decode_refuses_what_is_not_a_retry_record_or_not_an_event(raw: bytes) -> None:
    from pydantic import ValidationError

    from octopus_crm.core.contracts import ClassifiedMessage

    with pytest.raises((ValidationError, InvalidRetryRecord)):
        ClassifiedMessage.model_validate_json(RetryRecord.decode(raw).value)


class NoDispatcher:
    async def resume(self, retry: RetryRecord, event: Any) -> Any:
        raise AssertionError("an invalid record reached the dispatcher")


async def test_hostile_retry_records_end_in_the_dlq_as_invalid_retry_records(
    reporter: Reporter, broker: TestBroker, topics: Any
) -> None:
    handler = RetryHandler(NoDispatcher(), reporter)  # type: ignore[arg-type]
    for offset, raw in enumerate(HOSTILE.values()):
        await handler.handle(InboundRecord(topics.retry, 0, offset, b"k|crm", raw))
    dead = await broker.read(topics.dlq, expect=len(HOSTILE))
    assert sorted(r.value or b"" for r in dead) == sorted(HOSTILE.values())
    for record in dead:
        headers = dict(record.headers)
        assert headers[Header.ERROR_CLASS.value] == DeadLetterClass.INVALID_RETRY_RECORD.value.encode()
