"""Live reload: every replica watches its configuration file (and SIGHUP) and swaps a valid new
version in between events; an invalid one is refused and the running version kept.

The watch polls the file's (and overlay's) status and hash once a second: inotify does not see a
ConfigMap's symlink swap reliably, and polling one small file costs nothing. Like Prometheus for
its own configuration, ``octopus_crm_config_last_reload_success`` says whether the last attempt
loaded, and ``octopus_crm_config_last_reload_timestamp_seconds`` when the last good one did.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from octopus_crm.daemon import metrics
from octopus_crm.daemon.config import ConfigFileError, CrmConfig, load_config
from octopus_crm.daemon.config_versions import version_of

__all__ = ["ConfigReloader", "ReloadResult", "record_loaded"]

log = structlog.get_logger("octopus.reload")

Apply = Callable[[CrmConfig, str], Awaitable[None]]


def record_loaded(version: str) -> None:
    """Metrics for a version that is now in use."""
    metrics.CONFIG_RELOAD_SUCCESS.set(1)
    metrics.CONFIG_RELOAD_TIMESTAMP.set(time.time())
    metrics.CONFIG_VERSION.info({"version": version})


class ReloadResult:
    def __init__(self, applied: bool, version: str, errors: list[tuple[str, str]] | None = None) -> None:
        self.applied = applied
        self.version = version
        self.errors = errors or []

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "version": self.version,
            "errors": [{"path": path, "message": message} for path, message in self.errors],
        }


class ConfigReloader:
    """Watches ``path`` (and ``overlay_path``); on a change, loads and hands the new version to
    ``apply`` (which swaps it in), one reload at a time."""

    def __init__(
        self,
        path: str,
        apply: Apply,
        *,
        overlay_path: str | None = None,
        version: str | None = None,
        interval: float = 1.0,
    ) -> None:
        self.path = path
        self.overlay_path = overlay_path
        self.apply = apply
        self.interval = interval
        self.version = version or version_of(path, overlay_path)
        self._seen = self.version
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def trigger(self) -> None:
        """Check now (SIGHUP)."""
        self._wake.set()

    def install_sighup(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: checking the configuration file", path=self.path)
        self.trigger()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.check()

    async def check(self, *, force: bool = False) -> ReloadResult:
        """Load the file if it changed since the last attempt (or if ``force``)."""
        async with self._lock:
            current = version_of(self.path, self.overlay_path)
            if current == "unknown" or (current == self._seen and not force):
                return ReloadResult(False, self.version)
            self._seen = current
            try:
                config = await asyncio.to_thread(load_config, self.path, overlay_path=self.overlay_path)
            except ConfigFileError as exc:
                metrics.CONFIG_RELOAD_SUCCESS.set(0)
                log.error(
                    "configuration refused; the running version is kept",
                    path=self.path,
                    refused_version=current,
                    running_version=self.version,
                    errors=[f"{path or '<root>'}: {message}" for path, message in exc.errors],
                )
                return ReloadResult(False, self.version, exc.errors)
            if current == self.version and not force:
                return ReloadResult(False, self.version)
            try:
                await self.apply(config, current)
            except Exception as exc:  # the watcher must outlive a failed swap; nothing was changed
                metrics.CONFIG_RELOAD_SUCCESS.set(0)
                log.exception("configuration could not be swapped in; the running version is kept", version=current)
                return ReloadResult(False, self.version, [("", f"swap failed: {type(exc).__name__}: {exc}")])
            previous, self.version = self.version, current
            record_loaded(current)
            log.info("configuration reloaded", path=self.path, version=current, previous=previous)
            return ReloadResult(True, current)
