"""Retry records: a delivery waiting on the retry topic, self-contained.

A record carries the original event bytes, key, headers and source position, the route (the
chain of targets: primary, then fallbacks), where in the chain it stands and how many attempts it
made there, when it is due, and the full attempt history. The retry topic is keyed by
``<original key>|<integration id>`` so that the retries of one key and target stay in order.
"""

from __future__ import annotations

import base64
import time
from functools import cached_property
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from octopus_crm.core.redaction import redact_value
from octopus_crm.core.wire import HEADER_PREFIX
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.strategies.routing import Target

__all__ = ["AttemptRecord", "RetryKind", "RetryRecord", "TargetSpec"]

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
            if len(_PLAIN_SPECS) >= _MAX_PLAIN_SPECS:  # bounded by the configuration; a reload may add some
                _PLAIN_SPECS.clear()
            spec = _PLAIN_SPECS[key] = cls._build(target)
        return spec

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


_MAX_PLAIN_SPECS = 4096
_PLAIN_SPECS: dict[tuple[str, str, str, str], TargetSpec] = {}


class AttemptRecord(BaseModel):
    integration: str
    at: float
    error: dict[str, str] | None = None


class RetryRecord(BaseModel):
    v: Literal[1] = 1
    kind: RetryKind
    event_id: str
    key: str | None = Field(default=None, description="original Kafka key, base64")
    value: str = Field(description="the original event, UTF-8 JSON text")
    headers: list[tuple[str, str]] = Field(default_factory=list, description="original headers, base64 values")
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

    @property
    def target(self) -> TargetSpec:
        return self.chain[self.index]

    def original(self) -> InboundRecord:
        """The source record as it was consumed, for results and dead letters."""
        return InboundRecord(
            topic=self.source_topic,
            partition=self.source_partition,
            offset=self.source_offset,
            key=base64.b64decode(self.key) if self.key is not None else None,
            value=self.value.encode(),
            headers=tuple((k, base64.b64decode(v)) for k, v in self.headers),
        )

    def kafka_key(self) -> bytes:
        original = base64.b64decode(self.key) if self.key is not None else b""
        return original + b"|" + self.target.integration_id.encode()

    def scrubbed(self) -> RetryRecord:
        """This record with the attempt errors scrubbed of secrets (the original event is kept as
        it came, so the retry delivers exactly what was consumed)."""
        return self.model_copy(
            update={
                "history": [
                    h if h.error is None else h.model_copy(update={"error": redact_value(h.error)})
                    for h in self.history
                ],
                "first_error": redact_value(self.first_error) if self.first_error else None,
            }
        )

    def encode_scrubbed(self) -> bytes:
        """:meth:`scrubbed` then :meth:`encode`, in one pass over the dumped record (the retry
        hand-off encodes every deferred delivery)."""
        data = self.model_dump(mode="json")
        for attempt in data["history"]:
            if attempt["error"] is not None:
                attempt["error"] = redact_value(attempt["error"])
        if data["first_error"]:
            data["first_error"] = redact_value(data["first_error"])
        return orjson.dumps(data)

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def decode(cls, raw: bytes) -> RetryRecord:
        return cls.model_validate_json(raw)

    @staticmethod
    def key_b64(key: bytes | None) -> str | None:
        return base64.b64encode(key).decode() if key is not None else None

    @staticmethod
    def headers_b64(headers: tuple[tuple[str, bytes], ...]) -> list[tuple[str, str]]:
        return [(k, base64.b64encode(v).decode()) for k, v in headers if not k.startswith(HEADER_PREFIX)]
