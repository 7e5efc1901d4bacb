"""The error taxonomy every delivery speaks.

Errors are typed on two axes: may the same request be tried again (``retriable``), and whose
fault it is (``error_class``: retryable, permanent, auth, config). ``code`` is a short, bounded
token that becomes a metric label and the ``error.code`` of a result; ``message`` keeps the
vendor's own words. :class:`ErrorInfo` is the same three facts as a value: what a result, a
retry record and a dead letter carry, whoever produced the failure (an adapter or the daemon).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

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

ErrorClass = Literal["retryable", "permanent", "auth", "config"]
ERROR_CLASSES: tuple[ErrorClass, ...] = ("retryable", "permanent", "auth", "config")


@dataclass(frozen=True)
class ErrorInfo:
    """One failure as data: whose fault (``error_class``), a bounded ``code``, the words."""

    error_class: ErrorClass
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The wire shape (results, retry records): ``{"class", "code", "message"}``."""
        return {"class": self.error_class, "code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> ErrorInfo:
        """The inverse of :meth:`as_dict`; an unknown class reads as ``permanent``."""
        error_class = data.get("class", "permanent")
        return cls(
            error_class if error_class in ERROR_CLASSES else "permanent",
            data.get("code", "error"),
            data.get("message", ""),
        )


class DeliveryError(Exception):
    """Base of every failure an adapter reports."""

    error_class: ClassVar[ErrorClass] = "permanent"
    retriable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo(self.error_class, self.code, self.message)

    def as_dict(self) -> dict[str, str]:
        return self.info.as_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class RetryableError(DeliveryError):
    """Timeouts, connection errors, 5xx, vendor 'busy' codes: the same request may succeed later."""

    error_class = "retryable"
    retriable = True


class RateLimitedError(RetryableError):
    """The vendor asked us to slow down (429, or a rate-limit code in a 200 body)."""

    def __init__(self, message: str, *, code: str = "rate_limited", **kw: object) -> None:
        super().__init__(message, code=code, **kw)  # type: ignore[arg-type]


class QuotaExhaustedError(RateLimitedError):
    """A daily or monthly quota is spent: wait for ``retry_after``, do not spin."""


class AmbiguousDeliveryError(RetryableError):
    """The request may have reached the vendor but no answer came back (timeout after send).

    A blind retry could create a second record; callers resolve it with a lookup or the
    vendor's idempotency key before trying again.
    """


class PermanentError(DeliveryError):
    """The vendor rejected the request itself (validation 4xx): retrying cannot help."""

    error_class = "permanent"


class AuthError(DeliveryError):
    """Credentials rejected, still 401/403 after one refresh."""

    error_class = "auth"


class TokenExpiredError(AuthError):
    """The cached token is no longer accepted; the kit refreshes once and retries."""

    retriable = True


class ConfigError(DeliveryError):
    """Our configuration cannot produce a request: missing mapping, unknown object type."""

    error_class = "config"
