"""Retry records: a delivery waiting on the retry topic, self-contained.

A record carries the original event bytes, key, headers and source position, the route (the
chain of targets: primary, then fallbacks), where in the chain it stands and how many attempts it
made there, when it is due, and the full attempt history. The retry topic is keyed by
``<original key>|<integration id>`` so that the retries of one key and target stay in order.
"""

from __future__ import annotations

import binascii
import time
from binascii import a2b_base64, b2a_base64
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from octopus_crm.core.redaction import redact, redact_value
from octopus_crm.core.wire import HEADER_PREFIX
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.strategies.routing import Target

__all__ = ["AttemptRecord", "InvalidRetryRecord", "RetryKind", "RetryRecord", "TargetSpec"]

RetryKind = Literal["retry", "barrier", "backlog", "park", "sync_back"]


class TargetSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    integration_id: str
    integration_type: str
    object_type: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    variant: str = ""

    @classmethod
    def of(cls, target: Target) -> TargetSpec:
        """The wire form of ``target``; one shared instance per target without overrides (the
        common case, met by every event: built once, not validated again per event)."""
        if target.overrides:
            return cls._build(target)
        key = (target.integration_id, target.integration_type, target.object_type, target.variant)
        spec = _PLAIN_SPECS.get(key)
        if spec is None:
            spec = _keep(key, cls._build(target))
        return spec

    @staticmethod
    def shared(spec: TargetSpec) -> TargetSpec:
        """The shared instance equal to ``spec`` (one read from the retry topic), whose target,
        key and wire form are already computed."""
        if spec.overrides:
            return spec
        key = (spec.integration_id, spec.integration_type, spec.object_type, spec.variant)
        return _PLAIN_SPECS.get(key) or _keep(key, spec)

    @classmethod
    def _build(cls, target: Target) -> TargetSpec:
        return cls(
            integration_id=target.integration_id,
            integration_type=target.integration_type,
            object_type=target.object_type,
            overrides=dict(target.overrides),
            variant=target.variant,
        )

    def target(self) -> Target:
        return self.as_target

    # Kept on the instance (the spec is frozen; pydantic compares and dumps fields only): a plain
    # spec is one shared instance, so per event these are attribute reads.
    @cached_property
    def as_target(self) -> Target:
        return Target(self.integration_id, self.integration_type, self.object_type, self.overrides, self.variant)

    @cached_property
    def key(self) -> str:
        """The target's key within an event (the idempotency key's suffix)."""
        return self.as_target.key

    @cached_property
    def wire(self) -> dict[str, Any]:
        """The JSON form in a retry record (shared: never changed)."""
        return self.model_dump(mode="json")


_MAX_PLAIN_SPECS = 4096
_PLAIN_SPECS: dict[tuple[str, str, str, str], TargetSpec] = {}


def _keep(key: tuple[str, str, str, str], spec: TargetSpec) -> TargetSpec:
    if len(_PLAIN_SPECS) >= _MAX_PLAIN_SPECS:  # bounded by the configuration; a reload may add some
        _PLAIN_SPECS.clear()
    _PLAIN_SPECS[key] = spec
    return spec


class AttemptRecord(BaseModel):
    integration: str
    at: float
    error: dict[str, str] | None = None


class InvalidRetryRecord(ValueError):
    """A retry record that validates but whose key or headers are not base64."""


_ERROR_KEYS = frozenset({"class", "code", "message"})  # ErrorInfo.as_dict: none is secret-named


def _scrubbed_error(error: dict[str, str]) -> dict[str, str]:
    """``redact_value(error)``, without its per-key secret-name match for our own error shape."""
    if error.keys() == _ERROR_KEYS:
        a, b, c = error.values()
        if type(a) is str and type(b) is str and type(c) is str:
            return {redact(k): redact(v) for k, v in error.items()}
    scrubbed: dict[str, str] = redact_value(error)
    return scrubbed


def _attempt_wire(attempt: AttemptRecord, scrub: bool) -> dict[str, Any]:
    error = attempt.error
    if scrub and error is not None:
        error = _scrubbed_error(error)
    return {"integration": attempt.integration, "at": attempt.at, "error": error}


@dataclass(slots=True, kw_only=True)
class RetryRecord:
    """The wire record. Built from our own route state without validation (its parts are typed
    and validated where they come from); a record read from the retry topic is validated once,
    by :meth:`decode`. The JSON keeps the field order below."""

    v: Literal[1] = 1
    kind: RetryKind
    event_id: str
    key: str | None = None  # original Kafka key, base64
    value: str  # the original event, UTF-8 JSON text
    headers: list[tuple[str, str]] = field(default_factory=list)  # original headers, base64 values
    source_topic: str
    source_partition: int
    source_offset: int
    received_at: float
    strategy: str
    chain: list[TargetSpec]
    index: int = 0
    attempt: int = 0
    due: float = field(default_factory=time.time)
    history: list[AttemptRecord] = field(default_factory=list)
    first_error: dict[str, str] | None = None
    sync_back: bool = False
    sync_back_from: str | None = None
    # original(), decoded once (by decode(): a key or header that is not base64 is refused there)
    _source: InboundRecord | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def target(self) -> TargetSpec:
        return self.chain[self.index]

    def original(self) -> InboundRecord:
        """The source record as it was consumed, for results and dead letters."""
        source = self._source
        if source is None:
            source = self._source = InboundRecord(
                self.source_topic,
                self.source_partition,
                self.source_offset,
                a2b_base64(self.key) if self.key is not None else None,
                self.value.encode(),
                tuple((k, a2b_base64(v)) for k, v in self.headers) if self.headers else (),
            )
        return source

    def kafka_key(self) -> bytes:
        original = a2b_base64(self.key) if self.key is not None else b""
        return original + b"|" + self.target.integration_id.encode()

    def scrubbed(self) -> RetryRecord:
        """This record with the attempt errors scrubbed of secrets (the original event is kept as
        it came, so the retry delivers exactly what was consumed)."""
        return replace(
            self,
            history=[
                h if h.error is None else h.model_copy(update={"error": _scrubbed_error(h.error)}) for h in self.history
            ],
            first_error=_scrubbed_error(self.first_error) if self.first_error else None,
        )

    def encode_scrubbed(self) -> bytes:
        """:meth:`scrubbed` then :meth:`encode`, in one pass (the retry hand-off encodes every
        deferred delivery)."""
        return orjson.dumps(self._wire(scrub=True))

    def encode(self) -> bytes:
        return orjson.dumps(self._wire(scrub=False))

    def _wire(self, scrub: bool) -> dict[str, Any]:
        """What pydantic's ``model_dump(mode="json")`` of the record model gave, key for key."""
        first_error = self.first_error
        if scrub and first_error:
            first_error = _scrubbed_error(first_error)
        return {
            "v": self.v,
            "kind": self.kind,
            "event_id": self.event_id,
            "key": self.key,
            "value": self.value,
            "headers": self.headers,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "received_at": float(self.received_at),
            "strategy": self.strategy,
            "chain": [spec.wire for spec in self.chain],
            "index": self.index,
            "attempt": self.attempt,
            "due": float(self.due),
            "history": [_attempt_wire(h, scrub) for h in self.history],
            "first_error": first_error,
            "sync_back": self.sync_back,
            "sync_back_from": self.sync_back_from,
        }

    @classmethod
    def decode(cls, raw: bytes) -> RetryRecord:
        """One validation of a record read from the retry topic; a plain target is the shared
        spec. Raises ``ValidationError`` or :class:`InvalidRetryRecord`."""
        record = _ADAPTER.validate_json(raw)
        record.chain = [TargetSpec.shared(spec) for spec in record.chain]
        try:
            record.original()
        except binascii.Error as exc:
            raise InvalidRetryRecord(f"key or header not base64: {exc}") from exc
        return record

    @staticmethod
    def key_b64(key: bytes | None) -> str | None:
        return b2a_base64(key, newline=False).decode() if key is not None else None

    @staticmethod
    def headers_b64(headers: tuple[tuple[str, bytes], ...]) -> list[tuple[str, str]]:
        return [(k, b2a_base64(v, newline=False).decode()) for k, v in headers if not k.startswith(HEADER_PREFIX)]


_ADAPTER = TypeAdapter(RetryRecord)
