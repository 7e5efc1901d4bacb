"""The seed's configure and candidate test-connection: validated like validate-config, the URL
guard, short timeouts, secrets write-only (kept in 0600 files, answered as ``***``), versions kept,
409 where the file cannot be written, and the dry run's routes and rendered bodies."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from octopus_crm.daemon.admin import AdminServer
from octopus_crm.daemon.config import load_config, parse_config
from octopus_crm.daemon.consumer import Health
from octopus_crm_sandbox.jira import JiraFake
from octopus_crm_sandbox.kit import SandboxServer
from tests.events import webhook_config

TOKEN = "admin-token-3c9e1b77d2"
MAPPING = {"issue": {"project": "SUP", "issuetype": "Task", "summary": "{{category}} - {{messageContent|truncate:80}}"}}


def jira_candidate(fake: JiraFake, **credentials: str) -> dict[str, Any]:
    return {
        "type": "jira",
        "config": {
            "authType": "basic",
            "credentials": {**fake.accepted, **credentials},
            "endpoints": fake.endpoints(),
            "mappings": MAPPING,
        },
    }


def read(path: Path) -> bytes:
    return path.read_bytes()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def post(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        async with self.session.post(f"{self.base}{path}", json=body) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.base}{path}") as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def jira() -> AsyncIterator[JiraFake]:
    fake = JiraFake()
    async with SandboxServer(fake):
        yield fake


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "crm-config.json"
    tree = webhook_config({"hook": "https://hooks.example.com/a"})
    del tree["strategy"]  # every enabled integration gets every event: a new one is reached at once
    path.write_bytes(orjson.dumps(tree))
    return path


@pytest.fixture
async def api(config_file: Path) -> AsyncIterator[Api]:
    config = parse_config(orjson.loads(read(config_file)), env={})
    server = AdminServer(
        health=Health(), config=config, host="127.0.0.1", port=0, api_port=0, token=TOKEN, config_path=str(config_file)
    )
    await server.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            yield Api(session, f"http://127.0.0.1:{server.api_port}")
    finally:
        await server.stop()


async def test_candidate_test_connection_reads_and_reports_the_vendors_error(jira: JiraFake, api: Api) -> None:
    ok = await api.post("/api/crm/test-connection", jira_candidate(jira))
    wrong = await api.post("/api/crm/test-connection", jira_candidate(jira, apiToken="not-the-token"))
    assert ok[0] == 200 and ok[1]["success"] is True and ok[1]["latencyMs"] >= 0
    assert wrong[0] == 200 and wrong[1]["success"] is False
    assert wrong[1]["error"]["class"] == "auth" and wrong[1]["error"]["code"]
    assert "not-the-token" not in orjson.dumps(wrong[1]).decode()
    assert [r.path for r in jira.requests] == ["/rest/api/3/myself"] * 2  # a read, never a create


async def test_candidate_goes_through_the_url_guard_and_is_validated_like_the_file(jira: JiraFake, api: Api) -> None:
    private = jira_candidate(jira)
    private["config"]["endpoints"] = {"baseUrl": jira.base_url}  # loopback without allowPrivateNetwork
    blocked = await api.post("/api/crm/test-connection", private)
    metadata = jira_candidate(jira)
    metadata["config"]["endpoints"] = {"baseUrl": "http://169.254.169.254/latest"}
    link_local = await api.post("/api/crm/test-connection", metadata)
    scheme = jira_candidate(jira)
    scheme["config"]["endpoints"] = {"baseUrl": "file:///etc/passwd", "allowPrivateNetwork": True}
    not_http = await api.post("/api/crm/test-connection", scheme)
    typo = jira_candidate(jira)
    typo["config"]["credentials"]["apiTokn"] = "x"
    unknown_key = await api.post("/api/crm/test-connection", typo)
    reference = jira_candidate(jira, apiToken="${file:/etc/hostname}")
    refused_ref = await api.post("/api/crm/test-connection", reference)
    unknown_type = await api.post("/api/crm/test-connection", {"type": "nope", "config": {}})
    for status, body in (blocked, link_local, not_http, unknown_key, refused_ref, unknown_type):
        assert status == 400 and body["success"] is False, body
    assert "allowPrivateNetwork" in blocked[1]["errors"][0]["message"]
    assert "link-local" in link_local[1]["errors"][0]["message"]
    assert "http(s)" in not_http[1]["errors"][0]["message"]
    assert unknown_key[1]["errors"][0]["path"] == "config.credentials.apiTokn"
    assert "not accepted" in refused_ref[1]["errors"][0]["message"]
    assert "unknown integration type" in unknown_type[1]["errors"][0]["message"]
    assert not jira.requests


async def test_configure_dry_run_routes_sample_events_without_calling_the_vendor(jira: JiraFake, api: Api) -> None:
    status, body = await api.post("/api/crm/configure", {**jira_candidate(jira), "id": "jira-1", "dryRun": True})
    assert status == 200 and body["dryRun"] is True and body["integrationId"] == "jira-1" and body["created"]
    bodies = [step for r in body["results"] for route in r["routes"] for step in route["chain"]]
    jira_steps = [s for s in bodies if s["integrationId"] == "jira-1"]
    assert jira_steps and all(s["body"]["project"] == "SUP" or "fields" in s["body"] for s in jira_steps)
    assert {s["integrationId"] for s in bodies} == {"hook", "jira-1"}  # the default strategy: every enabled one
    assert body["reached"] is True
    assert not jira.requests
    given = [{**_event(), "eventId": "e-given"}]
    status, body = await api.post(
        "/api/crm/configure", {**jira_candidate(jira), "id": "jira-1", "dryRun": True, "events": given}
    )
    assert status == 200 and [r["eventId"] for r in body["results"]] == ["e-given"]


def _event() -> dict[str, Any]:
    from octopus_crm.daemon.admin_config import sample_events

    return dict(sample_events()[0])


async def test_configure_writes_a_version_with_secrets_apart(jira: JiraFake, api: Api, config_file: Path) -> None:
    original = read(config_file)
    status, body = await api.post("/api/crm/configure", {**jira_candidate(jira), "enabled": True, "name": "支持"})
    assert status == 200 and body["success"] and body["integrationId"] == "jira" and body["created"]
    assert body["integration"]["config"]["credentials"] == {"email": "***", "apiToken": "***"}
    token = jira.accepted["apiToken"]
    written = read(config_file).decode()
    assert token not in written  # the secret lives in its own file, referenced as ${file:…}
    entry = next(e for e in orjson.loads(written)["crmIntegrations"] if e["id"] == "jira")
    assert entry["config"]["credentials"]["email"] == jira.accepted["email"]  # an identifier stays inline
    reference = entry["config"]["credentials"]["apiToken"]
    secret = Path(reference.removeprefix("${file:").removesuffix("}"))
    assert read(secret).decode() == token and mode(secret) == 0o600
    kept = sorted((config_file.parent / f".{config_file.name}.versions").glob("*"))
    assert [read(p) for p in kept] == [original]  # the previous version is kept
    assert body["version"] and load_config(config_file).integration("jira").config.secret("apiToken") == token
    listed = await api.get("/api/crm/integrations")
    assert token not in orjson.dumps(listed[1]).decode()

    # Secrets are write-only: "***" (or nothing) keeps the stored one; a test by id uses it.
    again = jira_candidate(jira, apiToken="***")
    status, body = await api.post("/api/crm/configure", {**again, "id": "jira", "name": "Support"})
    assert status == 200 and not body["created"]
    entry = next(e for e in orjson.loads(read(config_file))["crmIntegrations"] if e["id"] == "jira")
    assert entry["config"]["credentials"]["apiToken"] == reference and entry["name"] == "Support"
    tested = await api.post("/api/crm/test-connection", {**again, "id": "jira"})
    assert tested[1]["success"] is True

    # A rotated secret gets a file of its own: the versions kept still point at the old one.
    status, body = await api.post(
        "/api/crm/configure", {**jira_candidate(jira, apiToken="rotated-token"), "id": "jira"}
    )
    entry = next(e for e in orjson.loads(read(config_file))["crmIntegrations"] if e["id"] == "jira")
    rotated = Path(entry["config"]["credentials"]["apiToken"].removeprefix("${file:").removesuffix("}"))
    assert status == 200 and rotated != secret and read(rotated) == b"rotated-token" and read(secret).decode() == token


async def test_configure_refuses_invalid_and_read_only(jira: JiraFake, api: Api, config_file: Path) -> None:
    original = read(config_file)
    bad = jira_candidate(jira)
    bad["config"]["mappings"] = {"issue": {"summary": "{{nope"}}
    status, body = await api.post("/api/crm/configure", {**bad, "id": "jira-bad", "rules": {"match": "sometimes"}})
    assert status == 422 and body["success"] is False
    assert any(e["path"].startswith("crmIntegrations[1].rules.match") for e in body["errors"]), body
    assert read(config_file) == original

    # A ConfigMap mount: the directory holds ..data (a symlink to the current timestamped dir).
    os.symlink(config_file.parent, config_file.parent / "..data")
    status, body = await api.post("/api/crm/configure", jira_candidate(jira))
    assert status == 409 and "ConfigMap" in body["reason"] and "Git" in body["reason"]
    assert read(config_file) == original
    status, body = await api.post("/api/crm/configure", {**jira_candidate(jira), "dryRun": True})
    assert status == 200  # a dry run writes nothing, so a read-only file is fine


async def test_sync_status_and_openapi(api: Api) -> None:
    status, body = await api.get("/api/crm/sync-status/hook")
    assert status == 200 and body["delivered"] == 0 and body["pending"] == 0 and body["circuit"] == "unknown"
    assert (await api.get("/api/crm/sync-status/nope"))[0] == 404
    status, doc = await api.get("/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert {"/api/crm/configure", "/api/crm/test-connection", "/api/crm/sync-status/{integrationId}"} <= set(
        doc["paths"]
    )
