"""Mistakes the operator fixes — a bad setting, a missing file, a broker that refuses what we ask.

``octopus-crm`` prints each as one line naming the setting or option, without a traceback, and
exits with ``exit_code`` (2 for usage and settings mistakes, like argparse).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

__all__ = [
    "IdempotenceRefused",
    "OperatorError",
    "describe_settings_error",
    "explain_kafka_error",
    "refused_idempotence",
]

ENV_PREFIX = "OCTOPUS_CRM_"


class OperatorError(Exception):
    """One line for the operator; the command exits with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class IdempotenceRefused(OperatorError):
    def __init__(self, bootstrap: str, broker_error: str) -> None:
        super().__init__(
            f"the broker at {bootstrap} refused an idempotent producer ({broker_error}); "
            f"set {ENV_PREFIX}PRODUCER_IDEMPOTENCE=false (or --no-idempotence) for brokers without "
            "idempotent producers, such as the embedded Tansu broker"
        )


def refused_idempotence(exc: BaseException) -> bool:
    """True when a producer's start failed because the broker answered InitProducerId with an
    error: aiokafka retries connection trouble there itself, so what escapes is the broker's no."""
    return any(frame.f_code.co_name == "_maybe_wait_for_pid" for frame, _ in traceback.walk_tb(exc.__traceback__))


def explain_kafka_error(exc: Exception, *, bootstrap: str, idempotence: bool) -> OperatorError:
    from aiokafka.errors import KafkaConnectionError

    if idempotence and refused_idempotence(exc):
        return IdempotenceRefused(bootstrap, type(exc).__name__)
    if isinstance(exc, KafkaConnectionError):
        return OperatorError(
            f"cannot reach a Kafka broker at {bootstrap} (set {ENV_PREFIX}BOOTSTRAP_SERVERS or --bootstrap-servers)"
        )
    return OperatorError(f"Kafka error from {bootstrap}: {type(exc).__name__}: {exc}", exit_code=1)


def describe_settings_error(exc: ValidationError, model_fields: Mapping[str, Any], flags: Mapping[str, str]) -> str:
    """``--log-format: 'xml' is not valid: Input should be 'auto', 'json' or 'console'``.

    ``flags`` maps the settings given on the command line to their flag; the others came from
    ``OCTOPUS_CRM_<NAME>`` (or a secrets file of that name). Secret values are never echoed."""
    errors = exc.errors()
    first = errors[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    source = flags.get(field) or f"{ENV_PREFIX}{field.upper()}"
    info = model_fields.get(field)
    secret = field.endswith("password") or (info is not None and "SecretStr" in str(getattr(info, "annotation", "")))
    value = "" if secret or isinstance(first.get("input"), SecretStr) else f" {first.get('input')!r}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}:{value} is not valid: {first['msg']}{more}"
