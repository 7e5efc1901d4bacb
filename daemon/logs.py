"""Logging: structlog, JSON by default and console on a TTY, secrets scrubbed.

Tracebacks are rendered without local variables (structlog's dict tracebacks would include
them, and locals hold tokens). Third-party loggers that print URLs or payloads are kept at
WARNING.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, Literal

import orjson
import structlog
from structlog.types import EventDict, WrappedLogger

from octopus_crm.core.redaction import mask_secret_keys, redact, redact_value
from octopus_crm.daemon.log_summary import ClientLogSummary

__all__ = ["canonical", "configure_logging"]

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


class _CurrentStderr:
    """``sys.stderr`` as it is at each write: a stream captured at configure time may have been
    replaced and closed since (pytest's capture of an earlier test), and logging must not fail."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR: Any = _CurrentStderr()


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
    processors = [*shared, *tail]
    own = logging.getLevelName((own_level or level).upper())
    _Canonical.install(None if console or own > logging.INFO else processors)
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        wrapper_class=structlog.make_filtering_bound_logger(own),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(formatter)
    handler.addFilter(ClientLogSummary())  # a broker outage makes aiokafka log hundreds of lines a second
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


_log = structlog.get_logger("octopus.processing")


class _Canonical:
    """The one INFO line per event, rendered straight to the stream.

    The same line the structlog chain above renders (fields, ``event``, the bound context, level,
    timestamp; secret-named keys masked, the rendered line scrubbed), in a third of its CPU: it is
    written for every event. Used only while that chain is the one configured (a test capturing
    logs, or a console, gets the ordinary path)."""

    processors: list[Any] | None = None

    @classmethod
    def install(cls, processors: list[Any] | None) -> None:
        cls.processors = processors

    @classmethod
    def write(cls, message: str, fields: dict[str, Any]) -> bool:
        configured = structlog.get_config()["processors"]
        # capture_logs() empties and refills the configured list in place: look at its content too
        if cls.processors is None or configured is not cls.processors or configured[-1] is not _scrub_rendered:
            return False
        line: dict[str, Any] = {**fields, "event": message}
        for key, value in structlog.contextvars.get_contextvars().items():
            line.setdefault(key, value)
        line["level"] = "info"
        line["timestamp"] = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        # sys.stderr as it is now, not as it was at configure time: a stream replaced since (pytest's
        # capture of an earlier test) may be closed, and writing to it would fail the event
        stream = sys.stderr
        stream.write(redact(orjson.dumps(mask_secret_keys(line), default=str).decode()) + "\n")
        stream.flush()
        return True


def canonical(message: str, **fields: Any) -> None:
    """Log the canonical line of an event (INFO)."""
    if not _Canonical.write(message, fields):
        _log.info(message, **fields)


def _dumps(obj: Any, **kw: Any) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()
