"""Start vendor fakes for a configuration: the demo and ``octopus-crm sandbox`` share this."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from octopus_crm.adapters.registry import adapter_class
from octopus_crm.daemon.operator_errors import OperatorError
from octopus_crm_sandbox.kit import FakeVendor, SandboxServer
from octopus_crm_sandbox.registry import FAKES

__all__ = ["Sandbox", "canonical_type", "integrations_of", "run_sandbox", "unknown_types"]


class _Standalone(Protocol):
    """A fake that is not an aiohttp app (SMTP) and runs its own server."""

    name: str
    ENV: dict[str, str]
    base_url: str

    async def start(self, port: int = 0) -> None: ...

    async def stop(self) -> None: ...

    def endpoints(self) -> dict[str, Any]: ...


def canonical_type(type_name: str) -> str:
    cls = adapter_class(type_name)
    return cls.info.type if cls is not None else type_name


def unknown_types(types: Iterable[str]) -> list[str]:
    """The names among ``types`` that have no fake (aliases such as ``wework`` are fine)."""
    return [t for t in types if canonical_type(t) not in FAKES]


def integrations_of(config_path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(id, type) of every integration in a CRM configuration file (JSON or YAML), unvalidated."""
    raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    items = raw.get("crmIntegrations", []) if isinstance(raw, dict) else []
    return [(str(i["id"]), str(i["type"])) for i in items if isinstance(i, dict) and "id" in i and "type" in i]


@dataclass
class Sandbox:
    """Fakes by canonical target type, running on loopback."""

    fakes: dict[str, Any] = field(default_factory=dict)
    _http: SandboxServer | None = None

    @classmethod
    def for_types(cls, types: Iterable[str], **fake_kwargs: Any) -> Sandbox:
        sandbox = cls()
        for type_name in types:
            canonical = canonical_type(type_name)
            fake_cls = FAKES.get(canonical)
            if fake_cls is not None and canonical not in sandbox.fakes:
                sandbox.fakes[canonical] = fake_cls(**fake_kwargs.get(canonical, {}))
        return sandbox

    async def start(self, base_port: int = 0) -> None:
        """Serve every fake on loopback: on ``base_port``, ``base_port + 1``, … in the order of
        ``fakes`` when given, else on free ports."""
        ports = {name: base_port + i for i, name in enumerate(self.fakes)} if base_port else {}
        http = [f for f in self.fakes.values() if isinstance(f, FakeVendor)]
        self._http = SandboxServer(*http)
        await self._http.start({f.name: ports[name] for name, f in self.fakes.items() if name in ports})
        for name, fake in self.fakes.items():
            if not isinstance(fake, FakeVendor):
                await fake.start(ports.get(name, 0))

    async def stop(self) -> None:
        for fake in self.fakes.values():
            if not isinstance(fake, FakeVendor):
                await fake.stop()
        if self._http is not None:
            await self._http.stop()

    def env(self) -> dict[str, str]:
        """Credentials the fakes accept, under the seed configuration's variable names."""
        out: dict[str, str] = {}
        for fake in self.fakes.values():
            out.update(getattr(fake, "ENV", {}))
        return out

    def endpoints(self, type_name: str) -> dict[str, Any] | None:
        fake = self.fakes.get(canonical_type(type_name))
        return fake.endpoints() if fake is not None and hasattr(fake, "endpoints") else None

    def overlay(self, integrations: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """A config merge patch pointing each (id, type) integration at its fake."""
        patched = []
        for integration_id, type_name in integrations:
            endpoints = self.endpoints(type_name)
            if endpoints is not None:
                patched.append({"id": integration_id, "config": {"endpoints": endpoints}})
        return {"crmIntegrations": patched}


async def run_sandbox(
    types: list[str] | None,
    *,
    base_port: int = 0,
    config_path: str | os.PathLike[str],
    write_overlay: str | os.PathLike[str] | None = None,
) -> int:
    """Run the fakes until SIGINT/SIGTERM; print where they listen, the config overlay that points
    ``config_path``'s integrations at them, and the credentials they accept."""
    sandbox = Sandbox.for_types(types or list(FAKES))
    try:
        await sandbox.start(base_port)
    except OSError as exc:
        await sandbox.stop()
        raise OperatorError(
            f"cannot listen on 127.0.0.1 ports {base_port}-{base_port + len(sandbox.fakes) - 1} ({exc.strerror}):"
            " another process holds one of them; choose another --base-port (0 picks free ports)"
        ) from None
    try:
        overlay = sandbox.overlay(integrations_of(config_path))
        text = json.dumps(overlay, indent=2, ensure_ascii=False)
        print("vendor fakes on loopback (Ctrl-C to stop):")
        for name, fake in sandbox.fakes.items():
            print(f"  {name:<10} {fake.base_url}")
        if write_overlay is not None:
            _write_atomically(Path(write_overlay), text + "\n")
            print(f"config overlay for {config_path} written to {write_overlay}")
        else:
            print(f"config overlay for {config_path} (save it, or use --write-overlay FILE):")
            print(text)
        print("credentials the fakes accept (the seed configuration's ${ENV} names):")
        for key, value in sorted(sandbox.env().items()):
            print(f"  export {key}={value}")
        print(
            f"then, with those exported: octopus-crm run --config {config_path} "
            f"--config-overlay {write_overlay or 'OVERLAY.json'} --bootstrap-servers HOST:PORT "
            "(or 'octopus-crm dev' for broker, fakes and daemon in one)",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await sandbox.stop()
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Readers polling for the file never see half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
