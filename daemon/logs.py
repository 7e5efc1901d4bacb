"""Logging: structlog, JSON by default and console on a TTY, secrets scrubbed.

Tracebacks are rendered without local variables (structlog's dict tracebacks would include
them, and locals hold tokens). Third-party loggers that print URLs or payloads are kept at
WARNING.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.types import EventDict, WrappedLogger

from daemon.log_summary import ClientLogSummary
from daemon.redaction import mask_secret_keys, redact, redact_value

__all__ = ["configure_logging"]

_QUIET = ("aiokafka", "kafka", "httpx", "httpcore", "aiohttp.access", "aiohttp.client", "urllib3", "asyncio")


def _scrub(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    scrubbed: EventDict = redact_value(event_dict)  # values, and whole values under secret-named keys
    return scrubbed


def _mask_keys(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """JSON lines: only secret-named keys here; every string is scrubbed in the rendered line."""
    masked: EventDict = mask_secret_keys(event_dict)
    return masked


def _scrub_rendered(logger: WrappedLogger, method: str, rendered: Any) -> Any:
    return redact(rendered) if isinstance(rendered, str) else rendered


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO", *, own_level: str | None = None
) -> None:
    """Our own loggers go straight through structlog (one line per event must be cheap: the
    stdlib bridge cost ~40 µs a line); third-party stdlib loggers share the same rendering.
    ``own_level`` sets our loggers apart (the demo keeps them quiet)."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    exceptions: Any = (
        structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        if not console
        else structlog.processors.format_exc_info
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True, exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # a console line is not JSON: its strings are scrubbed one by one before rendering
    tail: list[Any] = [exceptions, _scrub if console else _mask_keys, renderer, _scrub_rendered]
    structlog.configure(
        processors=[*shared, *tail],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName((own_level or level).upper())),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(ClientLogSummary())  # a broker outage makes aiokafka log hundreds of lines a second
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def _dumps(obj: Any, **kw: Any) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()
