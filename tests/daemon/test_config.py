"""Configuration loading: the seed file, references, overlays and errors that name the key path."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from octopus_crm.adapters.registry import adapter_class
from octopus_crm.core.redaction import REDACTED, redact
from octopus_crm.daemon.config import ConfigFileError, load_config, parse_config
from octopus_crm_sandbox.registry import FAKES

ROOT = Path(__file__).resolve().parents[2]
SEED_PATH = ROOT / "examples" / "crm-config.seed.json"
SEED: dict[str, Any] = orjson.loads(SEED_PATH.read_bytes())
# Every fake's credentials (one per target of the seed file), with the seed's own six set by hand.
SEED_ENV = {
    **{name: value for fake in FAKES.values() for name, value in fake.ENV.items()},
    "SALESFORCE_CLIENT_ID": "sf-client",
    "SALESFORCE_CLIENT_SECRET": "sf-secret-1234",
    "SALESFORCE_USERNAME": "api@acme.example",
    "SALESFORCE_PASSWORD": "sf-password-1234",
    "HUBSPOT_TOKEN": "pat-na1-0000",
    "WEWORK_CORP_ID": "ww-corp",
    "WEWORK_AGENT_ID": "1000002",
    "WEWORK_SECRET": "ww-secret-1234",
    "JIRA_EMAIL": "bot@acme.example",
    "JIRA_API_TOKEN": "jira-token-1234",
    "SLACK_BOT_TOKEN": "xoxb-0000",
    "SMTP_USER": "octopus",
    "SMTP_PASSWORD": "smtp-password-1234",
}


def seed_for_registry() -> tuple[dict[str, Any], dict[str, str]]:
    """The seed; integrations whose type has no adapter yet become webhooks, referenced by id.

    Returns the tree and the swapped ``{type: integration id}`` (empty once every type exists).
    """
    seed = copy.deepcopy(SEED)
    swapped: dict[str, str] = {}
    for entry in seed["crmIntegrations"]:
        if adapter_class(entry["type"]) is None:
            swapped[entry["type"]] = entry["id"]
            entry["type"] = "webhook"
            entry["config"]["endpoints"] = {"url": f"https://hooks.example.com/{entry['id']}"}

    def ref(name: str) -> str:
        return swapped.get(name, name)

    def fix(strategy: dict[str, Any]) -> None:
        if strategy["strategy"] == "primary_backup":
            primary = strategy["primary"]
            if primary.get("type") in swapped:
                primary["id"] = ref(primary.pop("type"))
            fallback = primary.get("fallback")
            if isinstance(fallback, str):
                primary["fallback"] = ref(fallback)
            elif fallback:
                primary["fallback"] = [ref(f) for f in fallback]
        elif strategy["strategy"] == "category_routing":
            strategy["routes"] = {c: [ref(t) for t in ts] for c, ts in strategy["routes"].items()}
            if strategy.get("default"):
                strategy["default"] = [ref(t) for t in strategy["default"]]
        else:
            for target in strategy["targets"]:
                if target.get("type") in swapped:
                    target["id"] = ref(target.pop("type"))

    fix(seed["strategy"])
    for tenant in seed["tenants"].values():
        fix(tenant["strategy"])
    return seed, swapped


def errors_of(raw: dict[str, Any], **kw: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigFileError) as info:
        parse_config(raw, **kw)
    return info.value.errors


def hook(id_: str = "hook", url: str = "https://hooks.example.com/x", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": id_,
        "type": "webhook",
        "config": {
            "endpoints": {"url": url},
            "mappings": {"message": {"text": "{{messageContent}}"}},
        },
    }
    entry.update(extra)
    return entry


# -- the seed ---------------------------------------------------------------------------------


def test_seed_config_loads_with_its_environment() -> None:
    seed, swapped = seed_for_registry()
    config = parse_config(seed, env=SEED_ENV)
    assert [i.id for i in config.enabled][:6] == [  # the seed's six; more targets follow for the showcase
        "primary-crm",
        "backup-crm",
        "cn-wework",
        "tech-jira",
        "support-slack",
        "support-email",
    ]
    primary = config.integration("primary-crm")
    assert primary.config.secret("clientSecret") == "sf-secret-1234"
    assert primary.config.secret("password") == "sf-password-1234"
    assert config.integration("cn-wework").config.secret("agentId") == "1000002"
    # the seed's "wework" type is WeCom, and resolves as either name
    assert [i.id for i in config.resolve("wework")] == ["cn-wework"]
    assert [i.id for i in config.resolve("wecom")] == ["cn-wework"]
    assert config.strategy is not None and config.strategy.strategy == "primary_backup"
    tenant_strategies = {name: t.strategy.strategy for name, t in config.tenants.items() if t.strategy}
    assert tenant_strategies == {
        "t-support-desk": "category_routing",
        "t-enterprise": "parallel_sync",
        "t-showcase": "parallel_sync",
    }
    if swapped:  # reported by the test run, so nobody mistakes this for full seed coverage
        print(f"seed types without an adapter, loaded as webhooks: {sorted(swapped)}")


def test_unmodified_seed_fails_only_on_unregistered_types() -> None:
    missing = [
        (f"crmIntegrations[{i}].type", e["type"])
        for i, e in enumerate(SEED["crmIntegrations"])
        if adapter_class(e["type"]) is None
    ]
    if not missing:
        assert parse_config(SEED, env=SEED_ENV).integration("tech-jira").type == "jira"
        return
    errors = errors_of(SEED, env=SEED_ENV)
    assert [path for path, _ in errors] == [path for path, _ in missing]
    for (_, message), (_, type_name) in zip(errors, missing, strict=True):
        assert f"unknown integration type {type_name!r}" in message


def test_missing_environment_variables_are_all_listed_with_their_paths() -> None:
    seed, _ = seed_for_registry()
    env = {k: v for k, v in SEED_ENV.items() if k not in ("SALESFORCE_CLIENT_SECRET", "SLACK_BOT_TOKEN")}
    errors = errors_of(seed, env=env)
    assert errors == [
        (
            "crmIntegrations[0].config.credentials.clientSecret",
            "environment variable SALESFORCE_CLIENT_SECRET is not set",
        ),
        (
            "crmIntegrations[4].config.credentials.token",
            "environment variable SLACK_BOT_TOKEN is not set",
        ),
    ]


# -- references ---------------------------------------------------------------------------------


def test_env_references_with_defaults() -> None:
    raw = {
        "crmIntegrations": [
            hook(
                url="https://${HOOK_HOST:-hooks.example.com}/v1/${HOOK_PATH}",
                config={
                    "endpoints": {"url": "https://${HOOK_HOST:-hooks.example.com}/v1/${HOOK_PATH}"},
                    "headers": {"X-Env": "${DEPLOY_ENV:-}", "X-Team": "${TEAM:-support}"},
                },
            )
        ]
    }
    config = parse_config(raw, env={"HOOK_PATH": "octopus", "TEAM": "sales"})
    cfg = config.integration("hook").config
    assert cfg.endpoints["url"] == "https://hooks.example.com/v1/octopus"
    assert cfg.extra("headers") == {"X-Env": "", "X-Team": "sales"}


def test_only_credential_headers_are_registered_for_redaction() -> None:
    team, key = f"team-{uuid.uuid4().hex[:6]}", f"key-{uuid.uuid4().hex}"
    headers = {"X-Team": "${TEAM}", "X-Api-Key": "${KEY}"}
    entry = hook()
    entry["config"]["headers"] = headers
    parse_config({"crmIntegrations": [entry]}, env={"TEAM": team, "KEY": key})
    assert redact(f"{team} {key}") == f"{team} {REDACTED}"  # a team name stays readable everywhere


def test_file_references_read_mounted_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret-from-file\n", encoding="utf-8")
    raw = {"crmIntegrations": [hook()]}
    raw["crmIntegrations"][0]["config"]["credentials"] = {"token": f"${{file:{secret}}}"}
    config = parse_config(raw, env={})
    assert config.integration("hook").config.secret("token") == "s3cret-from-file"

    raw["crmIntegrations"][0]["config"]["credentials"] = {"token": f"${{file:{tmp_path}/absent}}"}
    errors = errors_of(raw, env={})
    assert len(errors) == 1
    path, message = errors[0]
    assert path == "crmIntegrations[0].config.credentials.token"
    assert "cannot read secret file" in message and "absent" in message


def test_references_outside_secret_bearing_fields_are_errors(tmp_path: Path) -> None:
    hostname = tmp_path / "hostname"
    hostname.write_text("build-node-7\n", encoding="utf-8")
    entry = hook(name=f"${{file:{hostname}}}")
    entry["config"]["mappings"] = {"message": {"text": "{{messageContent}} from ${HOME}"}}
    entry["config"]["timeouts"] = {"read": "${READ_TIMEOUT:-5}"}
    raw = {"crmIntegrations": [entry], "tenants": {"t": {"integrations": ["${TENANT_TARGET:-hook}"]}}}
    errors = errors_of(raw, env={"HOME": "/home/octopus"})
    assert sorted(path for path, _ in errors) == [
        "crmIntegrations[0].config.mappings.message.text",
        "crmIntegrations[0].config.timeouts.read",
        "crmIntegrations[0].name",
        "tenants.t.integrations[0]",
    ]
    assert all("resolved only in secret-bearing fields" in message for _, message in errors)


def test_secret_bearing_fields_resolve_and_register_each_part(tmp_path: Path) -> None:
    password, code = f"pw-{uuid.uuid4().hex}", f"code-{uuid.uuid4().hex}"
    bearer = f"hdr-{uuid.uuid4().hex}"
    entry = hook(url="https://ops:${HOOK_PASSWORD}@hooks.example.com/x?code=${HOOK_CODE}&team=support")
    entry["config"]["headers"] = {"Authorization": "Bearer ${HOOK_BEARER}"}
    config = parse_config(
        {"crmIntegrations": [entry]}, env={"HOOK_PASSWORD": password, "HOOK_CODE": code, "HOOK_BEARER": bearer}
    )
    url = config.integration("hook").config.endpoints["url"]
    assert password in url and code in url
    assert redact(f"no answer from {password}; {code}; token {bearer}") == (
        f"no answer from {REDACTED}; {REDACTED}; token {REDACTED}"
    )
    assert redact(url) == f"https://{REDACTED}@hooks.example.com/x?code={REDACTED}&team=support"


# -- errors naming the path ---------------------------------------------------------------------


def test_unknown_type() -> None:
    errors = errors_of({"crmIntegrations": [hook(), {"id": "zd", "type": "sugarcrm"}]}, env={})
    assert len(errors) == 1
    assert errors[0][0] == "crmIntegrations[1].type"
    assert errors[0][1].startswith("unknown integration type 'sugarcrm'; known: ")
    assert "webhook" in errors[0][1]


def test_duplicate_id() -> None:
    errors = errors_of({"crmIntegrations": [hook("a"), hook("b"), hook("a")]}, env={})
    assert len(errors) == 1
    assert "crmIntegrations[2].id" in " ".join(errors[0])
    assert "duplicate id 'a'" in errors[0][1]


def test_bad_strategy_references() -> None:
    raw = {
        "crmIntegrations": [hook("a"), hook("b")],
        "strategy": {
            "strategy": "primary_backup",
            "primary": {"type": "salesforce-x", "fallback": ["b", "nope"]},
        },
        "tenants": {
            "t1": {
                "strategy": {
                    "strategy": "category_routing",
                    "routes": {"技术支持": ["jira-x"], "销售线索": ["a"]},
                    "default": ["ghost"],
                }
            },
            "t2": {
                "strategy": {
                    "strategy": "parallel_sync",
                    "targets": [{"id": "a"}, {"type": "slack-x"}],
                }
            },
            "t3": {"integrations": ["a", "missing"]},
        },
    }
    errors = errors_of(raw, env={})
    assert sorted(errors) == sorted(
        [
            ("strategy.primary", "no enabled integration with id or type 'salesforce-x'"),
            ("strategy.primary.fallback[1]", "no enabled integration with id or type 'nope'"),
            (
                "tenants.t1.strategy.routes.技术支持[0]",
                "no enabled integration with id or type 'jira-x'",
            ),
            ("tenants.t1.strategy.default[0]", "no enabled integration with id or type 'ghost'"),
            ("tenants.t2.strategy.targets[1]", "no enabled integration with id or type 'slack-x'"),
            ("tenants.t3.integrations[1]", "no enabled integration 'missing'"),
        ]
    )


def test_bad_regex_condition() -> None:
    entry = hook(rules={"conditions": [{"field": "content", "operator": "regex", "value": "(unclosed"}]})
    errors = errors_of({"crmIntegrations": [entry]}, env={})
    assert len(errors) == 1
    assert errors[0][0] == "crmIntegrations[0].rules.conditions[0]"
    assert "invalid regex '(unclosed'" in errors[0][1]


def test_unknown_operator_and_strategy() -> None:
    entry = hook(rules={"conditions": [{"field": "category", "operator": "like", "value": "x"}]})
    errors = errors_of({"crmIntegrations": [entry], "strategy": {"strategy": "round_robin"}}, env={})
    paths = [p for p, _ in errors]
    assert "crmIntegrations[0].rules.conditions[0].operator" in paths
    assert "strategy" in paths


def test_bad_template_in_a_mapping() -> None:
    entry = hook()
    entry["config"]["mappings"]["message"]["text"] = "{{senderNmae}}: {{messageContent}}"
    errors = errors_of({"crmIntegrations": [hook("ok"), entry]}, env={})
    assert len(errors) == 1
    path, message = errors[0]
    assert path == "crmIntegrations[1].config"
    assert message.startswith("mappings.message.text: unknown template variable 'senderNmae'")


def test_several_errors_are_reported_together() -> None:
    raw = {
        "crmIntegrations": [
            hook("a", rules={"conditions": [{"field": "x", "operator": "regex", "value": "["}]}),
            {"id": "b", "type": "nosuch"},
            {"id": "c d", "type": "webhook"},
        ]
    }
    paths = sorted(p for p, _ in errors_of(raw, env={}))
    assert paths == [
        "crmIntegrations[0].rules.conditions[0]",
        "crmIntegrations[1].type",
        "crmIntegrations[2].id",
    ]


# -- files, YAML and overlays -------------------------------------------------------------------


def test_yaml_and_json_files_load_the_same(tmp_path: Path) -> None:
    seed, _ = seed_for_registry()
    as_json = tmp_path / "crm.json"
    as_yaml = tmp_path / "crm.yaml"
    as_json.write_bytes(orjson.dumps(seed))
    as_yaml.write_text(yaml.safe_dump(seed, allow_unicode=True), encoding="utf-8")
    from_json = load_config(as_json, env=SEED_ENV)
    from_yaml = load_config(as_yaml, env=SEED_ENV)
    assert from_yaml == from_json
    assert from_yaml.integration("backup-crm").config.mappings["ticket"]["subject"] == (
        "{{category}} - {{messageContent|truncate:50}}"
    )


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config(tmp_path / "absent.json", env={})
    assert "cannot read" in str(info.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("crmIntegrations: [\n", encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        load_config(broken, env={})
    assert "not valid YAML" in str(info.value)
    listed = tmp_path / "list.json"
    listed.write_text("[]", encoding="utf-8")
    with pytest.raises(ConfigFileError, match="top level must be an object"):
        load_config(listed, env={})


def test_overlay_merges_lists_of_objects_by_id(tmp_path: Path) -> None:
    base = {
        "crmIntegrations": [hook("a", priority=1), hook("b", priority=2, name="B")],
        "strategy": {"strategy": "parallel_sync", "targets": [{"id": "a"}, {"id": "b"}]},
        "tenants": {"t1": {"integrations": ["a", "b"]}},
    }
    overlay = {
        "crmIntegrations": [
            {"id": "b", "enabled": False, "name": None},
            {"id": "a", "config": {"endpoints": {"url": "https://staging.example.com/a"}}},
            hook("c", priority=0),
        ],
        "strategy": {"targets": [{"id": "c", "objects": ["message"]}]},
        "tenants": {"t1": {"integrations": ["c"]}},
    }
    base_path = tmp_path / "base.json"
    overlay_path = tmp_path / "staging.yaml"
    base_path.write_bytes(orjson.dumps(base))
    overlay_path.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    config = load_config(base_path, overlay_path=overlay_path, env={})
    assert [i.id for i in config.crmIntegrations] == ["a", "b", "c"]
    assert [i.id for i in config.enabled] == ["c", "a"]
    a = config.integration("a")
    assert a.config.endpoints == {"url": "https://staging.example.com/a"}
    assert a.config.mappings == {"message": {"text": "{{messageContent}}"}}  # kept from base
    assert config.integration("b").name is None  # null deletes a key
    assert config.strategy is not None and config.strategy.strategy == "parallel_sync"
    assert [(t.id, t.objects) for t in config.strategy.targets] == [
        ("a", None),
        ("b", None),
        ("c", ["message"]),
    ]
    assert config.tenants["t1"].integrations == ["c"]  # lists of plain values are replaced


def test_inline_overlay_wins_over_overlay_file(tmp_path: Path) -> None:
    base_path = tmp_path / "base.json"
    base_path.write_bytes(orjson.dumps({"crmIntegrations": [hook("a", priority=1)]}))
    overlay_path = tmp_path / "o.json"
    overlay_path.write_bytes(orjson.dumps({"crmIntegrations": [{"id": "a", "priority": 5}]}))
    config = load_config(
        base_path,
        overlay_path=overlay_path,
        overlay={"crmIntegrations": [{"id": "a", "priority": 9}]},
        env={},
    )
    assert config.integration("a").priority == 9


# -- validate-config CLI ------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(tuple(SEED_ENV))}
    return subprocess.run(
        [sys.executable, "-m", "octopus_crm.daemon.cli", "validate-config", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_config_cli(tmp_path: Path) -> None:
    seed, _ = seed_for_registry()
    good = tmp_path / "seed.json"
    good.write_bytes(orjson.dumps(seed))

    ok = run_cli(str(good), env=SEED_ENV)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and f"{len(seed['crmIntegrations'])} enabled integrations" in ok.stdout
    assert "primary_backup" in ok.stdout

    missing = run_cli(str(good))
    assert missing.returncode == 1
    assert (
        "crmIntegrations[0].config.credentials.clientId: environment variable SALESFORCE_CLIENT_ID is not set"
    ) in missing.stderr
    assert "Traceback" not in missing.stderr

    structure_only = run_cli(str(good), "--allow-missing-env")
    assert structure_only.returncode == 0, structure_only.stderr

    # Structure-only validation still honours ${NAME:-default}; a reference outside the
    # secret-bearing fields is an error naming its key, with or without the environment.
    typed = tmp_path / "typed.json"
    entry = hook(url="https://${HOOK_HOST:-hooks.example.com}/x")
    entry["config"]["credentials"] = {"token": "${HOOK_TOKEN:-dev-token}"}
    typed.write_bytes(orjson.dumps({"crmIntegrations": [entry]}))
    defaulted = run_cli(str(typed), "--allow-missing-env")
    assert defaulted.returncode == 0, defaulted.stderr
    entry["config"]["rateLimit"] = {"requests": "${HOOK_RATE:-10}"}
    typed.write_bytes(orjson.dumps({"crmIntegrations": [entry]}))
    referenced = run_cli(str(typed), "--allow-missing-env")
    assert referenced.returncode == 1
    assert "crmIntegrations[0].config.rateLimit.requests: ${...} references are resolved only" in referenced.stderr

    bad = copy.deepcopy(seed)
    bad["strategy"]["primary"] = {"id": "no-such-crm"}
    bad_path = tmp_path / "bad.json"
    bad_path.write_bytes(orjson.dumps(bad))
    invalid = run_cli(str(bad_path), "--allow-missing-env")
    assert invalid.returncode == 1
    assert f"invalid configuration in {bad_path}" in invalid.stderr
    assert "strategy.primary: no enabled integration with id or type 'no-such-crm'" in invalid.stderr
    assert "Traceback" not in invalid.stderr


# -- hostile files -------------------------------------------------------------------------------


def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"crmIntegrations: *a{levels}", ""])


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("bomb.yaml", _alias_bomb(9), "YAML aliases (*name) are not allowed (line 2, column 10)"),
        (
            "deep.yaml",
            "crmIntegrations: " + "[" * 5000 + "]" * 5000 + "\n",
            "nested deeper than 64 levels (line 1, column 81)",
        ),
        ("deep.json", '{"crmIntegrations": ' + "[" * 800 + "]" * 800 + "}", "nested deeper than 64 levels"),
        ("big.json", '{"crmIntegrations": [], "pad": "' + "a" * (1024 * 1024) + '"}', "larger than 1024 KiB"),
    ],
)
def test_validate_config_refuses_hostile_files_with_one_line(
    tmp_path: Path, name: str, content: str, reason: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    done = run_cli(str(path))
    assert done.returncode == 1, done.stdout
    assert done.stderr.splitlines() == [f"invalid configuration in {path}:", f"  <root>: {reason}"]


def test_an_overlay_is_held_to_the_same_limits(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_bytes(orjson.dumps({"crmIntegrations": [hook()]}))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(_alias_bomb(3), encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        load_config(base, env={}, overlay_path=overlay)
    assert info.value.errors == [("", f"overlay {overlay}: YAML aliases (*name) are not allowed (line 2, column 10)")]


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=urgent)", r"(?<!not )urgent"])
def test_regex_conditions_re2_cannot_run_are_refused_at_load(pattern: str) -> None:
    entry = hook(rules={"conditions": [{"field": "content", "operator": "regex", "value": pattern}]})
    errors = errors_of({"crmIntegrations": [entry]}, env={})
    assert [path for path, _ in errors] == ["crmIntegrations[0].rules.conditions[0]"]
    assert f"invalid regex {pattern!r}" in errors[0][1] and "RE2" in errors[0][1]


@pytest.mark.parametrize(
    "url,reason",
    [
        # a value of a secret-bearing field without a scheme is registered whole: it may be a token
        ("not a url", "'[REDACTED]' is not an http(s) URL"),
        ("file:///etc/passwd", "'file:///etc/passwd' is not an http(s) URL"),
        ("gopher://example.com/", "'gopher://example.com/' is not an http(s) URL"),
        ("http://169.254.169.254/", "'http://169.254.169.254/' points at a link-local address"),
    ],
)
def test_validate_config_refuses_urls_that_are_not_public_http(tmp_path: Path, url: str, reason: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(orjson.dumps({"crmIntegrations": [hook(url=url)]}))
    done = run_cli(str(path))
    assert done.returncode == 1, done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"  crmIntegrations[0].config: endpoints.url: {reason}")
    assert "Traceback" not in done.stderr


def test_a_refused_url_is_reported_without_its_secrets(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    url = "http://ops:${HOOK_PASSWORD}@10.0.0.5/hook?code=${HOOK_CODE}&team=ops"
    path.write_bytes(orjson.dumps({"crmIntegrations": [hook(url=url)]}))
    done = run_cli(str(path), env={"HOOK_PASSWORD": "pw-canary-7731", "HOOK_CODE": "code-canary-9912"})
    assert done.returncode == 1 and "private address" in done.stderr
    assert "canary" not in done.stderr + done.stdout
    assert "10.0.0.5/hook?code=[REDACTED]&team=ops" in done.stderr


def test_a_private_network_integration_says_so_explicitly() -> None:
    entry = hook(url="http://10.1.2.3/hooks/x")
    assert any("allowPrivateNetwork" in m for _, m in errors_of({"crmIntegrations": [entry]}, env={}))
    entry["config"]["endpoints"]["allowPrivateNetwork"] = True
    parse_config({"crmIntegrations": [entry]}, env={})
    entry["config"]["endpoints"]["allowPrivateNetwork"] = "${ALLOW_PRIVATE:-true}"  # not secret-bearing
    assert any("references are resolved only" in m for _, m in errors_of({"crmIntegrations": [entry]}, env={}))
