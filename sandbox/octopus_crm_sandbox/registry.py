"""The vendor fakes, one line per target type; ``octopus-crm sandbox`` and the demo run them."""

from __future__ import annotations

from octopus_crm_sandbox.airtable import AirtableFake
from octopus_crm_sandbox.asana import AsanaFake
from octopus_crm_sandbox.clickup import ClickUpFake
from octopus_crm_sandbox.dingtalk import DingTalkFake
from octopus_crm_sandbox.dynamics365 import DynamicsFake
from octopus_crm_sandbox.feishu import FeishuFake
from octopus_crm_sandbox.freshdesk import FreshdeskFake
from octopus_crm_sandbox.hubspot import HubSpotFake
from octopus_crm_sandbox.jira import JiraFake
from octopus_crm_sandbox.kit import FakeVendor
from octopus_crm_sandbox.linear import LinearFake
from octopus_crm_sandbox.monday import MondayFake
from octopus_crm_sandbox.notion import NotionFake
from octopus_crm_sandbox.pipedrive import PipedriveFake
from octopus_crm_sandbox.salesforce import SalesforceFake
from octopus_crm_sandbox.slack import SlackFake
from octopus_crm_sandbox.smtp import SmtpFake
from octopus_crm_sandbox.trello import TrelloFake
from octopus_crm_sandbox.webhook import WebhookFake
from octopus_crm_sandbox.wecom import WeComFake
from octopus_crm_sandbox.zendesk import ZendeskFake
from octopus_crm_sandbox.zoho import ZohoFake

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
    "freshdesk": FreshdeskFake,
    "dingtalk": DingTalkFake,
    "asana": AsanaFake,
    "notion": NotionFake,
    "trello": TrelloFake,
    "clickup": ClickUpFake,
    "airtable": AirtableFake,
    "dynamics365": DynamicsFake,
    "zoho": ZohoFake,
    "linear": LinearFake,
    "monday": MondayFake,
    "zendesk": ZendeskFake,
    "pipedrive": PipedriveFake,
}
