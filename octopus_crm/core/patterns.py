"""Rule patterns on a linear-time engine (RE2), so no pattern and no message can stall the loop.

Python's ``re`` backtracks: ``^(a+)+$`` against 41 ``a`` and a ``!`` takes minutes, and a rule
runs on every event inside the event loop. RE2 matches in time linear in the text and refuses
the features that need backtracking (backreferences, lookaround); such a pattern is a
configuration error, reported at load.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

__all__ = ["PatternError", "compile_pattern", "pattern_error"]


class PatternError(ValueError):
    """A rule pattern RE2 cannot run."""


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # the error goes into the configuration report, not to stderr
    return options


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    """The compiled, case-insensitive pattern; raises :class:`PatternError`."""
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise PatternError(f"invalid regex {pattern!r}: {text} (RE2 syntax: no backreferences or lookaround)") from None


def pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used, or ``None`` when it compiles."""
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        return str(exc)
    return None
