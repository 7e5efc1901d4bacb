"""A fresh route's state: its chain in wire form, shared by the events of one kept route."""

from __future__ import annotations

import pytest

from octopus_crm.core.contracts import Assignment, ClassifiedMessage
from octopus_crm.daemon import route as route_module
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retrying import TargetSpec
from octopus_crm.daemon.route import RouteState
from octopus_crm.strategies.routing import Route, Target
from tests.strategies.test_routing import BASE

RECORD = InboundRecord(topic="in", partition=0, offset=7, key=b"k", value=b"{}")


def _fresh(route: Route, event_id: str = "e1") -> RouteState:
    return RouteState.fresh_route(event_id, RECORD, 1.5, "primary_backup", route)


def test_fresh_route_holds_the_chain_in_wire_form() -> None:
    route = Route((Target("sf", "salesforce", "lead", {"owner": "u1"}), Target("hs", "hubspot", "contact")), True)
    state = _fresh(route)
    assert state.chain == (
        TargetSpec(integration_id="sf", integration_type="salesforce", object_type="lead", overrides={"owner": "u1"}),
        TargetSpec(integration_id="hs", integration_type="hubspot", object_type="contact"),
    )
    assert (state.event_id, state.source, state.received_at, state.strategy) == ("e1", RECORD, 1.5, "primary_backup")
    assert (state.fresh, state.purpose, state.index, state.attempt, state.history) == (True, "deliver", 0, 0, [])
    assert state.first_error is None and state.sync_back_from is None
    assert state.sync_back is True
    assert _fresh(Route(route.chain)).sync_back is False


def test_one_route_gives_every_event_the_same_chain_and_its_own_state() -> None:
    route = Route((Target("hook", "webhook", "message"),))
    a, b = _fresh(route, "e1"), _fresh(route, "e2")
    assert a.chain is b.chain
    assert a.history is not b.history
    a.next_target()
    assert b.index == 0
    equal = Route((Target("hook", "webhook", "message", {"x": 1}),))  # another route: its own chain
    assert _fresh(equal).chain[0].overrides == {"x": 1}


def test_the_chains_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_module, "_MAX_CHAINS", 3)
    for i in range(10):
        _fresh(Route((Target(f"i{i}", "webhook", "message"),)))
        assert len(route_module._CHAINS) <= 3


def test_an_event_without_assignment_has_the_empty_one() -> None:
    event = ClassifiedMessage.model_validate(BASE)
    assert event.assignment == Assignment()
    assert "assignment" not in event.model_fields_set
    assert event.model_dump()["assignment"] == {"assigneeUserId": None, "managerUserId": None, "systemUserId": None}
    given = ClassifiedMessage.model_validate({**BASE, "assignment": {"assigneeUserId": "u1"}})
    assert given.assignment.assigneeUserId == "u1"
    assert ClassifiedMessage.model_validate(BASE).assignment.assigneeUserId is None
