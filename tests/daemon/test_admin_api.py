"""The admin API: bearer token, JSON only, loopback without a token, rate-limited test calls that
never touch the delivery limiter and never create a record; probes stay open."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext
from octopus_crm.adapters.slack import SlackAdapter
from octopus_crm.adapters.webhook import WebhookAdapter
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.daemon.admin import AdminServer
from octopus_crm.daemon.config import parse_config
from octopus_crm.daemon.consumer import Health
from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.slack import SlackFake
from octopus_crm_sandbox.webhook import WebhookFake
from tests.adapters.seed import seed_config
from tests.events import make_event, webhook_config
from tests.process import DaemonProcess, wait_until

TOKEN = "admin-token-5d1f0c7e9a"


def probe_port_get(daemon: DaemonProcess, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}{path}", timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
async def test_api_needs_the_bearer_token_and_json_while_probes_stay_open(
    broker: Any, topics: Any, tmp_path: Path
) -> None:
    await broker.create(topics, partitions=1)
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    hook = WebhookFake()
    async with SandboxServer(hook):
        config = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        daemon = DaemonProcess(broker, topics, config, tmp_path, "admin", admin_token_file=token_file)
        daemon.start()
        try:
            await wait_until(lambda: daemon.get("/readyz")[0] == 200, 60)
            probes = [daemon.get(path)[0] for path in ("/metrics", "/healthz", "/readyz")]
            auth = {"Authorization": f"Bearer {TOKEN}"}
            anonymous = daemon.get("/api/crm/integrations")
            wrong = daemon.call("GET", "/api/crm/integrations", headers={"Authorization": "Bearer nope"})
            basic = daemon.call("GET", "/api/crm/integrations", headers={"Authorization": f"Basic {TOKEN}"})
            listed = daemon.call("GET", "/api/crm/integrations", headers=auth)
            anonymous_test = daemon.call(
                "POST", "/api/crm/test-connection", b'{"integrationId": "hook"}', {"Content-Type": "application/json"}
            )
            plain = daemon.call(
                "POST", "/api/crm/test-connection", b'{"integrationId": "hook"}', {**auth, "Content-Type": "text/plain"}
            )
            form = daemon.call("POST", "/api/crm/test-connection", b"integrationId=hook", auth)  # urlencoded
            tested = daemon.call(
                "POST",
                "/api/crm/test-connection",
                b'{"integrationId": "hook"}',
                {**auth, "Content-Type": "application/json"},
            )
            not_on_probe_port = probe_port_get(daemon, "/api/crm/integrations")
            code, _ = daemon.terminate()
        finally:
            daemon.stop()
    assert code == 0
    assert not_on_probe_port[0] == 404  # the open probe port serves no /api/* (4af3e8b: 200, anonymous)
    assert probes == [200, 200, 200]
    assert anonymous[0] == wrong[0] == basic[0] == anonymous_test[0] == 401
    assert TOKEN.encode() not in anonymous[1] + wrong[1]
    assert listed[0] == 200 and orjson.loads(listed[1])[0]["id"] == "hook"
    assert plain[0] == form[0] == 415
    assert tested[0] == 200
    answer = orjson.loads(tested[1])
    assert answer["success"] is False and answer["tested"] is False and "without posting" in answer["reason"]
    assert hook.deliveries == []  # neither the test call nor any rejected call reached the receiver
    assert TOKEN not in daemon.log()


async def test_without_a_token_the_api_is_loopback_only() -> None:
    config = parse_config(webhook_config({"hook": "https://hooks.example.com/a"}), env={})
    server = AdminServer(health=Health(), config=config, host="127.0.0.1", port=0, api_host="0.0.0.0", api_port=0)
    await server.start()
    try:
        assert server.api_host == "127.0.0.1"
        base = f"http://127.0.0.1:{server.api_port}/api/crm/integrations"
        async with aiohttp.ClientSession() as session:
            async with session.get(base) as local:
                assert local.status == 200
            async with session.get(base, headers={"Host": f"rebind.example:{server.api_port}"}) as rebound:
                assert rebound.status == 403  # a DNS-rebinding page addresses its own host name
            async with session.post(
                base.replace("integrations", "test-connection"), data=b'{"integrationId":"hook"}'
            ) as untyped:
                assert untyped.status == 415
            async with session.get(f"http://127.0.0.1:{server.port}/api/crm/integrations") as probe_port:
                assert probe_port.status == 404  # the probe port serves probes and metrics only
    finally:
        await server.stop()


def slack_event() -> ClassifiedMessage:
    return ClassifiedMessage.model_validate(make_event(1, category="客户服务"))


async def test_test_connection_is_rate_limited_unpaced_and_creates_nothing() -> None:
    slack_fake, hook_fake = SlackFake(), WebhookFake()
    async with SandboxServer(slack_fake, hook_fake):
        # One delivery a minute: a test call that spent the delivery budget would hold the create.
        slack_id, slack_config = seed_config("slack", slack_fake, rateLimit={"requests": 1, "perSeconds": 60})
        slack = SlackAdapter(slack_id, slack_config)
        hook_config = parse_config(webhook_config({"hook": f"{hook_fake.base_url}/hooks/a"}), env={})
        hook = WebhookAdapter("hook", hook_config.integration("hook").config)
        server = AdminServer(
            health=Health(),
            adapters={slack_id: slack, "hook": hook},
            host="127.0.0.1",
            port=0,
            api_port=0,
            token=TOKEN,
            test_connections_per_minute=3,
        )
        await server.start()
        url = f"http://127.0.0.1:{server.api_port}/api/crm/test-connection"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with aiohttp.ClientSession(headers=headers) as session:

                async def test(integration_id: str) -> tuple[int, dict[str, Any], str | None]:
                    async with session.post(url, json={"integrationId": integration_id}) as resp:
                        return resp.status, await resp.json(), resp.headers.get("Retry-After")

                answers = [await test(slack_id) for _ in range(4)]
                hook_answer = await test("hook")
            delivered = await asyncio.wait_for(
                slack.create(slack_event(), "message", DeliveryContext("k1", integration_id=slack_id)), 20
            )
        finally:
            await server.stop()
            await slack.aclose()
            await hook.aclose()
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert all(body["success"] and body["tested"] for _, body, _ in answers[:3])
    assert answers[3][2] is not None and int(answers[3][2]) >= 1
    auth_tests = [r for r in slack_fake.requests if r.path.endswith("/auth.test")]
    assert len(auth_tests) == 3  # the vendor's read call; nothing posted by the tests
    assert delivered.external_id and len(slack_fake.messages) == 1  # the one real delivery, not held
    assert hook_answer[0] == 200 and hook_answer[1]["tested"] is False
    assert hook_fake.deliveries == [] and not hook_fake.requests
