"""Property-based: schemathesis generates requests from ``/api/openapi.json`` and checks that the
admin API never fails with a 5xx and answers only with the statuses, content types and bodies the
document declares. A bounded number of examples per operation keeps it to a few seconds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from hypothesis import HealthCheck, settings  # noqa: E402 - after the importorskip
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from octopus_crm.daemon.admin import AdminServer  # noqa: E402
from octopus_crm.daemon.admin_openapi import openapi  # noqa: E402
from octopus_crm.daemon.config import parse_config  # noqa: E402
from octopus_crm.daemon.consumer import Health  # noqa: E402
from tests.events import webhook_config  # noqa: E402

TOKEN = "admin-token-openapi-9f1"
schema = schemathesis.openapi.from_dict(openapi())


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The admin API in a thread of its own (schemathesis calls it synchronously)."""
    path = Path(tmp_path_factory.mktemp("openapi")) / "crm-config.json"
    tree = webhook_config({"hook": "https://hooks.example.com/a"})
    path.write_bytes(orjson.dumps(tree))
    config = parse_config(tree, env={})
    loop = asyncio.new_event_loop()
    server = AdminServer(
        health=Health(), config=config, host="127.0.0.1", port=0, api_port=0, token=TOKEN, config_path=str(path)
    )
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield f"http://127.0.0.1:{server.api_port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_admin_api_answers_as_its_openapi_document_says(case: Any, admin_url: str) -> None:
    case.call_and_validate(
        base_url=admin_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=15,
    )
