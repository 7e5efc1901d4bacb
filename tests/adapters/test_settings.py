"""Typed per-vendor settings: unknown keys refused with a suggestion, the seed's spellings
accepted, each vendor's JSON Schema served, and the README's table generated from the models."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from octopus_crm.adapters.base import IntegrationConfig
from octopus_crm.adapters.feishu import FeishuAdapter
from octopus_crm.adapters.registry import ADAPTERS, describe
from octopus_crm.core.errors import ConfigError
from octopus_crm.daemon.admin import AdminServer
from octopus_crm.daemon.config import ConfigFileError, parse_config
from octopus_crm.daemon.consumer import Health
from tests.events import webhook_config

ROOT = Path(__file__).resolve().parents[2]


def jira(**config: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "authType": "basic",
        "credentials": {"email": "ops@example.com", "apiToken": "t0k"},
        "endpoints": {"baseUrl": "https://acme.atlassian.net"},
        "mappings": {"issue": {"summary": "{{messageContent}}"}},
    }
    for key, value in config.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return {"crmIntegrations": [{"id": "j", "type": "jira", "config": base}]}


def errors_of(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigFileError) as info:
        parse_config(raw, env={})
    return info.value.errors


def test_a_misspelt_key_is_refused_with_a_did_you_mean() -> None:
    config = jira(credentials={"apiTokn": "x"})
    assert errors_of(config) == [
        ("crmIntegrations[0].config.credentials.apiTokn", "unknown key; did you mean credentials.apiToken?")
    ]
    assert errors_of(jira(dedupLabel=False)) == [
        ("crmIntegrations[0].config.dedupLabel", "unknown key; did you mean dedupeLabel?")
    ]


def test_a_key_in_the_wrong_section_names_the_right_one() -> None:
    [(path, message)] = errors_of(jira(endpoints={"apiToken": "x"}))
    assert path == "crmIntegrations[0].config.endpoints.apiToken"
    assert message == "unknown key; did you mean credentials.apiToken?"


def test_a_key_nothing_resembles_lists_the_known_ones() -> None:
    [(_, message)] = errors_of(jira(zzzz=1))
    assert message.startswith("unknown key (known: adfFields, authType, credentials, dedupeLabel")


def test_a_wrongly_typed_setting_names_its_key() -> None:
    [(path, message)] = errors_of(jira(adfFields="description"))
    assert path == "crmIntegrations[0].config.adfFields"
    assert "list" in message


def test_the_seeds_spellings_are_accepted_and_typed() -> None:
    config = IntegrationConfig.model_validate(
        {
            "credentials": {"app_id": "cli_1", "app_secret": "s3cret"},
            "app_token": "bascn1",
            "table_id": "tbl1",
            "mappings": {"bitable_record": {"fields": {"标题": "{{messageContent}}"}}},
        }
    )
    adapter = FeishuAdapter("f", config)
    settings = adapter.settings
    assert settings is not None
    assert settings.credentials.appId == "cli_1"  # type: ignore[attr-defined]
    assert settings.credentials.appSecret.get_secret_value() == "s3cret"  # type: ignore[attr-defined]
    assert "s3cret" not in repr(settings)
    assert settings.appToken == "bascn1"  # type: ignore[attr-defined]


def test_the_shipped_examples_validate() -> None:
    for path in [*sorted((ROOT / "examples").glob("*config*.json")), ROOT / "deploy/k8s/crm-config.json"]:
        raw = orjson.loads(path.read_bytes())
        for entry in raw["crmIntegrations"]:
            cls = ADAPTERS[entry["type"]]
            assert cls.settings_model is not None
            try:
                cls.settings_model.model_validate(entry.get("config", {}))
            except ValueError as exc:  # pragma: no cover - the assertion message is the point
                raise AssertionError(f"{path.name} {entry['id']}: {exc}") from None


def test_every_vendor_declares_settings_and_serves_their_schema() -> None:
    for row in describe():
        schema = row["settings"]
        assert schema is not None, row["type"]
        assert schema["additionalProperties"] is False
        assert schema["properties"]["authType"]["anyOf"][0]["enum"] == row["authTypes"]
        credentials = schema["$defs"][schema["properties"]["credentials"]["$ref"].rsplit("/", 1)[-1]]
        secrets = [
            name
            for name, prop in credentials["properties"].items()
            if any(option.get("writeOnly") for option in prop.get("anyOf", [prop]))
        ]
        assert secrets, f"{row['type']} declares no secret credential"


def test_octopus_crm_adapters_json_serves_the_schemas() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "octopus_crm.daemon.cli", "adapters", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = orjson.loads(out.stdout)
    jira_row = next(r for r in rows if r["type"] == "jira")
    credentials = jira_row["settings"]["$defs"]["JiraCredentials"]["properties"]
    assert credentials["apiToken"]["x-aliases"] == ["api_token"]


async def test_the_supported_endpoint_serves_the_schemas() -> None:
    config = parse_config(webhook_config({"hook": "https://hooks.example.com/a"}), env={})
    server = AdminServer(health=Health(), config=config, host="127.0.0.1", port=0, api_host="127.0.0.1", api_port=0)
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.api_port}/api/crm/supported") as resp,
        ):
            assert resp.status == 200
            rows = await resp.json()
    finally:
        await server.stop()
    hubspot = next(r for r in rows if r["type"] == "hubspot")
    assert "portalId" in hubspot["settings"]["$defs"]["HubSpotEndpoints"]["properties"]


def test_an_unknown_key_is_a_config_error_for_a_directly_built_adapter() -> None:
    config = IntegrationConfig.model_validate({"credentials": {"appId": "a", "appSecert": "b"}})
    with pytest.raises(ConfigError, match=r"credentials.appSecert: unknown key; did you mean credentials.appSecret\?"):
        FeishuAdapter("f", config)


def test_the_readme_table_is_generated_from_the_settings_models() -> None:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "docs" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert module.BEGIN in readme
    assert module.replaced(readme) == readme, "README drifted: run python docs/settings_table.py --write"
