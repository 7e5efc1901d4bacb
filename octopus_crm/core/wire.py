"""Names on the wire: our Kafka header names and the classes a dead letter can have.

Both are :class:`~enum.StrEnum`, so a member *is* its wire string (``Header.ERROR_CLASS ==
"octopus-error-class"``): what consumers of the DLQ and retry topics read is unchanged.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["HEADER_PREFIX", "REPLAYABLE_BY_DEFAULT", "DeadLetterClass", "Header"]

#: Every header we write starts with this; a record's own headers are kept, ours replaced.
HEADER_PREFIX = "octopus-"


class Header(StrEnum):
    """Headers we write on dead letters, retry records and replayed records."""

    # dead letters
    ERROR_CLASS = "octopus-error-class"
    ERROR_REASON = "octopus-error-reason"
    ERROR_CODE = "octopus-error-code"
    SOURCE_TOPIC = "octopus-source-topic"
    SOURCE_PARTITION = "octopus-source-partition"
    SOURCE_OFFSET = "octopus-source-offset"
    DEAD_LETTERED_AT = "octopus-dead-lettered-at"
    INTEGRATION = "octopus-integration"
    OBJECT_TYPE = "octopus-object-type"
    ATTEMPTS = "octopus-attempts"
    ATTEMPT_HISTORY = "octopus-attempt-history"
    # retry records
    DUE_AT = "octopus-due-at"
    RETRY_KIND = "octopus-retry-kind"
    ATTEMPT = "octopus-attempt"
    # dlq replay
    REPLAYED_FROM = "octopus-replayed-from"


class DeadLetterClass(StrEnum):
    """Why a record went to the DLQ (the ``octopus-error-class`` header, a metric label)."""

    DELIVERY_FAILED = "delivery_failed"
    INTERNAL_ERROR = "internal_error"
    INVALID_RETRY_RECORD = "invalid_retry_record"
    EMPTY_VALUE = "empty_value"
    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"


#: What ``dlq replay`` takes unless told otherwise: failures that a later attempt may fix.
REPLAYABLE_BY_DEFAULT = frozenset({DeadLetterClass.DELIVERY_FAILED, DeadLetterClass.INTERNAL_ERROR})
