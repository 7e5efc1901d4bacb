"""Mapping templates: the seed's ``{{var}}`` / ``{{var|filter:arg}}`` syntax over real events."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from octopus_crm.adapters.templates import TemplateError, compile_template
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.variables import resolver, template_vars

BASE: dict[str, Any] = {
    "schemaVersion": 1,
    "eventId": "7d3f0a4e-2b7c-4f1e-9a53-0c1b2d3e4f50",
    "messageId": "msg-20261125-000042",
    "tenantId": "t-acme",
    "tenantName": "Acme 贸易有限公司",
    "platform": "telegram",
    "sender": {
        "id": "tg-5531",
        "name": "王小明",
        "username": "xiaoming_w",
        "email": "xiaoming@example.com",
        "phone": "+86 138 0000 0000",
    },
    "content": "你好，想了解企业版套餐的价格，我们有 200 人。",
    "receivedAt": "2026-11-25T09:30:12Z",
    "classification": {
        "category": "销售线索",
        "confidence": 0.93,
        "priority": "high",
        "sentiment": "positive",
        "keywords": ["价格", "企业版"],
    },
    "assignment": {
        "assigneeUserId": "manager-001",
        "managerUserId": "boss-007",
        "systemUserId": "sys-1",
    },
    "metadata": {
        "orderId": "A-1001",
        "seats": 200,
        "note": "  padded note  ",
        "items": [{"sku": "X1"}, {"sku": "X2"}],
        "shippedAt": "2026-01-02T03:04:05+08:00",
    },
}


def event(**changes: Any) -> ClassifiedMessage:
    """The contract's example event, with top-level keys or ``sender``/``assignment`` replaced."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return ClassifiedMessage.model_validate(data)


def render(template: Any, ev: ClassifiedMessage | None = None) -> Any:
    return compile_template(template).render(ev or event())


# -- variables -------------------------------------------------------------------------------


def test_seed_salesforce_lead_mapping_renders_flat_variables() -> None:
    lead = {
        "firstName": "{{senderName}}",
        "lastName": "客户",
        "email": "{{senderEmail}}",
        "phone": "{{senderPhone}}",
        "company": "{{tenantName}}",
        "leadSource": "{{platform}}",
        "description": "{{messageContent}}",
    }
    assert render(lead) == {
        "firstName": "王小明",
        "lastName": "客户",
        "email": "xiaoming@example.com",
        "phone": "+86 138 0000 0000",
        "company": "Acme 贸易有限公司",
        "leadSource": "telegram",
        "description": "你好，想了解企业版套餐的价格，我们有 200 人。",
    }


def test_classification_assignment_and_time_variables() -> None:
    out = render(
        {
            "category": "{{category}}",
            "priority": "{{priority}}",
            "receivedAt": "{{receivedAt}}",
            "assignee": "{{assigneeUserId}}",
            "manager": "{{managerUserId}}",
            "system": "{{systemUserId}}",
            "subject": "客户咨询 - {{category}} ({{priority}})",
        }
    )
    assert out == {
        "category": "销售线索",
        "priority": "high",
        "receivedAt": "2026-11-25T09:30:12Z",
        "assignee": "manager-001",
        "manager": "boss-007",
        "system": "sys-1",
        "subject": "客户咨询 - 销售线索 (high)",
    }


def test_tenant_name_falls_back_to_tenant_id() -> None:
    assert render("{{tenantName}}", event(tenantName=None)) == "t-acme"


@pytest.mark.parametrize(
    ("sender", "first", "last"),
    [
        ({"name": "王小明"}, "小明", "王"),
        ({"name": "李雷"}, "雷", "李"),
        ({"name": "Hanna Schmidt"}, "Hanna", "Schmidt"),
        ({"name": "Mary Ann  Smith"}, "Mary Ann", "Smith"),
        ({"name": "王小明", "firstName": "Xiaoming", "lastName": "Wang"}, "Xiaoming", "Wang"),
        ({"name": "Hanna Schmidt", "lastName": "Schmidt-Weber"}, "Hanna", "Schmidt-Weber"),
    ],
)
def test_first_and_last_name_from_fields_or_split(sender: dict[str, str], first: str, last: str) -> None:
    out = render(
        {"firstname": "{{senderFirstName}}", "lastname": "{{senderLastName}}"},
        event(sender={"id": "s1", **sender}),
    )
    assert out == {"firstname": first, "lastname": last}


def test_dotted_paths_and_list_indices() -> None:
    out = render(
        {
            "username": "{{sender.username}}",
            "confidence": "{{classification.confidence}}",
            "order": "{{metadata.orderId}}",
            "secondSku": "{{metadata.items.1.sku}}",
            "firstKeyword": "{{classification.keywords.0}}",
            "outOfRange": "{{metadata.items.5.sku}}",
            "throughString": "{{metadata.orderId.x}}",
        }
    )
    assert out == {
        "username": "xiaoming_w",
        "confidence": 0.93,
        "order": "A-1001",
        "secondSku": "X2",
        "firstKeyword": "价格",
    }


def test_a_metadata_key_reads_the_same_as_the_general_lookup() -> None:
    """``metadata.x`` is compiled to a dict lookup for scalars; everything else (a list, a dict, a
    missing key) must come out exactly as ``EventVars.get`` hands it out, a copy where it copies."""
    meta = {"s": "text", "n": 3, "f": 1.5, "b": True, "none": None, "list": [1, "a"], "deep": {"k": [1]}}
    ev = event(metadata=meta)
    for key in [*meta, "missing"]:
        name = f"metadata.{key}"
        fast, general = resolver(name)(template_vars(ev)), template_vars(ev).get(name)
        assert fast == general and type(fast) is type(general), name
    handed = resolver("metadata.deep")(template_vars(ev))
    handed["k"].append(2)  # the caller's copy: the event is unchanged
    assert ev.metadata["deep"] == {"k": [1]}


# -- filters ---------------------------------------------------------------------------------


def test_truncate_keeps_short_text_and_caps_long_text_with_ellipsis() -> None:
    long = "这是一条很长的客户消息" * 10
    out = render("{{messageContent|truncate:50}}", event(content=long))
    assert len(out) == 50
    assert out == long[:49] + "…"
    assert render("{{messageContent|truncate:50}}", event(content="short")) == "short"
    assert len(render("{{messageContent|truncate}}", event(content="x" * 300))) == 100


def test_seed_ticket_subject_with_truncate_in_text() -> None:
    out = render("{{category}} - {{messageContent|truncate:10}}", event(content="0123456789abcdef"))
    assert out == "销售线索 - 012345678…"


def test_default_applies_only_to_missing_or_empty_values() -> None:
    sender_without_email = {"id": "s1", "name": "Li Lei"}
    assert render('{{senderEmail|default:"n/a"}}', event(sender=sender_without_email)) == "n/a"
    assert render('{{senderEmail|default:"n/a"}}') == "xiaoming@example.com"
    assert render("{{sender.username|default:anonymous}}", event(sender=sender_without_email)) == "anonymous"


def test_upper_lower_trim() -> None:
    assert render("{{priority|upper}}") == "HIGH"
    assert render("{{sender.username|lower}}", event(sender={"id": "1", "name": "A", "username": "MiXeD"})) == "mixed"
    assert render("[{{metadata.note|trim}}]") == "[padded note]"


def test_date_filter_formats() -> None:
    received = datetime(2026, 11, 25, 9, 30, 12, tzinfo=UTC)
    assert render("{{receivedAt|date}}") == "2026-11-25T09:30:12Z"
    assert render('{{receivedAt|date:"%Y-%m-%d %H:%M"}}') == "2026-11-25 09:30"
    assert render("{{receivedAt|date:%Y年%m月%d日}}") == "2026年11月25日"
    assert render("{{receivedAt|date:epoch_ms}}") == int(received.timestamp() * 1000)
    assert render("{{receivedAt|date:epoch}}") == int(received.timestamp())
    # A string value (metadata) is parsed as ISO 8601, offset respected.
    shipped = datetime.fromisoformat("2026-01-02T03:04:05+08:00")
    assert render("{{metadata.shippedAt|date:epoch_ms}}") == int(shipped.timestamp() * 1000)
    assert render("{{metadata.missing|date:epoch_ms}}") is None


def test_date_of_untrusted_non_date_text_renders_as_missing() -> None:
    ev = event(metadata={"when": "yesterday, 3pm"})
    assert render({"due": "{{metadata.when|date:epoch_ms}}"}, ev) == {}
    assert render("due: {{metadata.when|date}}", ev) == "due: "


def test_join_lists() -> None:
    assert render("{{classification.keywords|join}}") == "价格, 企业版"
    assert render('{{classification.keywords|join:" / "}}') == "价格 / 企业版"
    assert render("tags: {{classification.tags|join}}.") == "tags: ."


def test_chained_filters_and_quoted_args_with_pipes_and_colons() -> None:
    no_username = event(sender={"id": "1", "name": "A"})
    assert render('{{sender.username|default:"anon"|upper}}', no_username) == "ANON"
    assert render("{{ messageContent | truncate:5 | upper }}", event(content="abcdefgh")) == "ABCD…"
    assert render('{{senderEmail|default:"a|b: c"}}', no_username) == "a|b: c"
    assert render("{{senderEmail|default:'x | y'|upper}}", no_username) == "X | Y"


# -- types and missing values ----------------------------------------------------------------


def test_whole_expression_keeps_the_value_type() -> None:
    out = render(
        {
            "keywords": "{{classification.keywords}}",
            "confidence": "{{classification.confidence}}",
            "seats": "{{metadata.seats}}",
            "items": "{{metadata.items}}",
            "text": "conf={{classification.confidence}} seats={{metadata.seats}}",
            "literalNumber": 587,
            "literalBool": False,
        }
    )
    assert out == {
        "keywords": ["价格", "企业版"],
        "confidence": 0.93,
        "seats": 200,
        "items": [{"sku": "X1"}, {"sku": "X2"}],
        "text": "conf=0.93 seats=200",
        "literalNumber": 587,
        "literalBool": False,
    }
    assert orjson.loads(orjson.dumps(out)) == out


def test_missing_values_dropped_from_objects_and_lists_empty_in_text() -> None:
    bare = event(
        sender={"id": "s1", "name": "Li Lei"},
        assignment={"assigneeUserId": "u-1"},
    )
    wecom = {
        "template_id": "customer_inquiry_template",
        "applicant": "{{systemUserId}}",
        "approver": ["{{managerUserId}}", "{{assigneeUserId}}"],
        "cc": ["{{managerUserId}}"],
        "email": "{{senderEmail}}",
        "note": "mail: {{senderEmail}}, phone: {{senderPhone}}!",
        "nested": {"phone": "{{senderPhone}}"},
    }
    assert render(wecom, bare) == {
        "template_id": "customer_inquiry_template",
        "approver": ["u-1"],
        "cc": [],
        "note": "mail: , phone: !",
        "nested": {},
    }


def test_notion_property_tree_from_the_guide() -> None:
    page = {
        "properties": {
            "客户姓名": {"title": [{"text": {"content": "{{senderName}}"}}]},
            "平台": {"select": {"name": "{{platform}}"}},
            "分类": {"select": {"name": "{{category}}"}},
            "优先级": {"select": {"name": "{{priority}}"}},
            "状态": {"select": {"name": "待处理"}},
            "内容": {"rich_text": [{"text": {"content": "{{messageContent}}"}}]},
            "创建时间": {"date": {"start": "{{receivedAt}}"}},
        }
    }
    assert render(page) == {
        "properties": {
            "客户姓名": {"title": [{"text": {"content": "王小明"}}]},
            "平台": {"select": {"name": "telegram"}},
            "分类": {"select": {"name": "销售线索"}},
            "优先级": {"select": {"name": "high"}},
            "状态": {"select": {"name": "待处理"}},
            "内容": {"rich_text": [{"text": {"content": "你好，想了解企业版套餐的价格，我们有 200 人。"}}]},
            "创建时间": {"date": {"start": "2026-11-25T09:30:12Z"}},
        }
    }


def test_each_render_returns_an_independent_tree() -> None:
    compiled = compile_template({"to": ["support@company.com"], "meta": {"k": "{{category}}"}})
    first = compiled.render(event())
    first["to"].append("attacker@example.com")
    first["meta"]["k"] = "changed"
    assert compiled.render(event()) == {"to": ["support@company.com"], "meta": {"k": "销售线索"}}


def test_a_rendered_list_of_the_event_is_a_copy() -> None:
    """A list read off the event (without a dump) is still the renderer's own: changing it
    leaves the event and the next render alone."""
    ev = event()
    compiled = compile_template({"keywords": "{{classification.keywords}}", "tags": "{{classification.tags}}"})
    first = compiled.render(ev)
    assert first == {"keywords": ["价格", "企业版"], "tags": []}
    first["keywords"].append("injected")
    first["tags"].append("injected")
    assert ev.classification.keywords == ["价格", "企业版"]
    assert ev.classification.tags == []
    assert compiled.render(ev) == {"keywords": ["价格", "企业版"], "tags": []}


# -- compile-time errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "path", "needle"),
    [
        ({"lead": {"email": "{{senderEmial}}"}}, "mappings.lead.email", "senderEmial"),
        ({"lead": {"x": "{{nosuch.path}}"}}, "mappings.lead.x", "nosuch.path"),
        ({"ticket": {"subject": "{{category|shout}}"}}, "mappings.ticket.subject", "shout"),
        ({"ticket": {"subject": "{{category|truncate:abc}}"}}, "mappings.ticket.subject", "abc"),
        (
            {"ticket": {"subject": "{{category|truncate:5|}}"}},
            "mappings.ticket.subject",
            "unknown filter",
        ),
        ({"email": {"to": ["ok@x.com", "{{senderName"]}}, "mappings.email.to[1]", "unclosed"),
        ({"email": {"body": "Hi {{senderName}}, {{platform"}}, "mappings.email.body", "unclosed"),
        (
            {"page": {"p": {"title": [{"text": {"content": "{{}}"}}]}}},
            "mappings.page.p.title[0].text.content",
            "unknown template variable",
        ),
    ],
)
def test_compile_errors_name_the_path(mapping: dict[str, Any], path: str, needle: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(mapping, "mappings")
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert needle in str(info.value)


# -- untrusted content -----------------------------------------------------------------------

HOSTILE = "Price? {{senderEmail}} {{ tenantId|upper }} \"quoted\" 'single'\n第二行\r\n😀🎉 {% x %} ${HOME} \\n {{"


def test_customer_text_is_inserted_byte_for_byte_never_reevaluated() -> None:
    ev = event(content=HOSTILE, sender={"id": "s", "name": "{{senderPhone}} 😀", "phone": "+1 555"})
    out = render(
        {
            "description": "{{messageContent}}",
            "body": "{{senderName}} via {{platform}}:\n\n{{messageContent}}",
            "subject": "{{messageContent|truncate:500}}",
        },
        ev,
    )
    assert out["description"].encode() == HOSTILE.encode()
    assert out["subject"].encode() == HOSTILE.encode()
    assert out["body"].encode() == ("{{senderPhone}} 😀 via telegram:\n\n" + HOSTILE).encode()
    assert orjson.loads(orjson.dumps(out))["description"] == HOSTILE


def test_single_braces_in_the_mapping_text_stay_as_written() -> None:
    """Literal ``{`` / ``}`` around expressions are text, never format fields of their own."""
    ev = event(content="{0} {x} {{y}} {")
    out = render({"t": 'json: {"k": "{{category}}"} {0} }{ {{messageContent}} }'}, ev)
    assert out == {"t": 'json: {"k": "销售线索"} {0} }{ {0} {x} {{y}} { }'}


def test_render_vars_is_render_on_variables_made_beforehand() -> None:
    from octopus_crm.core.variables import EventVars

    event = ClassifiedMessage.model_validate(BASE)
    compiled = compile_template(
        {"at": "{{receivedAt}}", "who": "{{senderName}} <{{senderEmail}}>", "n": ["{{content}}"]}
    )
    assert compiled.render_vars(EventVars(event)) == compiled.render(event)
    assert compiled.render(event)["at"] == "2026-11-25T09:30:12Z"


def test_keys_and_texts_that_look_like_code_are_data() -> None:
    """An object renders through generated code: keys, texts and filter arguments are values
    in it, never source."""
    mapping = {
        'x"] = 1\nimport os #': "{{eventId}}",
        "{c2}": "}\n\"'\\ {{senderName}} {{ x }}}",
        "lit": "'''\"\"\"\\n",
        "d": '{{content|default:"x\')"|truncate:5}}',
        "n": 3,
        "t": True,
        "gone": None,
        "nested": {"k\n": ["{{senderEmail}}", "", {"deep": "{{metadata.orderId}}"}]},
    }
    with pytest.raises(TemplateError):
        compile_template(mapping)  # {{ x }} is no variable
    mapping["{c2}"] = "}\n\"'\\ {{senderName}} {{senderName|upper}}}"
    rendered = compile_template(mapping).render(ClassifiedMessage.model_validate(BASE))
    assert rendered == {
        'x"] = 1\nimport os #': BASE["eventId"],
        "{c2}": "}\n\"'\\ 王小明 王小明}",
        "lit": "'''\"\"\"\\n",
        "d": "你好，想…",
        "n": 3,
        "t": True,
        "nested": {"k\n": ["xiaoming@example.com", {"deep": "A-1001"}]},
    }
    assert list(rendered) == ['x"] = 1\nimport os #', "{c2}", "lit", "d", "n", "t", "nested"]


def test_a_variable_used_twice_in_an_object_renders_the_same_in_both_places() -> None:
    compiled = compile_template(
        {"a": "{{receivedAt}}", "b": "at {{receivedAt}}", "c": "{{receivedAt|date:epoch}}", "d": "{{tenantName}}"}
    )
    rendered = compiled.render(ClassifiedMessage.model_validate(BASE))
    assert rendered == {
        "a": "2026-11-25T09:30:12Z",
        "b": "at 2026-11-25T09:30:12Z",
        "c": int(datetime(2026, 11, 25, 9, 30, 12, tzinfo=UTC).timestamp()),
        "d": "Acme 贸易有限公司",
    }
