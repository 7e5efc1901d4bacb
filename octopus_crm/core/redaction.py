"""Known secret values, scrubbed from everything that leaves the process.

Credentials from the configuration and tokens fetched at run time register themselves here
(:func:`register_secret_parts` also registers the pieces a secret is sent as: the value of an
``Authorization: Bearer X`` header, the password of a URL's ``user:password@``, secret query
values). :func:`redact` / :func:`redact_value` replace them, and anything that looks like a
secret whether registered or not (URL userinfo, ``?sig=``-style query values, Authorization
headers), with ``[REDACTED]``. They are applied at every exit: result, dead-letter and retry
records and their headers (:mod:`octopus_crm.daemon.reporting`), admin API answers (:mod:`octopus_crm.daemon.admin`) and
log lines (:mod:`octopus_crm.daemon.logs`). This is the second line of defence: the first is never putting
secrets into messages at all.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import orjson

__all__ = [
    "REDACTED",
    "mask_secret_keys",
    "redact",
    "redact_bytes",
    "redact_value",
    "register_secret",
    "register_secret_parts",
]

REDACTED = "[REDACTED]"
_MIN_LEN = 4
_lock = threading.Lock()
_secrets: set[str] = set()


class _Memo:
    """What :func:`redact` answered for short texts under one set of registered secrets.

    A text such as a topic or a tenant id is scrubbed on every event; a registration replaces
    the whole memo (never clears it in place), so an answer computed under the old secrets can
    only land in a memo nobody reads. Two generations bound it: when ``recent`` is full it
    becomes ``older`` and the previous ``older`` is dropped."""

    __slots__ = ("older", "pattern", "recent")

    def __init__(self, pattern: re.Pattern[str] | None) -> None:
        self.pattern = pattern
        self.recent: dict[str, str] = {}
        self.older: dict[str, str] = {}


_MEMO_TEXT = 200  # longer texts (a log line, a vendor's message) are scrubbed every time
_MEMO_SIZE = 1024
_memo = _Memo(None)

# Query parameters whose values are secret whatever they hold, anywhere in a text (``password=``
# in a form body). The left boundary keeps ``monkey=`` or ``errcode=`` out.
_SECRET_PARAMS = (
    "access_token|corpsecret|appsecret|app_secret|client_secret|password|passwd|pwd|api_token|apikey|api_key|"
    "api-key|hapikey|token|key|refresh_token|id_token|secret|signature|x-amz-signature|x-goog-signature|auth"
)
# Names too common in plain text (``code=403``) to scrub anywhere: secret only inside a URL query.
_QUERY_ONLY_PARAMS = "code|sig|sign|jwt|session|sessionid|credential|credentials"
_PARAM_RE = re.compile(
    rf"(?i)((?:(?<![A-Za-z0-9])(?:{_SECRET_PARAMS})|(?<=[?&;])(?:{_QUERY_ONLY_PARAMS}))=)[^&\s'\"<>#]+"
)
_AUTH_RE = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer |basic |zoho-oauthtoken )?[^\s'\",}]+")
# ``scheme://user:password@host`` and ``scheme://token@host``: the userinfo is a credential.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#'\"<>]+@")
_AUTH_SCHEMES = frozenset(
    {"bearer", "basic", "token", "digest", "apikey", "key", "sso-key", "zoho-oauthtoken", "splunk"}
)
_KEEP_NAME = rf"\g<1>{REDACTED}"  # the name, ``=`` or ``:`` kept; the value replaced
_KEEP_SCHEME = rf"\g<1>{REDACTED}@"
_SECRET_QUERY_NAMES = re.compile(rf"(?i)^(?:{_SECRET_PARAMS}|{_QUERY_ONLY_PARAMS})$")


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it never leaves the process."""
    global _memo
    if not value or len(value) < _MIN_LEN:
        return
    # as it appears inside a JSON string too: a log line is scrubbed once, rendered
    escaped = orjson.dumps(value).decode()[1:-1]
    with _lock:
        if value in _secrets and escaped in _secrets:
            return
        _secrets.update((value, escaped))
        ordered = sorted(_secrets, key=len, reverse=True)
        _memo = _Memo(re.compile("|".join(re.escape(s) for s in ordered)))


def register_secret_parts(value: str | None) -> None:
    """Register the secret parts of a value that is, or carries, a secret.

    ``Bearer X`` → itself and ``X``; a URL → only its password (and ``user:password``), a lone
    userinfo token and secret query values (``?code=``, ``?sig=`` …), so that the rest of the
    URL stays readable.
    """
    if not value:
        return
    value = value.strip()
    if "://" not in value:
        register_secret(value)
        scheme, sep, rest = value.partition(" ")
        if sep and scheme.lower() in _AUTH_SCHEMES:
            register_secret(rest.strip())
    else:
        try:
            parts = urlsplit(value)
        except ValueError:
            return
        if parts.password:
            register_secret(parts.password)
            register_secret(f"{parts.username}:{parts.password}")
        elif parts.username:
            register_secret(parts.username)  # ``https://token@host``: a lone userinfo is a token
        for pair in parts.query.split("&"):
            name, _, raw = pair.partition("=")
            if _SECRET_QUERY_NAMES.match(unquote_plus(name)):
                register_secret(raw)  # as written and as decoded: either may be echoed
                register_secret(unquote_plus(raw))


def redact(text: str) -> str:
    memo = _memo
    if len(text) > _MEMO_TEXT:
        return _scrub(text, memo.pattern)
    scrubbed = memo.recent.get(text)
    if scrubbed is None:
        scrubbed = memo.older.get(text)
        if scrubbed is None:
            scrubbed = _scrub(text, memo.pattern)
        recent = memo.recent
        if len(recent) >= _MEMO_SIZE:
            memo.older, memo.recent = recent, {}
        memo.recent[text] = scrubbed
    return scrubbed


def _scrub(text: str, pattern: re.Pattern[str] | None) -> str:
    if pattern is not None and pattern.search(text):  # a search costs a third of a sub that finds nothing
        text = pattern.sub(REDACTED, text)
    if "=" in text:  # every _PARAM_RE match has one; scanning a line without costs ~40 us
        text = _PARAM_RE.sub(_KEEP_NAME, text)
    if "@" in text:
        text = _USERINFO_RE.sub(_KEEP_SCHEME, text)
    if ":" in text or "=" in text:  # every _AUTH_RE match has one (an id or a name has neither)
        text = _AUTH_RE.sub(_KEEP_NAME, text)
    return text


_SECRET_KEYS = re.compile(r"(?i)^(authorization|x-api-key|api[-_]?key|.*token|.*secret|.*password)$")


def redact_value(value: Any) -> Any:
    """``value`` with every string scrubbed (keys too) and secret-named keys' values replaced."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            (redact(k) if isinstance(k, str) else k): REDACTED
            if isinstance(k, str) and _SECRET_KEYS.match(k) and isinstance(v, str)
            else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


_key_is_secret: dict[str, bool] = {}


def _secret_key(key: str) -> bool:
    known = _key_is_secret.get(key)
    if known is None:
        known = bool(_SECRET_KEYS.match(key))
        if len(_key_is_secret) < 4096:  # keys are few (ours); hostile ones are not kept
            _key_is_secret[key] = known
    return known


def mask_secret_keys(value: Any) -> Any:
    """``value`` with the string values of secret-named keys replaced, nothing else touched.

    For text that is scrubbed whole once rendered (a JSON log line: :func:`redact` then sees
    every string in it, secrets registered in their JSON-escaped form too)."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(v, str) and isinstance(k, str) and _secret_key(k) else mask_secret_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [mask_secret_keys(v) for v in value]
    return value


def redact_bytes(value: bytes) -> bytes:
    """A header value, scrubbed (decoded as UTF-8 with replacement)."""
    text = value.decode("utf-8", "replace")
    scrubbed = redact(text)
    return value if scrubbed == text else scrubbed.encode()
