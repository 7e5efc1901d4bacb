"""The error taxonomy every delivery speaks; it lives in :mod:`octopus_crm.core.errors`.

Adapters import it from here (``from adapters.errors import RetryableError``) as before.
"""

from __future__ import annotations

from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    AuthError,
    ConfigError,
    DeliveryError,
    ErrorClass,
    ErrorInfo,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)

__all__ = [
    "AmbiguousDeliveryError",
    "AuthError",
    "ConfigError",
    "DeliveryError",
    "ErrorClass",
    "ErrorInfo",
    "PermanentError",
    "QuotaExhaustedError",
    "RateLimitedError",
    "RetryableError",
    "TokenExpiredError",
]
