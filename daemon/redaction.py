"""Known secret values, scrubbed from every log line and every error message we render.

Credentials from the configuration and tokens fetched at run time register themselves here;
the structlog processor in :mod:`daemon.logs` replaces them with ``[REDACTED]``. This is the
second line of defence: the first is never putting secrets into messages at all.
"""

from __future__ import annotations

import re
import threading
from typing import Any

__all__ = ["REDACTED", "redact", "redact_value", "register_secret"]

REDACTED = "[REDACTED]"
_MIN_LEN = 4
_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

# Query parameters and headers whose values are secret whatever they hold.
_PARAM_RE = re.compile(
    r"(?i)((?:access_token|corpsecret|appsecret|app_secret|client_secret|password|api_token|"
    r"apikey|api_key|hapikey|token|key|refresh_token)=)[^&\s'\"]+"
)
_AUTH_RE = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer |basic |zoho-oauthtoken )?[^\s'\",}]+")


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it never reaches a log line."""
    global _pattern
    if not value or len(value) < _MIN_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "=" in text:  # every _PARAM_RE match has one; scanning a line without costs ~40 us
        text = _PARAM_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _AUTH_RE.sub(lambda m: m.group(1) + REDACTED, text)


_SECRET_KEYS = re.compile(r"(?i)^(authorization|x-api-key|api[-_]?key|.*token|.*secret|.*password)$")


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEYS.match(k) and isinstance(v, str) else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value
