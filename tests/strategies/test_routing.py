"""Routing: which targets an event goes to under the seed's three strategies, tenants and rules."""

from __future__ import annotations

import copy
from typing import Any

from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.daemon.config import CrmConfig, parse_config
from octopus_crm.strategies.routing import Plan, Skip, Target, plan
from tests.daemon.test_config import SEED_ENV, seed_for_registry

BASE: dict[str, Any] = {
    "schemaVersion": 1,
    "eventId": "7d3f0a4e-2b7c-4f1e-9a53-0c1b2d3e4f50",
    "messageId": "msg-1",
    "tenantId": "t-acme",
    "platform": "telegram",
    "sender": {"id": "tg-5531", "name": "王小明", "email": "xiaoming@example.com"},
    "content": "你好，想了解企业版套餐的价格",
    "receivedAt": "2026-11-25T09:30:12Z",
    "classification": {"category": "销售线索", "confidence": 0.93, "priority": "high"},
}


def event(category: str = "销售线索", tenant: str = "t-acme", priority: str = "high") -> ClassifiedMessage:
    data = copy.deepcopy(BASE)
    data["tenantId"] = tenant
    data["classification"]["category"] = category
    data["classification"]["priority"] = priority
    return ClassifiedMessage.model_validate(data)


def seed() -> CrmConfig:
    raw, _ = seed_for_registry()
    return parse_config(raw, env=SEED_ENV)


SEED = seed()


def chains(p: Plan) -> list[list[str]]:
    """Each route as its chain of ``integration:object`` keys."""
    return [[t.key for t in route.chain] for route in p.routes]


def hook(id_: str, priority: int = 1, objects: tuple[str, ...] = ("message",), **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": id_,
        "type": "webhook",
        "priority": priority,
        "config": {
            "endpoints": {"url": f"https://hooks.example.com/{id_}"},
            "mappings": {o: {"text": "{{messageContent}}"} for o in objects},
        },
    }
    entry.update(extra)
    return entry


def config(*integrations: dict[str, Any], **rest: Any) -> CrmConfig:
    return parse_config({"crmIntegrations": list(integrations), **rest}, env={})


# -- primary_backup (the seed's default) --------------------------------------------------------


def test_seed_sales_lead_goes_to_salesforce_with_hubspot_backup() -> None:
    p = plan(SEED, event("销售线索"))
    assert p.strategy == "primary_backup"
    assert chains(p) == [["primary-crm:lead", "backup-crm:contact"]]
    assert p.routes[0].sync_back is True
    assert p.skips == ()


def test_seed_complaint_becomes_a_case_with_a_ticket_backup() -> None:
    p = plan(SEED, event("客户投诉"))
    assert chains(p) == [["primary-crm:case", "backup-crm:ticket"]]


def test_seed_primary_rules_exclude_support_so_the_backup_takes_it() -> None:
    p = plan(SEED, event("技术支持"))
    assert chains(p) == [["backup-crm:ticket"]]
    assert p.routes[0].sync_back is False
    assert len(p.skips) == 1
    skip = p.skips[0]
    assert skip.integration_id == "primary-crm"
    assert skip.reason.startswith("rules: category in")


def test_primary_backup_fallback_chain_in_order() -> None:
    cfg = config(
        hook("sf", 1, ("lead", "case")),
        hook("hs", 2, ("contact", "ticket")),
        hook("pd", 3, ("lead",)),
        strategy={"strategy": "primary_backup", "primary": {"id": "sf", "fallback": ["hs", "pd"]}},
    )
    p = plan(cfg, event("销售线索"))
    assert chains(p) == [["sf:lead", "hs:contact", "pd:lead"]]
    assert p.routes[0].primary == Target("sf", "webhook", "lead")
    assert p.routes[0].sync_back is False  # not asked for


def test_primary_with_two_objects_gets_the_backup_once() -> None:
    cfg = config(
        hook(
            "sf",
            1,
            ("lead", "case"),
            rules={"actions": [{"object": "lead"}, {"object": "case"}]},
        ),
        hook("hs", 2, ("ticket",)),
        strategy={"strategy": "primary_backup", "primary": {"id": "sf", "fallback": "hs"}},
    )
    assert chains(plan(cfg, event())) == [["sf:lead", "hs:ticket"], ["sf:case"]]


def test_if_primary_fails_fail_means_no_backup() -> None:
    cfg = config(
        hook("sf", 1),
        hook("hs", 2),
        strategy={
            "strategy": "primary_backup",
            "primary": {"id": "sf", "fallback": "hs"},
            "rules": {"if_primary_fails": "fail", "sync_back": True},
        },
    )
    p = plan(cfg, event())
    assert chains(p) == [["sf:message"]]
    assert p.routes[0].sync_back is False


def test_disabled_primary_leaves_the_backup_and_says_why() -> None:
    cfg = config(
        hook("sf", 1, enabled=False),
        hook("hs", 2),
        strategy={"strategy": "primary_backup", "primary": {"id": "sf", "fallback": "hs"}},
    )
    p = plan(cfg, event())
    assert chains(p) == [["hs:message"]]
    assert p.skips == (Skip(None, "sf", "integration 'sf' not enabled for tenant t-acme"),)


def test_primary_by_type_picks_the_highest_priority_one() -> None:
    cfg = config(
        hook("late", 5),
        hook("early", 2),
        strategy={"strategy": "primary_backup", "primary": {"type": "webhook"}},
    )
    assert chains(plan(cfg, event())) == [["early:message"]]


# -- category_routing -------------------------------------------------------------------------


def test_seed_support_desk_routes_by_category() -> None:
    desk = "t-support-desk"
    p = plan(SEED, event("销售线索", desk))
    assert p.strategy == "category_routing"
    assert chains(p) == [["primary-crm:lead"], ["backup-crm:contact"]]  # all: independent routes
    assert chains(plan(SEED, event("技术支持", desk))) == [["tech-jira:issue"]]
    assert chains(plan(SEED, event("客户服务", desk))) == [
        ["support-slack:message"],
        ["support-email:email"],
    ]
    # no route for 产品反馈: the seed's default route
    assert chains(plan(SEED, event("产品反馈", desk))) == [["support-slack:message"]]


def test_first_available_mode_makes_one_chain() -> None:
    cfg = config(
        hook("sf", 1, ("lead",)),
        hook("hs", 2, ("contact",)),
        strategy={
            "strategy": "category_routing",
            "mode": "first_available",
            "routes": {"销售线索": ["sf", "hs"]},
        },
    )
    assert chains(plan(cfg, event())) == [["sf:lead", "hs:contact"]]


def test_unknown_category_without_default_is_an_explicit_skip() -> None:
    cfg = config(
        hook("jira", 1, ("issue",)),
        strategy={"strategy": "category_routing", "routes": {"技术支持": ["jira"]}},
    )
    p = plan(cfg, event("产品反馈"))
    assert p.routes == ()
    assert p.skips == (Skip(None, None, "no route for category '产品反馈' and no default route"),)


def test_category_match_ignores_case() -> None:
    cfg = config(
        hook("jira", 1, ("issue",)),
        strategy={"strategy": "category_routing", "routes": {"Support": ["jira"]}, "default": []},
    )
    assert chains(plan(cfg, event("support"))) == [["jira:issue"]]
    empty_default = plan(cfg, event("sales"))
    assert empty_default.routes == ()
    assert [s.reason for s in empty_default.skips] == ["no target accepts this event"]


# -- parallel_sync ----------------------------------------------------------------------------


def test_seed_enterprise_parallel_sync() -> None:
    p = plan(SEED, event("销售线索", "t-enterprise"))
    assert p.strategy == "parallel_sync"
    assert chains(p) == [
        ["primary-crm:lead"],
        ["primary-crm:case"],
        ["support-slack:message"],
        ["support-email:email"],
    ]
    slack = p.routes[2].primary
    email = p.routes[3].primary
    assert slack.overrides == {"channel": "#customer-support"}
    assert email.overrides == {"to": ["support@company.com"]}


def test_parallel_sync_still_applies_each_integrations_rules() -> None:
    p = plan(SEED, event("技术支持", "t-enterprise"))
    assert chains(p) == [["support-slack:message"], ["support-email:email"]]
    assert [s.integration_id for s in p.skips] == ["primary-crm"]


def test_several_channels_are_separate_targets_with_distinct_keys() -> None:
    cfg = config(
        hook("slack", 1),
        strategy={
            "strategy": "parallel_sync",
            "targets": [{"id": "slack", "channels": ["#sales", "#vip"]}],
        },
    )
    p = plan(cfg, event())
    assert chains(p) == [["slack:message##sales"], ["slack:message##vip"]]
    assert [r.primary.overrides for r in p.routes] == [{"channel": "#sales"}, {"channel": "#vip"}]


def test_rule_overrides_and_target_extras_combine() -> None:
    cfg = config(
        hook(
            "slack",
            1,
            rules={"actions": [{"type": "set", "set": {"icon": ":fire:", "channel": "#x"}}]},
        ),
        strategy={"strategy": "parallel_sync", "targets": [{"id": "slack", "channels": ["#ops"]}]},
    )
    assert plan(cfg, event()).routes[0].primary.overrides == {"icon": ":fire:", "channel": "#ops"}


# -- tenants, integration scoping, disabled integrations ------------------------------------------


def test_tenant_allowed_integrations_scope_the_global_strategy() -> None:
    cfg = config(
        hook("sf", 1),
        hook("hs", 2),
        strategy={"strategy": "primary_backup", "primary": {"id": "sf", "fallback": "hs"}},
        tenants={"t-small": {"integrations": ["hs"]}},
    )
    assert chains(plan(cfg, event(tenant="t-acme"))) == [["sf:message", "hs:message"]]
    small = plan(cfg, event(tenant="t-small"))
    assert chains(small) == [["hs:message"]]
    assert small.skips == (Skip(None, "sf", "integration 'sf' not enabled for tenant t-small"),)


def test_tenant_strategy_replaces_the_global_one() -> None:
    cfg = config(
        hook("a", 1),
        hook("b", 2),
        strategy={"strategy": "parallel_sync", "targets": [{"id": "a"}]},
        tenants={"t-b": {"strategy": {"strategy": "parallel_sync", "targets": [{"id": "b"}]}}},
    )
    assert chains(plan(cfg, event(tenant="t-acme"))) == [["a:message"]]
    assert chains(plan(cfg, event(tenant="t-b"))) == [["b:message"]]


def test_integration_level_tenant_restriction() -> None:
    cfg = config(
        hook("shared", 1),
        hook("acme-only", 2, tenants=["t-acme"]),
    )
    assert chains(plan(cfg, event(tenant="t-acme"))) == [["shared:message"], ["acme-only:message"]]
    assert chains(plan(cfg, event(tenant="t-other"))) == [["shared:message"]]
    routed = config(
        hook("acme-only", 1, tenants=["t-acme"]),
        strategy={"strategy": "parallel_sync", "targets": [{"id": "acme-only"}]},
    )
    other = plan(routed, event(tenant="t-other"))
    assert other.routes == ()
    assert other.skips == (Skip(None, "acme-only", "integration 'acme-only' not enabled for tenant t-other"),)


def test_no_strategy_delivers_to_every_enabled_integration_whose_rules_accept() -> None:
    cfg = config(
        hook("b", 2),
        hook("a", 1),
        hook("off", 0, enabled=False),
        hook("urgent-only", 3, rules={"conditions": [{"field": "priority", "value": "urgent"}]}),
    )
    p = plan(cfg, event(priority="high"))
    assert p.strategy == "all_enabled"
    assert chains(p) == [["a:message"], ["b:message"]]
    assert [s.integration_id for s in p.skips] == ["urgent-only"]
    assert chains(plan(cfg, event(priority="urgent")))[-1] == ["urgent-only:message"]


def test_disabled_integrations_drop_out_of_type_references() -> None:
    cfg = config(
        hook("a", 1, enabled=False),
        hook("b", 2),
        strategy={"strategy": "parallel_sync", "targets": [{"type": "webhook"}]},
    )
    assert chains(plan(cfg, event())) == [["b:message"]]


def test_nothing_accepts_the_event_is_explained() -> None:
    cfg = config(
        hook("a", 1, rules={"actions": [{"type": "skip", "reason": "muted"}]}),
    )
    p = plan(cfg, event())
    assert p.routes == ()
    assert p.skips == (Skip("a", "webhook", "muted"),)
