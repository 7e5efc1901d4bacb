"""A broker that is not there yet: the daemon waits (alive, not ready), then works once it is."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.sandbox.kit import SandboxServer
from adapters.sandbox.webhook import WebhookFake
from daemon.broker import EmbeddedBroker, create_topics
from daemon.net import free_port
from tests.events import keyed, make_event, webhook_config
from tests.kafka import TestBroker
from tests.process import DaemonProcess

pytestmark = pytest.mark.slow


async def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_down_at_start_is_retried_and_reported_on_readyz(topics: Any, tmp_path: Path) -> None:
    port = free_port()
    late = TestBroker(f"127.0.0.1:{port}", idempotence=False, kind="tansu")
    hook = WebhookFake()
    async with SandboxServer(hook):
        config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        daemon = DaemonProcess(late, topics, config, tmp_path, "early").start()
        try:
            await wait_for(lambda: daemon.get("/healthz")[0] == 200, 30)
            status, body = daemon.get("/readyz")
            assert status == 503 and b"broker" in body
            await asyncio.sleep(2)
            assert daemon.proc is not None and daemon.proc.poll() is None, "crashed instead of waiting"
            assert daemon.get("/healthz")[0] == 200
            with EmbeddedBroker(port=port):
                await create_topics(late.bootstrap, [topics.input, topics.results, topics.dlq, topics.retry])
                await late.produce(topics.input, keyed([make_event(0)]))
                await wait_for(lambda: daemon.get("/readyz")[0] == 200, 60)
                results = await late.read(topics.results, expect=1, timeout=60)
                code, _ = daemon.terminate()
        finally:
            daemon.stop()
    assert orjson.loads(results[0].value)["status"] == "succeeded"
    assert code == 0


async def test_sigterm_while_the_broker_is_unreachable_exits_zero(topics: Any, tmp_path: Path) -> None:
    nowhere = TestBroker(f"127.0.0.1:{free_port()}", idempotence=False, kind="tansu")
    config = webhook_config({"hook": "http://127.0.0.1:9/hooks/a"})
    daemon = DaemonProcess(nowhere, topics, config, tmp_path, "nowhere").start()
    try:
        await wait_for(lambda: daemon.get("/healthz")[0] == 200, 30)
        code, took = daemon.terminate()
    finally:
        daemon.stop()
    assert code == 0 and took < 10, daemon.log()[-2000:]
