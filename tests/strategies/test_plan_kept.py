"""A plan is kept per configuration and handed out again only where it cannot differ.

``plan`` keys a kept plan on the tenant, the category and the strings the rules read; these tests
show the planner reads nothing else of the event, that a kept plan equals a fresh one, and that a
new configuration (a reload) never gets an old one.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.variables import template_vars
from octopus_crm.daemon.config import CrmConfig
from octopus_crm.strategies import routing
from octopus_crm.strategies.routing import _KEY_READERS, Plan, _plan, _Plans, plan
from tests.strategies.test_routing import BASE, SEED, chains, config, event, hook

ROOT = Path(__file__).resolve().parents[2]


class _Reads:
    """An event that notes the path of every scalar the planner reads off it."""

    def __init__(self, model: BaseModel, seen: set[str], prefix: str = "") -> None:
        self._model, self._seen, self._prefix = model, seen, prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if isinstance(value, BaseModel):
            return _Reads(value, self._seen, f"{self._prefix}{name}.")
        self._seen.add(self._prefix + name)
        return value


def _fresh(cfg: CrmConfig, ev: Any) -> Plan:
    """The plan as the planner makes it, nothing kept and nothing looked up before."""
    return _plan(_Plans(cfg), ev)


def _samples() -> list[ClassifiedMessage]:
    lines = (ROOT / "examples" / "events.sample.jsonl").read_bytes().splitlines()
    return [ClassifiedMessage.model_validate_json(line) for line in lines if line.strip()]


def _bench_config() -> CrmConfig:
    return config(hook("hook"))


def _varied() -> list[ClassifiedMessage]:
    """Every tenant, category and priority of the seed, and events that differ in nothing else."""
    out = []
    categories = ("销售线索", "产品咨询", "客户投诉", "技术支持", "故障报告", "Sales", "其他")
    for tenant, category, priority in itertools.product(
        ("t-acme", "t-support-desk", "t-enterprise", "t-other"), categories, ("low", "high", "urgent")
    ):
        out.append(event(category, tenant, priority))
        other = {**BASE, "tenantId": tenant, "content": "别的内容", "platform": "line", "metadata": {"vip": True}}
        other["classification"] = {**BASE["classification"], "category": category, "priority": priority}
        out.append(ClassifiedMessage.model_validate(other))
    return out


def test_the_planner_reads_only_the_key_of_a_kept_plan() -> None:
    for cfg in (SEED, _bench_config()):
        assert routing._plans_of(cfg).readers == ()  # the seed's rules read the category only
        for ev in _samples() + _varied():
            seen: set[str] = set()
            _fresh(cfg, _Reads(ev, seen))  # type: ignore[arg-type]
            assert seen <= {"tenantId", "classification.category"}, seen


def test_a_kept_plan_equals_a_fresh_one() -> None:
    for cfg in (SEED, _bench_config()):
        for ev in _samples() + _varied():
            assert plan(cfg, ev) == _fresh(cfg, ev)
            assert plan(cfg, ev) is plan(cfg, ev)


def test_the_key_readers_give_what_the_rules_see() -> None:
    for ev in _samples() + _varied():
        variables = template_vars(ev)
        for name, read in _KEY_READERS.items():
            expected = read(ev) or ev.tenantId if name == "tenantName" else read(ev)
            assert variables.get(name) == expected, name


def test_rules_reading_a_keyed_string_key_the_plan_on_it() -> None:
    cfg = config(
        hook("hi", 1, rules={"conditions": [{"field": "priority", "operator": "eq", "value": "high"}]}),
        hook("lo", 2, rules={"actions": [{"type": "skip", "when": {"classification.priority": ["high"]}}]}),
    )
    assert routing._plans_of(cfg).readers is not None
    assert chains(plan(cfg, event(priority="high"))) == [["hi:message"]]
    assert chains(plan(cfg, event(priority="low"))) == [["lo:message"]]
    assert chains(plan(cfg, event(priority="high"))) == [["hi:message"]]


def test_rules_reading_anything_else_plan_every_event() -> None:
    cfg = config(
        hook("vip", 1, rules={"conditions": [{"field": "metadata.vip", "operator": "eq", "value": True}]}),
        hook("all", 2),
    )
    assert routing._plans_of(cfg).readers is None
    vip = ClassifiedMessage.model_validate({**BASE, "metadata": {"vip": True}})
    assert chains(plan(cfg, vip)) == [["vip:message"], ["all:message"]]
    assert chains(plan(cfg, event())) == [["all:message"]]
    assert plan(cfg, event()) is not plan(cfg, event())
    for ev in [*_samples(), *_varied(), vip]:
        assert plan(cfg, ev) == _fresh(cfg, ev)


def test_a_new_configuration_gets_its_own_plans() -> None:
    before = config(hook("a", 1))
    assert chains(plan(before, event())) == [["a:message"]]
    after = config(hook("a", 1), hook("b", 2))  # what a reload builds: a new object
    assert chains(plan(after, event())) == [["a:message"], ["b:message"]]
    assert chains(plan(before, event())) == [["a:message"]]


def test_long_values_are_planned_but_not_kept() -> None:
    cfg = _bench_config()
    long_category = "x" * 10_000
    p = plan(cfg, event(long_category))
    assert p == _fresh(cfg, event(long_category))
    assert all(long_category not in key for key in routing._plans_of(cfg).plans)


def test_kept_plans_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(routing, "_MAX_PLANS", 3)
    cfg = _bench_config()
    for i in range(10):
        plan(cfg, event(f"c{i}"))
        assert len(routing._plans_of(cfg).plans) <= 3
