"""The two event contracts: ``classified-message.v1`` (input) and ``sync-result.v1`` (output).

Input models are strict on required fields and types and tolerant of unknown fields, because
the producers are not ours and evolve on their own schedule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = [
    "SUPPORTED_SCHEMA_VERSIONS",
    "Assignment",
    "Channel",
    "Classification",
    "ClassifiedMessage",
    "ResultError",
    "ResultErrorJson",
    "ResultSource",
    "ResultSourceJson",
    "Sender",
    "SyncResult",
    "SyncResultJson",
    "SyncStatus",
]

SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

# Ids travel in Kafka headers, HTTP headers, ledger keys and log lines: visible ASCII only, so
# a CR/LF or a control character is a schema violation at the door, not a crash further in.
HEADER_SAFE_ID = r"^[!-~]+$"


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class Sender(_Inbound):
    id: StrictStr
    name: StrictStr
    username: StrictStr | None = None
    firstName: StrictStr | None = None
    lastName: StrictStr | None = None
    email: StrictStr | None = None
    phone: StrictStr | None = None
    language: StrictStr | None = None


class Channel(_Inbound):
    id: StrictStr | None = None
    name: StrictStr | None = None


class Classification(_Inbound):
    category: StrictStr
    subcategory: StrictStr | None = None
    confidence: float = Field(ge=0, le=1, strict=False)
    priority: Literal["low", "medium", "high", "urgent"]
    sentiment: StrictStr | None = None
    language: StrictStr = "zh-CN"
    tags: list[StrictStr] = Field(default_factory=list)
    keywords: list[StrictStr] = Field(default_factory=list)
    aiModel: StrictStr | None = None


class Assignment(_Inbound):
    assigneeUserId: StrictStr | None = None
    managerUserId: StrictStr | None = None
    systemUserId: StrictStr | None = None


# One shared "no assignment" for every event without one (a frozen model: nothing can change it);
# a default_factory would build and validate a fresh one per event.
_NO_ASSIGNMENT = Assignment()


class ClassifiedMessage(_Inbound):
    schemaVersion: StrictInt
    eventId: StrictStr = Field(min_length=1, max_length=200, pattern=HEADER_SAFE_ID)
    messageId: StrictStr = Field(min_length=1, max_length=500, pattern=HEADER_SAFE_ID)
    tenantId: StrictStr = Field(min_length=1, max_length=200, pattern=HEADER_SAFE_ID)
    tenantName: StrictStr | None = None
    platform: StrictStr
    platformMessageId: StrictStr | None = None
    channel: Channel | None = None
    threadId: StrictStr | None = None
    sender: Sender
    content: StrictStr
    messageType: StrictStr = "text"
    mediaUrls: list[StrictStr] = Field(default_factory=list)
    receivedAt: AwareDatetime = Field(strict=False)
    classification: Classification
    assignment: Assignment = _NO_ASSIGNMENT
    metadata: dict[str, Any] = Field(default_factory=dict)


SyncStatus = Literal["succeeded", "failed", "skipped", "duplicate", "fallback"]
ResultErrorClass = Literal["retryable", "permanent", "auth", "config"]


class ResultError(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    error_class: ResultErrorClass = Field(alias="class")
    code: str
    message: str


class ResultSource(BaseModel):
    topic: str
    partition: int
    offset: int


class SyncResult(BaseModel):
    """One outcome of one event for one target (integration and object type)."""

    model_config = ConfigDict(populate_by_name=True)

    schemaVersion: Literal[1] = 1
    eventId: str
    messageId: str
    tenantId: str
    integrationId: str | None
    integrationType: str | None
    objectType: str | None
    strategy: str
    status: SyncStatus
    externalId: str | None = None
    externalUrl: str | None = None
    attempts: int = 0
    latencyMs: float = 0.0
    error: ResultError | None = None
    reason: str | None = None
    fallbackFrom: str | None = None
    detail: dict[str, Any] | None = Field(
        default=None, description="what the target reported beyond the id (refused recipients, invalid users)"
    )
    source: ResultSource
    completedAt: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def to_json_bytes(self) -> bytes:
        import orjson

        return orjson.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True))


# sync-result.v1 as it is published: ``SyncResult.model_dump(mode="json", by_alias=True,
# exclude_none=True)``, in the same key order. The daemon builds this dict directly: a validated
# model and its dump cost several times the dict (tests/daemon/test_outcomes.py proves the bytes equal).
ResultErrorJson = TypedDict("ResultErrorJson", {"class": ResultErrorClass, "code": str, "message": str})


class ResultSourceJson(TypedDict):
    topic: str
    partition: int
    offset: int


class SyncResultJson(TypedDict):
    schemaVersion: Literal[1]
    eventId: str
    messageId: str
    tenantId: str
    integrationId: NotRequired[str]
    integrationType: NotRequired[str]
    objectType: NotRequired[str]
    strategy: str
    status: SyncStatus
    externalId: NotRequired[str]
    externalUrl: NotRequired[str]
    attempts: int
    latencyMs: float
    error: NotRequired[ResultErrorJson]
    reason: NotRequired[str]
    fallbackFrom: NotRequired[str]
    detail: NotRequired[dict[str, Any]]
    source: ResultSourceJson
    completedAt: str  # ISO 8601 UTC, "Z", microseconds unless zero (as pydantic writes it)
