"""The explicit list of target types, one line per adapter.

``octopus-crm adapters`` prints it and the admin API serves it. A duplicate type or alias fails at
import, not at the first event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from octopus_crm.adapters.airtable import AirtableAdapter
from octopus_crm.adapters.asana import AsanaAdapter
from octopus_crm.adapters.base import Adapter
from octopus_crm.adapters.clickup import ClickUpAdapter
from octopus_crm.adapters.dingtalk import DingTalkAdapter
from octopus_crm.adapters.dynamics365 import Dynamics365Adapter
from octopus_crm.adapters.email import EmailAdapter
from octopus_crm.adapters.feishu import FeishuAdapter
from octopus_crm.adapters.freshdesk import FreshdeskAdapter
from octopus_crm.adapters.hubspot import HubSpotAdapter
from octopus_crm.adapters.jira import JiraAdapter
from octopus_crm.adapters.linear import LinearAdapter
from octopus_crm.adapters.monday import MondayAdapter
from octopus_crm.adapters.notion import NotionAdapter
from octopus_crm.adapters.pipedrive import PipedriveAdapter
from octopus_crm.adapters.salesforce import SalesforceAdapter
from octopus_crm.adapters.settings import settings_schema
from octopus_crm.adapters.slack import SlackAdapter
from octopus_crm.adapters.trello import TrelloAdapter
from octopus_crm.adapters.webhook import WebhookAdapter
from octopus_crm.adapters.wecom import WeComAdapter
from octopus_crm.adapters.zendesk import ZendeskAdapter
from octopus_crm.adapters.zoho import ZohoAdapter

__all__ = ["ADAPTERS", "adapter_class", "describe"]


def _register(classes: Iterable[type[Adapter]]) -> dict[str, type[Adapter]]:
    table: dict[str, type[Adapter]] = {}
    for cls in classes:
        for name in (cls.info.type, *cls.info.aliases):
            if name in table:
                raise RuntimeError(f"adapter type {name!r} registered twice")
            table[name] = cls
    return table


ADAPTERS: dict[str, type[Adapter]] = _register(
    [
        WebhookAdapter,
        SalesforceAdapter,
        HubSpotAdapter,
        WeComAdapter,
        FeishuAdapter,
        JiraAdapter,
        SlackAdapter,
        TrelloAdapter,
        ClickUpAdapter,
        AirtableAdapter,
        EmailAdapter,
        FreshdeskAdapter,
        DingTalkAdapter,
        AsanaAdapter,
        NotionAdapter,
        Dynamics365Adapter,
        ZohoAdapter,
        LinearAdapter,
        MondayAdapter,
        ZendeskAdapter,
        PipedriveAdapter,
    ]
)


def adapter_class(type_name: str) -> type[Adapter] | None:
    return ADAPTERS.get(type_name)


def describe() -> list[dict[str, Any]]:
    """Every supported type, for ``octopus-crm adapters`` and ``GET /api/crm/supported``, with the
    JSON Schema of its ``config`` block under ``settings``."""
    seen: list[type[Adapter]] = []
    for cls in ADAPTERS.values():
        if cls not in seen:
            seen.append(cls)
    return [
        {
            "type": cls.info.type,
            "name": cls.info.display_name,
            "nameZh": cls.info.display_name_zh,
            "aliases": list(cls.info.aliases),
            "objectTypes": list(cls.info.object_types),
            "authTypes": list(cls.info.auth_types),
            "rateLimit": cls.info.rate_limit.model_dump(by_alias=True),
            "idempotency": cls.info.idempotency,
            "settings": settings_schema(cls.settings_model, cls.info.auth_types) if cls.settings_model else None,
        }
        for cls in seen
    ]
