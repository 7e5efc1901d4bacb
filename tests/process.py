"""Run the real daemon as a subprocess (``python -m octopus_crm.daemon.cli run``) for crash and rebalance tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson


class DaemonProcess:
    def __init__(
        self, broker: Any, topics: Any, config: dict[str, Any], workdir: Path, name: str, **settings: Any
    ) -> None:
        self.name = name
        self._ports: tuple[int, int] | None = None  # (probes, admin API), read from the log
        self._log_from = 0
        self.config_path = workdir / f"config-{name}.json"
        self.config_path.write_bytes(orjson.dumps(config))
        self.log_path = workdir / f"daemon-{name}.log"
        self.env = {
            **os.environ,
            "OCTOPUS_CRM_BOOTSTRAP_SERVERS": broker.bootstrap,
            "OCTOPUS_CRM_INPUT_TOPIC": topics.input,
            "OCTOPUS_CRM_RESULTS_TOPIC": topics.results,
            "OCTOPUS_CRM_DLQ_TOPIC": topics.dlq,
            "OCTOPUS_CRM_RETRY_TOPIC": topics.retry,
            "OCTOPUS_CRM_GROUP_ID": topics.group,
            "OCTOPUS_CRM_PRODUCER_IDEMPOTENCE": "true" if broker.idempotence else "false",
            "OCTOPUS_CRM_CONFIG_PATH": str(self.config_path),
            "OCTOPUS_CRM_METRICS_HOST": "127.0.0.1",
            # port 0: the daemon binds free ports itself and logs them (a port picked here could be
            # taken by a parallel test before the daemon binds it)
            "OCTOPUS_CRM_METRICS_PORT": "0",
            "OCTOPUS_CRM_ADMIN_PORT": "0",
            "OCTOPUS_CRM_LEDGER_URL": f"sqlite:///{workdir / 'ledger.sqlite3'}",
            "OCTOPUS_CRM_COMMIT_INTERVAL_S": "0.2",
            "OCTOPUS_CRM_SESSION_TIMEOUT_MS": "10000",
            "OCTOPUS_CRM_HEARTBEAT_INTERVAL_MS": "1000",
            "OCTOPUS_CRM_REBALANCE_TIMEOUT_MS": "15000",
            "OCTOPUS_CRM_LOG_FORMAT": "json",
        }
        for key, value in settings.items():
            self.env[f"OCTOPUS_CRM_{key.upper()}"] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        self._ports = None
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "octopus_crm.daemon.cli", "run"], env=self.env, stdout=log, stderr=log
        )
        return self

    @property
    def port(self) -> int:
        """The probe (metrics) port this run bound; 0 until it logged it (a call then fails)."""
        return self._bound()[0]

    @property
    def admin_port(self) -> int:
        return self._bound()[1]

    def _bound(self) -> tuple[int, int]:
        if self._ports is None and self.log_path.exists():
            with open(self.log_path, "rb") as log:
                log.seek(self._log_from)
                for line in log:
                    if b'"admin server listening"' in line:
                        entry = orjson.loads(line)
                        self._ports = (int(entry["port"]), int(str(entry["api"]).rsplit(":", 1)[1]))
                        break
        return self._ports or (0, 0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 40.0) -> tuple[int, float]:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def get(self, path: str) -> tuple[int, bytes]:
        """A GET on the probe port, or for ``/api/*`` on the admin API port."""
        return self.call("GET", path)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        timeout: float = 2,
    ) -> tuple[int, bytes]:
        port = self.admin_port if path.startswith("/api/") else self.port
        request = urllib.request.Request(f"http://{host}:{port}{path}", data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float:
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
