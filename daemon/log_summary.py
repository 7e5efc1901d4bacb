"""Summarise the Kafka client's complaints: one WARNING per logger and interval, with a count.

During a broker outage aiokafka logs every failed connect, fetch, heartbeat and metadata update
at ERROR, hundreds of lines a second. The first line of each interval still shows what is wrong;
the rest are counted and the count rides on the next line that gets through. Our own
``broker unreachable since …`` line (daemon.broker_probe) says the rest.
"""

from __future__ import annotations

import logging
import time

__all__ = ["ClientLogSummary"]


class ClientLogSummary(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka", "kafka"), interval: float = 30.0) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval = interval
        self._windows: dict[str, tuple[float, int]] = {}  # logger name -> (window start, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self._prefixes):
            return True
        now = time.monotonic()
        started, held = self._windows.get(record.name, (None, 0))
        if started is not None and now - started < self._interval:
            self._windows[record.name] = (started, held + 1)
            return False
        self._windows[record.name] = (now, 0)
        if record.exc_info is None:  # an expected retry, not a bug in the client: WARNING
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if held and started is not None:
            record.msg = f"{record.getMessage()} (and {held} more from this logger suppressed in {now - started:.0f}s)"
            record.args = None
        return True
