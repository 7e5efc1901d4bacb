"""Start vendor fakes for a configuration: the demo and ``octopus-crm sandbox`` share this."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.registry import adapter_class
from adapters.sandbox.kit import FakeVendor, SandboxServer
from adapters.sandbox.registry import FAKES

__all__ = ["Sandbox", "canonical_type", "run_sandbox"]


class _Standalone(Protocol):
    """A fake that is not an aiohttp app (SMTP) and runs its own server."""

    name: str
    ENV: dict[str, str]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def endpoints(self) -> dict[str, Any]: ...


def canonical_type(type_name: str) -> str:
    cls = adapter_class(type_name)
    return cls.info.type if cls is not None else type_name


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

    async def start(self) -> None:
        http = [f for f in self.fakes.values() if isinstance(f, FakeVendor)]
        self._http = SandboxServer(*http)
        await self._http.start()
        for fake in self.fakes.values():
            if not isinstance(fake, FakeVendor):
                await fake.start()

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


async def run_sandbox(types: list[str] | None, *, base_port: int = 0) -> int:
    sandbox = Sandbox.for_types(types or list(FAKES))
    await sandbox.start()
    print("vendor fakes running on loopback (Ctrl-C to stop):")
    for name, fake in sandbox.fakes.items():
        print(f"  {name:<10} {fake.endpoints()}")
    print("credentials they accept (export these for the seed configuration):")
    for key, value in sorted(sandbox.env().items()):
        print(f"  export {key}={value}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sandbox.stop()
    return 0
