"""Logging: structlog, JSON by default and console on a TTY, secrets scrubbed.

Tracebacks are rendered without local variables (structlog's dict tracebacks would include
them, and locals hold tokens). Third-party loggers that print URLs or payloads are kept at
WARNING.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal

import orjson
import structlog
from structlog.types import EventDict, WrappedLogger

from octopus_crm.core.redaction import REDACTED, mask_secret_keys, redact, redact_value
from octopus_crm.daemon.log_summary import ClientLogSummary

__all__ = ["NO_EVENT", "bind_event", "canonical", "canonical_scrubbed", "configure_logging", "flush"]

_QUIET = ("aiokafka", "kafka", "httpx", "httpcore", "aiohttp.access", "aiohttp.client", "urllib3", "asyncio")


NO_EVENT: Mapping[str, Any] = MappingProxyType({})

# The context of the event being processed: one immutable mapping, set once per event (structlog's
# contextvars cost a ContextVar per key and a scan of the whole context on every clear and read).
# Each task runs in its own copy of the context, and the tasks an event starts inherit it.
_EVENT: ContextVar[Mapping[str, Any]] = ContextVar("octopus_event", default=NO_EVENT)

# structlog's registry of the ContextVars it ever bound: while empty, nothing is bound there and
# its context need not be scanned (it may be renamed: then it is scanned every time)
_STRUCTLOG_VARS: Mapping[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


def bind_event(fields: Mapping[str, Any]) -> None:
    """The fields every log line carries while this event is processed, in place of the previous
    event's (a worker task processes several in a row); ``fields`` is never mutated after."""
    _EVENT.set(fields)


def _merge_event(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    for key, value in _EVENT.get().items():
        event_dict.setdefault(key, value)
    return event_dict


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
        _PENDING.flush()  # the canonical lines before this one come first
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
        _merge_event,
        structlog.contextvars.merge_contextvars,  # what other code binds
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

_FLUSH_AT = 64 * 1024  # characters of canonical lines waiting before they are written at once


class _Pending:
    """Canonical lines on their way to stderr, written together once per event-loop iteration:
    one ``write`` and ``flush`` (one syscall) for all the events that finished in it.

    Written at once outside a running loop, when ``_FLUSH_AT`` characters wait, before any other
    log line (``_CurrentStderr``: lines stay in order), when the canonical line is uninstalled and
    at exit (``atexit``): a graceful stop loses none. A SIGKILL loses at most the lines of the
    loop iteration it interrupts."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # where a flush is scheduled
        self._lock = threading.Lock()  # another line may be logged from an executor's thread

    def add(self, line: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= _FLUSH_AT
        if loop is None or full:
            self.flush()
        elif loop is not self._loop:
            # a loop closed with a flush pending dropped that callback, not the lines: the next
            # loop (or the next flush) writes them
            self._loop = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:  # held while writing: batches taken by two threads stay in order
            lines, self._lines, self._size, self._loop = self._lines, [], 0, None
            if lines:
                # sys.stderr as it is now, not as it was at configure time: a stream replaced
                # since (pytest's capture of an earlier test) may be closed
                stream = sys.stderr
                stream.write("".join(lines))
                stream.flush()


_PENDING = _Pending()
atexit.register(_PENDING.flush)


def flush() -> None:
    """Write the canonical lines still waiting for the end of their loop iteration (at shutdown,
    before text that bypasses logging is printed)."""
    _PENDING.flush()


class _Canonical:
    """The one INFO line per event, rendered straight to the stream.

    The same line the structlog chain above renders (fields, ``event``, the event's context, what
    is bound in structlog's, level, timestamp; secret-named keys masked, secrets scrubbed), in a
    fraction of its CPU: it is written for every event. Used only while that chain is the one
    configured (a test capturing logs, or a console, gets the ordinary path)."""

    processors: list[Any] | None = None

    @classmethod
    def install(cls, processors: list[Any] | None) -> None:
        _PENDING.flush()
        cls.processors = processors

    @classmethod
    def write(cls, message: str, fields: dict[str, Any]) -> bool:
        """``fields`` scrubbed already, and given away: the line is built in it (when written);
        the context is scrubbed here."""
        processors = cls.processors
        # capture_logs() empties and refills the configured list in place: look at its content too
        if processors is None or processors[-1] is not _scrub_rendered:
            return False
        config = _STRUCTLOG_CONFIG
        if (config.default_processors if config is not None else _configured_processors()) is not processors:
            return False
        line = fields
        line["event"] = message
        secret_named = _secret_named
        for key, value in _EVENT.get().items():
            if key not in line:
                # an int (partition, offset) is ours as it is; a string may be the customer's
                kind = type(value)
                if kind is int:
                    line[key] = value
                elif kind is str and secret_named.get(key) is False:  # a known, plain key
                    line[key] = redact(value)
                else:
                    line[key] = _scrub_bound(key, value)
        if _STRUCTLOG_VARS is None or _STRUCTLOG_VARS:
            for key, value in structlog.contextvars.get_contextvars().items():
                if key not in line:
                    line[key] = _scrub_bound(key, value)
        line["level"] = "info"
        line["timestamp"] = _utc_now_iso()
        _PENDING.add(orjson.dumps(line, default=_scrubbed_str, option=orjson.OPT_APPEND_NEWLINE).decode())
        return True


def _configured_processors() -> Any:
    """structlog's configured processor list, without building ``get_config()``'s dict per line
    (its private home checked once, at import: if it moved, the public call)."""
    return (
        _STRUCTLOG_CONFIG.default_processors if _STRUCTLOG_CONFIG is not None else structlog.get_config()["processors"]
    )


_STRUCTLOG_CONFIG: Any = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
if not hasattr(_STRUCTLOG_CONFIG, "default_processors"):
    _STRUCTLOG_CONFIG = None


_secret_named: dict[str, bool] = {}  # bound keys are our code's: a handful


def _scrub_bound(key: str, value: Any) -> Any:
    """A bound context value (an event's ids are the customer's: any string may hold a secret)."""
    if isinstance(value, str):
        masked = _secret_named.get(key)
        if masked is None:
            masked = _secret_named[key] = mask_secret_keys({key: value})[key] == REDACTED
        return REDACTED if masked else redact(value)
    return value if value is None or isinstance(value, (int, float)) else redact_value(value)


def _scrubbed_str(value: Any) -> str:
    return redact(str(value))


_second: tuple[int, str] = (0, "")


def _utc_now_iso() -> str:
    """``datetime.now(UTC).isoformat()`` with ``Z`` for ``+00:00`` (structlog's TimeStamper), the
    date and time of day formatted once a second."""
    global _second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    if _second[0] != seconds:
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    micros = nanos // 1000
    return f"{_second[1]}.{micros:06d}Z" if micros else f"{_second[1]}Z"  # isoformat omits .000000


def canonical(message: str, **fields: Any) -> None:
    """Log the canonical line of an event (INFO), every string in ``fields`` scrubbed."""
    if not _Canonical.write(message, redact_value(fields)):
        _log.info(message, **fields)


def canonical_scrubbed(message: str, fields: dict[str, Any]) -> None:
    """The canonical line of fields whose keys are ours (none secret-named) and whose every value
    that came from outside (a vendor's, a customer's) the caller has scrubbed already: the line of
    every event cannot afford to scrub all of it again (the ordinary structlog path still does)."""
    if not _Canonical.write(message, fields):
        _log.info(message, **fields)


def _dumps(obj: Any, **kw: Any) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()
