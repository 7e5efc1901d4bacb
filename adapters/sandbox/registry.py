"""The vendor fakes, one line per target type; ``octopus-crm sandbox`` and the demo run them."""

from __future__ import annotations

from adapters.sandbox.feishu import FeishuFake
from adapters.sandbox.hubspot import HubSpotFake
from adapters.sandbox.jira import JiraFake
from adapters.sandbox.kit import FakeVendor
from adapters.sandbox.salesforce import SalesforceFake
from adapters.sandbox.slack import SlackFake
from adapters.sandbox.smtp import SmtpFake
from adapters.sandbox.webhook import WebhookFake
from adapters.sandbox.wecom import WeComFake

__all__ = ["FAKES"]

FAKES: dict[str, type[FakeVendor] | type[SmtpFake]] = {
    "webhook": WebhookFake,
    "salesforce": SalesforceFake,
    "hubspot": HubSpotFake,
    "wecom": WeComFake,
    "feishu": FeishuFake,
    "jira": JiraFake,
    "slack": SlackFake,
    "email": SmtpFake,
}
