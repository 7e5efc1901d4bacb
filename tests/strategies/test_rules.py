"""Per-integration rules: conditions, actions and the upstream default object types."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.daemon.config import Condition, Rules
from octopus_crm.strategies.rules import decide, default_object_type, matches

BASE: dict[str, Any] = {
    "schemaVersion": 1,
    "eventId": "7d3f0a4e-2b7c-4f1e-9a53-0c1b2d3e4f50",
    "messageId": "msg-1",
    "tenantId": "t-acme",
    "platform": "telegram",
    "sender": {"id": "tg-5531", "name": "王小明", "email": "xiaoming@example.com"},
    "content": "你好，想了解企业版套餐的价格，我们有 200 人。URGENT please",
    "receivedAt": "2026-11-25T09:30:12Z",
    "classification": {
        "category": "销售线索",
        "confidence": 0.93,
        "priority": "high",
        "sentiment": "positive",
        "keywords": ["价格", "企业版"],
    },
    "metadata": {"vip": True, "seats": 200, "region": "cn-east"},
}


def event(category: str = "销售线索", **changes: Any) -> ClassifiedMessage:
    data = copy.deepcopy(BASE)
    data["classification"]["category"] = category
    for key, value in changes.items():
        if key in ("priority", "confidence", "sentiment"):
            data["classification"][key] = value
        else:
            data[key] = value
    return ClassifiedMessage.model_validate(data)


def cond(field: str, operator: str, value: Any = None) -> Condition:
    return Condition(field=field, operator=operator, value=value)  # type: ignore[arg-type]


# -- conditions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cond("category", "eq", "销售线索"), True),
        (cond("category", "eq", "技术支持"), False),
        (cond("priority", "ne", "low"), True),
        (cond("priority", "ne", "high"), False),
        (cond("category", "in", ["销售线索", "产品咨询", "客户投诉"]), True),
        (cond("category", "in", ["技术支持"]), False),
        (cond("category", "not_in", ["技术支持", "故障报告"]), True),
        (cond("category", "not_in", ["销售线索"]), False),
        (cond("classification.keywords", "in", ["价格"]), True),  # any list element
        (cond("classification.keywords", "not_in", ["退款"]), True),
        (cond("content", "contains", "价格"), True),
        (cond("messageContent", "contains", "urgent"), True),  # case-insensitive
        (cond("content", "contains", ["退款", "企业版"]), True),  # any of the words
        (cond("content", "not_contains", "退款"), True),
        (cond("content", "not_contains", "PLEASE"), False),
        (cond("classification.keywords", "contains", "企业"), True),
        (cond("content", "regex", r"\d{3}\s*人"), True),
        (cond("content", "regex", r"^urgent"), False),
        (cond("sender.email", "regex", r"@example\.com$"), True),
        (cond("confidence", "gt", 0.9), True),
        (cond("confidence", "gt", 0.93), False),
        (cond("confidence", "gte", 0.93), True),
        (cond("confidence", "lt", 0.5), False),
        (cond("metadata.seats", "lte", "200"), True),  # numeric strings compare as numbers
        (cond("metadata.region", "gt", 1), False),  # not a number: no match, no crash
        (cond("metadata.vip", "eq", True), True),
        (cond("metadata.vip", "exists"), True),
        (cond("metadata.missing", "exists"), False),
        (cond("metadata.missing", "exists", False), True),
        (cond("sender.phone", "exists", False), True),
        (cond("classification.tags", "exists"), False),  # empty list counts as absent
    ],
)
def test_condition_operators(condition: Condition, expected: bool) -> None:
    assert matches(condition, event()) is expected


def test_conditions_on_missing_fields_never_match_by_accident() -> None:
    ev = event()
    assert not matches(cond("metadata.note", "eq", "x"), ev)
    assert not matches(cond("metadata.note", "in", ["x"]), ev)
    assert not matches(cond("metadata.note", "regex", "."), ev)
    assert not matches(cond("metadata.note", "gt", 0), ev)
    # a missing value is not the text "None"
    assert not matches(cond("metadata.note", "contains", "none"), ev)
    assert not matches(cond("classification.subcategory", "contains", "no"), ev)
    assert matches(cond("metadata.note", "not_contains", "none"), ev)


def test_match_all_and_any() -> None:
    conditions = [cond("category", "eq", "销售线索"), cond("priority", "eq", "urgent")]
    assert not decide(Rules(conditions=conditions), event(), ["lead"]).applies
    assert decide(Rules(match="any", conditions=conditions), event(), ["lead"]).applies
    none_match = [cond("category", "eq", "x"), cond("priority", "eq", "y")]
    assert not decide(Rules(match="any", conditions=none_match), event(), ["lead"]).applies


def test_failed_condition_is_the_reason() -> None:
    rules = Rules(conditions=[cond("category", "in", ["销售线索"]), cond("priority", "eq", "urgent")])
    decision = decide(rules, event(), ["lead"])
    assert not decision.applies
    assert decision.reason == "rules: priority eq 'urgent' not met"


# -- actions ----------------------------------------------------------------------------------

SEED_PRIMARY = Rules.model_validate(
    {
        "conditions": [{"field": "category", "operator": "in", "value": ["销售线索", "产品咨询", "客户投诉"]}],
        "actions": [
            {"type": "create", "object": "lead", "when": {"category": ["销售线索", "产品咨询"]}},
            {"type": "create", "object": "case", "when": {"category": ["客户投诉"]}},
        ],
    }
)


@pytest.mark.parametrize(
    ("category", "applies", "objects"),
    [
        ("销售线索", True, ("lead",)),
        ("产品咨询", True, ("lead",)),
        ("客户投诉", True, ("case",)),
        ("技术支持", False, ()),
    ],
)
def test_seed_primary_crm_rules(category: str, applies: bool, objects: tuple[str, ...]) -> None:
    decision = decide(SEED_PRIMARY, event(category), ["lead", "case"])
    assert (decision.applies, decision.object_types) == (applies, objects)
    if not applies:
        assert "category in" in decision.reason


def test_skip_action_with_when_and_reason() -> None:
    rules = Rules.model_validate(
        {
            "actions": [
                {
                    "type": "skip",
                    "when": {"priority": "low"},
                    "reason": "low priority stays in the inbox",
                },
                {"type": "create", "object": "ticket"},
            ]
        }
    )
    skipped = decide(rules, event(priority="low"), ["ticket"])
    assert (skipped.applies, skipped.reason) == (False, "low priority stays in the inbox")
    assert decide(rules, event(priority="high"), ["ticket"]).object_types == ("ticket",)
    unconditional = Rules.model_validate({"actions": [{"type": "skip"}]})
    assert decide(unconditional, event(), ["ticket"]).reason == "rules: skip action"


def test_set_actions_collect_overrides() -> None:
    rules = Rules.model_validate(
        {
            "actions": [
                {
                    "type": "set",
                    "set": {"hs_ticket_priority": "HIGH"},
                    "when": {"priority": ["high", "urgent"]},
                },
                {"type": "set", "set": {"owner": "vip-desk"}, "when": {"metadata.vip": True}},
                {"type": "set", "set": {"owner": "never"}, "when": {"metadata.region": "us"}},
                {"type": "create", "object": "ticket", "set": {"hs_pipeline": "vip"}},
                {"type": "create", "object": "ticket"},  # same object twice: created once
            ]
        }
    )
    decision = decide(rules, event(), ["ticket", "contact"])
    assert decision.applies
    assert decision.object_types == ("ticket",)
    assert decision.overrides == {
        "hs_ticket_priority": "HIGH",
        "owner": "vip-desk",
        "hs_pipeline": "vip",
    }


def test_several_create_actions_create_several_objects() -> None:
    rules = Rules.model_validate(
        {
            "actions": [
                {"type": "create", "object": "contact"},
                {"type": "create", "object": "ticket"},
            ]
        }
    )
    assert decide(rules, event(), ["contact", "ticket"]).object_types == ("contact", "ticket")


# -- default object types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "expected"),
    [
        ("销售线索", "lead"),
        ("产品咨询", "lead"),
        ("Sales", "lead"),
        ("技术支持", "ticket"),
        ("故障报告", "ticket"),
        ("support", "ticket"),
        ("客户投诉", "case"),
        ("服务问题", "case"),
        ("complaint", "case"),
        ("产品反馈", "task"),
        ("客户服务", "task"),
        ("anything else", "task"),
    ],
)
def test_upstream_default_object_types(category: str, expected: str) -> None:
    everything = ["task", "case", "ticket", "lead"]
    assert default_object_type(category, everything) == expected
    assert decide(Rules(), event(category), everything).object_types == (expected,)


@pytest.mark.parametrize(
    ("category", "available", "expected"),
    [
        ("销售线索", ["contact", "ticket"], "contact"),  # HubSpot has no lead: a contact
        ("技术支持", ["lead", "case"], "case"),  # Salesforce has no ticket: a case
        ("客户投诉", ["contact", "ticket"], "ticket"),
        ("技术支持", ["issue"], "issue"),  # Jira
        ("产品反馈", ["issue"], "issue"),
        ("销售线索", ["oa_approval"], "oa_approval"),  # nothing near: the first mapped type
        ("销售线索", [], None),
    ],
)
def test_nearest_available_type(category: str, available: list[str], expected: str | None) -> None:
    assert default_object_type(category, available) == expected


def test_no_mapping_means_no_delivery() -> None:
    decision = decide(Rules(), event(), [])
    assert (decision.applies, decision.reason) == (False, "no mapping configured")
