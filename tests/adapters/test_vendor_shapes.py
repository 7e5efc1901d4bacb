"""A vendor answering in an undocumented shape gets a typed error, never an AttributeError."""

from __future__ import annotations

from typing import Any

import pytest

from octopus_crm.adapters.base import DeliveryContext
from octopus_crm.adapters.salesforce import SalesforceAdapter
from octopus_crm.adapters.slack import SlackAdapter
from octopus_crm.core.errors import DeliveryError, PermanentError
from octopus_crm_sandbox.feishu import FeishuFake
from octopus_crm_sandbox.kit import Fault
from octopus_crm_sandbox.salesforce import SalesforceFake
from octopus_crm_sandbox.slack import SlackFake
from tests.adapters.seed import event_of, seed_config, serving
from tests.adapters.test_feishu import make_adapter as make_feishu

SHAPES: list[Any] = [[1, 2], "a string", 42, None]


@pytest.mark.parametrize("answer", SHAPES)
async def test_salesforce_token_endpoint_of_the_wrong_shape(answer: Any) -> None:
    fake = SalesforceFake()
    async with serving(fake, lambda: SalesforceAdapter(*seed_config("salesforce", fake))) as sf:
        fake.inject(Fault(200, body=answer, path_contains="/oauth2/token"))
        with pytest.raises(DeliveryError) as info:
            await sf.test_connection()
    assert isinstance(info.value, PermanentError) or info.value.code == "token_rejected", info.value
    assert fake.records == {}


@pytest.mark.parametrize("answer", SHAPES)
async def test_feishu_token_endpoint_of_the_wrong_shape(answer: Any) -> None:
    fake = FeishuFake()
    async with serving(fake, lambda: make_feishu(fake)) as feishu:
        fake.inject(Fault(200, body=answer, path_contains="tenant_access_token"))
        ev = event_of("技术支持")
        with pytest.raises(DeliveryError) as info:
            await feishu.create(ev, "task", DeliveryContext(f"{ev.eventId}:cn-feishu:task"))
    assert info.value.code in ("unexpected_response", "token_rejected"), info.value


@pytest.mark.parametrize("answer", [[{"ok": True}], "ok"])
async def test_slack_post_message_answering_a_list(answer: Any) -> None:
    fake = SlackFake()
    async with serving(fake, lambda: SlackAdapter(*seed_config("slack", fake))) as slack:
        fake.inject(Fault(200, body=answer, path_contains="chat.postMessage"))
        ev = event_of("销售线索")
        with pytest.raises(PermanentError) as info:
            await slack.create(ev, "message", DeliveryContext(f"{ev.eventId}:support-slack:message"))
    assert info.value.code == "unexpected_response"
