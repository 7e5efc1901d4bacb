"""Secrets never leave the process, whatever field they sit in: results, dead letters and their
headers, retry records, the admin API and the log of the real daemon."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from octopus_crm.daemon.net import free_port
from octopus_crm_sandbox.kit import FakeVendor, SandboxServer
from tests.events import keyed, make_event
from tests.process import DaemonProcess, wait_until


class EchoingVendor(FakeVendor):
    """A careless vendor: its refusals repeat the credentials it was sent."""

    name = "echo"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/hook", self.hook), web.post("/api/{method}", self.slack)]

    async def hook(self, request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.Response(status=400, text=f"rejected credential {bearer} for sig {request.query.get('sig')}")

    async def slack(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"ok": False, "error": token})  # a body code that is the token


@pytest.mark.slow
async def test_no_secret_in_results_dead_letters_retries_api_or_log(broker: Any, topics: Any, tmp_path: Path) -> None:
    await broker.create(topics, partitions=1)
    secrets = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in ("HOOK_PASSWORD", "HOOK_CODE", "HOOK_SIG")}
    secrets["HOOK_BEARER"] = f"hb{uuid.uuid4().hex}"
    secrets["SLACK_TOKEN"] = f"xoxb-{uuid.uuid4().hex}"
    closed = free_port()  # nothing listens: every delivery is a connection error naming the host
    mapping = {"message": {"text": "{{messageContent}}"}}
    retry = {"maxAttempts": 2, "initialDelay": 0.05}
    echo = EchoingVendor()
    async with SandboxServer(echo):
        config = {
            "crmIntegrations": [
                {
                    "id": "down",
                    "type": "webhook",
                    "retry": retry,
                    "config": {
                        "endpoints": {
                            "url": f"http://ops:${{HOOK_PASSWORD}}@127.0.0.1:{closed}/hook?code=${{HOOK_CODE}}&team=ops",
                            "allowPrivateNetwork": True,
                        },
                        "mappings": mapping,
                    },
                },
                {
                    "id": "echo",
                    "type": "webhook",
                    "retry": retry,
                    "config": {
                        "endpoints": {"url": f"{echo.base_url}/hook?sig=${{HOOK_SIG}}", "allowPrivateNetwork": True},
                        "headers": {"Authorization": "Bearer ${HOOK_BEARER}"},
                        "mappings": mapping,
                    },
                },
                {
                    "id": "chat",
                    "type": "slack",
                    "retry": retry,
                    "config": {
                        "credentials": {"token": "${SLACK_TOKEN}"},
                        "endpoints": {"baseUrl": f"{echo.base_url}/api", "allowPrivateNetwork": True},
                        "mappings": {"message": {"channel": "#support", "text": "{{messageContent}}"}},
                    },
                },
            ],
            "strategy": {"strategy": "parallel_sync", "targets": [{"id": "down"}, {"id": "echo"}, {"id": "chat"}]},
        }
        await broker.produce(topics.input, keyed([make_event(1)]))
        daemon = DaemonProcess(broker, topics, config, tmp_path, "secrets")
        daemon.env.update(secrets)
        daemon.start()
        try:
            await wait_until(lambda: daemon.get("/readyz")[0] == 200, 60)
            results = await broker.read(topics.results, expect=3, timeout=60)
            dead = await broker.read(topics.dlq, expect=3, timeout=30)
            retries = await broker.read(topics.retry, expect=1, timeout=10)
            listed = daemon.get("/api/crm/integrations")
            code, _ = daemon.terminate()
        finally:
            daemon.stop()
    assert code == 0
    statuses = {orjson.loads(r.value)["integrationId"]: orjson.loads(r.value)["status"] for r in results}
    assert statuses == {"down": "failed", "echo": "failed", "chat": "failed"}
    exits: list[tuple[str, bytes]] = [("result", r.value) for r in results]
    exits += [("retry", r.value) for r in retries]
    exits += [("retry header", v) for r in retries for _, v in r.headers]
    exits += [(f"dlq header {k}", v) for r in dead for k, v in r.headers]
    exits += [("api", listed[1]), ("log", daemon.log().encode())]
    for name, secret in secrets.items():
        for where, data in exits:
            assert secret.encode() not in data, f"{name} leaked into the {where}: {data[:400]!r}"
    assert len(dead) == 3 and retries and listed[0] == 200
    down = next(orjson.loads(r.value) for r in results if b'"down"' in r.value)
    assert f"127.0.0.1:{closed}" in down["error"]["message"]  # the host is kept, its userinfo is not
    hook_url = next(i for i in orjson.loads(listed[1]) if i["id"] == "down")["config"]["endpoints"]["url"]
    assert hook_url == f"http://[REDACTED]@127.0.0.1:{closed}/hook?code=[REDACTED]&team=ops"

    codes = {dict(r.headers)["octopus-integration"]: dict(r.headers)["octopus-error-code"] for r in dead}
    assert codes == {b"down": b"connect", b"echo": b"http_400", b"chat": b"error_[REDACTED]"}
