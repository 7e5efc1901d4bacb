"""Salesforce adapter against the Salesforce fake over loopback HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.salesforce import SalesforceAdapter, api_field_name, api_version
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm.core.redaction import REDACTED, redact
from octopus_crm_sandbox.kit import Fault, SandboxServer
from octopus_crm_sandbox.salesforce import SalesforceFake
from tests.adapters.seed import event_of, seed_entry, with_changes


def ctx(key: str = "evt-1:primary-crm:lead") -> DeliveryContext:
    return DeliveryContext(idempotency_key=key, integration_id="primary-crm")


@pytest.fixture
async def fake() -> AsyncIterator[SalesforceFake]:
    vendor = SalesforceFake()
    async with SandboxServer(vendor):
        yield vendor


def make_adapter(fake: SalesforceFake, **overrides: Any) -> SalesforceAdapter:
    """The seed's ``primary-crm`` entry pointed at the fake; ``overrides`` patch its config."""
    config = seed_entry("salesforce", fake.ENV)["config"]
    config["endpoints"] = {**config["endpoints"], **fake.endpoints()}
    config.setdefault("rateLimit", {"requests": 500, "concurrency": 100})
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return SalesforceAdapter("primary-crm", IntegrationConfig.model_validate(config))


@pytest.fixture
async def adapter(fake: SalesforceFake) -> AsyncIterator[SalesforceAdapter]:
    sf = make_adapter(fake)
    yield sf
    await sf.aclose()


def data_requests(fake: SalesforceFake, method: str = "POST") -> list[Any]:
    return [r for r in fake.requests if r.path.startswith("/services/data/") and r.method == method]


# -- the seed's objects ---------------------------------------------------------------------


async def test_seed_lead_is_created_with_api_field_names(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    event = event_of("销售线索")
    delivered = await adapter.create(event, "lead", ctx())

    record = fake.records[delivered.external_id]
    assert delivered.external_id.startswith("00Q") and len(delivered.external_id) == 18
    assert delivered.external_url == f"{fake.base_url}/lightning/r/Lead/{delivered.external_id}/view"
    assert record["FirstName"] == event.sender.name
    assert record["LastName"] == "客户"
    assert record["Company"] == event.tenantName
    assert record["Email"] == event.sender.email
    assert record["LeadSource"] == event.platform
    assert record["Status"] == "Open - Not Contacted"  # defaulted by the org
    [sent] = data_requests(fake)
    assert sent.path == "/services/data/v58.0/sobjects/Lead/"
    assert set(orjson.loads(sent.body)) == {
        "FirstName",
        "LastName",
        "Email",
        "Phone",
        "Company",
        "LeadSource",
        "Description",
    }
    assert fake.grants == ["password"]  # the seed carries username + password
    assert delivered.detail["apiUsage"]["used"] >= 1


async def test_seed_case_maps_priority_to_the_picklist(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    for priority, expected in (
        ("urgent", "High"),
        ("high", "High"),
        ("medium", "Medium"),
        ("low", "Low"),
    ):
        event = with_changes(
            event_of("客户投诉"),
            classification={
                **event_of("客户投诉").classification.model_dump(),
                "priority": priority,
            },
        )
        delivered = await adapter.create(event, "case", ctx(f"k-{priority}"))
        record = fake.records[delivered.external_id]
        assert delivered.external_id.startswith("500")
        assert record["Priority"] == expected
        assert record["Subject"] == "客户咨询 - 客户投诉"
        assert record["Status"] == "New"
        assert record["Origin"] == event.platform
        assert "/lightning/r/Case/" in (delivered.external_url or "")


async def test_api_version_accepts_both_spellings_and_rejects_garbage(fake: SalesforceFake) -> None:
    assert api_version("58.0") == api_version("v58.0") == "v58.0"
    assert api_field_name("leadSource") == "LeadSource"
    assert api_field_name("Octopus_Event_Id__c") == "Octopus_Event_Id__c"
    sf = make_adapter(fake, endpoints={"apiVersion": "58.0"})
    try:
        await sf.create(event_of("销售线索"), "lead", ctx())
    finally:
        await sf.aclose()
    assert data_requests(fake)[0].path.startswith("/services/data/v58.0/")
    with pytest.raises(ConfigError):
        make_adapter(fake, endpoints={"apiVersion": "latest"})


async def test_client_credentials_and_instance_url(fake: SalesforceFake) -> None:
    """No username/password → client credentials; API calls go to the token's instance_url."""
    config = seed_entry("salesforce", fake.ENV)["config"]
    del config["credentials"]["username"], config["credentials"]["password"]
    config["endpoints"] = {"loginUrl": fake.base_url, "apiVersion": "v58.0", "allowPrivateNetwork": True}
    sf = SalesforceAdapter("primary-crm", IntegrationConfig.model_validate(config))
    try:
        delivered = await sf.create(event_of("销售线索"), "lead", ctx())
        await sf.test_connection()
    finally:
        await sf.aclose()
    assert fake.grants == ["client_credentials"]
    assert delivered.external_id in fake.records
    token_request = next(r for r in fake.requests if r.path == "/services/oauth2/token")
    assert b"grant_type=client_credentials" in token_request.body
    assert token_request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")


async def test_grant_type_override_and_config_errors(fake: SalesforceFake) -> None:
    sf = make_adapter(fake, credentials={"grantType": "client_credentials"})
    try:
        await sf.create(event_of("销售线索"), "lead", ctx())
    finally:
        await sf.aclose()
    assert fake.grants == ["client_credentials"]
    with pytest.raises(ConfigError):
        make_adapter(fake, credentials={"grantType": "implicit"})
    with pytest.raises(ConfigError, match="My Domain"):
        config = seed_entry("salesforce", fake.ENV)["config"]
        config["credentials"]["grantType"] = "client_credentials"
        config["endpoints"] = {}
        SalesforceAdapter("x", IntegrationConfig.model_validate(config))


async def test_sandbox_flag_picks_test_login_host(fake: SalesforceFake) -> None:
    config = seed_entry("salesforce", fake.ENV)["config"]
    config["credentials"]["sandbox"] = True
    config["endpoints"] = {}
    assert SalesforceAdapter("x", IntegrationConfig.model_validate(config)).login_url == ("https://test.salesforce.com")


async def test_fake_speaks_salesforce(fake: SalesforceFake) -> None:
    """The seed's axios call posts JSON to the token endpoint: Salesforce wants a form."""
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}/services/oauth2/token"
        async with session.post(url, json={"grant_type": "password"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "unsupported_grant_type"
        form = {
            "grant_type": "client_credentials",
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
        }
        async with session.post(url, data=form) as resp:
            token = await resp.json()
        assert "expires_in" not in token and token["instance_url"] == fake.base_url
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        api = f"{fake.base_url}/services/data/v58.0"
        async with session.get(f"{api}/sobjects/Lead/describe", headers=headers) as resp:
            fields = {f["name"]: f for f in (await resp.json())["fields"]}
            assert resp.headers["Sforce-Limit-Info"].startswith("api-usage=")
        assert not fields["LastName"]["nillable"] and not fields["Company"]["nillable"]
        assert fields["Octopus_Event_Id__c"]["externalId"]
        async with session.get(f"{api}/limits", headers=headers) as resp:
            assert (await resp.json())["DailyApiRequests"]["Max"] == fake.api_limit
        async with session.get(f"{fake.base_url}/services/data/vv58.0/limits", headers=headers) as resp:
            assert resp.status == 404  # the seed's "v" + "v58.0" path


# -- tokens ---------------------------------------------------------------------------------


async def test_expired_session_refreshes_once(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    await adapter.create(event_of("销售线索"), "lead", ctx("a"))
    fake.expire_tokens()
    delivered = await adapter.create(event_of("销售线索"), "lead", ctx("b"))
    assert delivered.external_id in fake.records
    assert fake.token_requests == 2
    assert [r.path for r in fake.requests].count("/services/oauth2/token") == 2


async def test_session_rejected_twice_is_an_auth_error(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    invalid = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    fake.inject(
        Fault(401, invalid, path_contains="/sobjects/"),
        Fault(401, invalid, path_contains="/sobjects/"),
    )
    with pytest.raises(AuthError) as info:
        await adapter.create(event_of("销售线索"), "lead", ctx())
    assert "INVALID_SESSION_ID" in info.value.message
    assert fake.token_requests == 2


async def test_hundred_concurrent_deliveries_fetch_one_token(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    event = event_of("销售线索")
    results = await asyncio.gather(*(adapter.create(event, "lead", ctx(f"k{i}")) for i in range(100)))
    assert len({r.external_id for r in results}) == 100
    assert fake.token_requests == 1


async def test_bad_credentials_are_auth_errors(fake: SalesforceFake) -> None:
    for credentials in ({"password": "wrong"}, {"clientSecret": "wrong"}, {"clientId": "wrong"}):
        sf = make_adapter(fake, credentials=credentials)
        try:
            with pytest.raises(AuthError, match="token request failed: HTTP 400") as info:
                await sf.create(event_of("销售线索"), "lead", ctx())
            assert "wrong" not in info.value.message
        finally:
            await sf.aclose()
    assert not fake.records


# -- error classes --------------------------------------------------------------------------


async def test_validation_errors_are_permanent_with_the_vendor_message(
    fake: SalesforceFake,
) -> None:
    lead = event_of("销售线索")
    cases = [
        (
            {"lead": {"lastName": "x", "company": "y", "favouriteColour": "blue"}},
            "lead",
            "INVALID_FIELD",
            "No such column 'FavouriteColour' on sobject of type Lead",
        ),
        (
            {"lead": {"firstName": "{{senderName}}"}},
            "lead",
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [LastName, Company]",
        ),
        (
            {"lead": {"lastName": "x", "company": "y", "email": "not-an-email"}},
            "lead",
            "INVALID_EMAIL_ADDRESS",
            "invalid email address",
        ),
        (
            {"case": {"subject": "s", "priority": "Critical"}},
            "case",
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            "bad value for restricted picklist field: Critical",
        ),
        (
            {"lead": {"lastName": "x" * 81, "company": "y"}},
            "lead",
            "STRING_TOO_LONG",
            "max length=80",
        ),
    ]
    for mappings, object_type, code, text in cases:
        sf = make_adapter(fake, mappings=mappings)
        try:
            with pytest.raises(PermanentError) as info:
                await sf.create(lead, object_type, ctx())
        finally:
            await sf.aclose()
        assert info.value.code == code and info.value.status == 400
        assert text in info.value.message
    assert not fake.records


@pytest.mark.parametrize(
    ("status", "body", "error_type", "code"),
    [
        (
            500,
            [{"message": "An unexpected error occurred", "errorCode": "UNKNOWN_EXCEPTION"}],
            RetryableError,
            "UNKNOWN_EXCEPTION",
        ),
        (
            503,
            [{"message": "Server unavailable", "errorCode": "SERVER_UNAVAILABLE"}],
            RetryableError,
            "SERVER_UNAVAILABLE",
        ),
        (
            400,
            [
                {
                    "message": "unable to obtain exclusive access to this record",
                    "errorCode": "UNABLE_TO_LOCK_ROW",
                    "fields": [],
                }
            ],
            RetryableError,
            "UNABLE_TO_LOCK_ROW",
        ),
        (
            403,
            [
                {
                    "message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED",
                }
            ],
            RateLimitedError,
            "REQUEST_LIMIT_EXCEEDED",
        ),
        (
            403,
            [
                {
                    "message": "insufficient access rights on object id",
                    "errorCode": "INSUFFICIENT_ACCESS_OR_READONLY",
                }
            ],
            AuthError,
            "INSUFFICIENT_ACCESS_OR_READONLY",
        ),
        (
            404,
            [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}],
            PermanentError,
            "NOT_FOUND",
        ),
    ],
)
async def test_error_responses_map_to_the_taxonomy(
    fake: SalesforceFake,
    adapter: SalesforceAdapter,
    status: int,
    body: Any,
    error_type: type[Exception],
    code: str,
) -> None:
    fake.inject(Fault(status, body, path_contains="/sobjects/"))
    with pytest.raises(error_type) as info:
        await adapter.create(event_of("销售线索"), "lead", ctx())
    assert getattr(info.value, "code", None) == code
    assert body[0]["message"] in str(info.value)
    assert type(info.value) is not QuotaExhaustedError


async def test_daily_allocation_spent_is_a_quota_error() -> None:
    fake = SalesforceFake(api_limit=2)
    async with SandboxServer(fake):
        sf = make_adapter(fake)
        try:
            await sf.create(event_of("销售线索"), "lead", ctx("a"))
            await sf.create(event_of("销售线索"), "lead", ctx("b"))
            with pytest.raises(QuotaExhaustedError) as info:
                await sf.create(event_of("销售线索"), "lead", ctx("c"))
        finally:
            await sf.aclose()
    assert info.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert "TotalRequests" in info.value.message
    assert (info.value.retry_after or 0) >= 60
    assert len(fake.records) == 2


# -- external-id upsert ---------------------------------------------------------------------


async def test_upsert_on_external_id_never_duplicates(fake: SalesforceFake) -> None:
    sf = make_adapter(fake, endpoints={"externalIdField": "Octopus_Event_Id__c"})
    event = event_of("销售线索")
    key = "6513270e:primary-crm:lead"
    try:
        first = await sf.create(event, "lead", ctx(key))
        again = await asyncio.gather(*(sf.create(event, "lead", ctx(key)) for _ in range(5)))
        found = await sf.find_existing(event, "lead", ctx(key))
        missing = await sf.find_existing(event, "lead", ctx("never-sent"))
    finally:
        await sf.aclose()
    assert first.detail["created"] is True
    assert {d.external_id for d in again} == {first.external_id}
    assert all(d.detail["created"] is False for d in again)
    assert found is not None and found.external_id == first.external_id
    assert missing is None
    assert len(fake.by_type("Lead")) == 1
    assert fake.records[first.external_id]["Octopus_Event_Id__c"] == key
    upserts = data_requests(fake, "PATCH")
    assert upserts[0].path.endswith("/sobjects/Lead/Octopus_Event_Id__c/6513270e%3Aprimary-crm%3Alead") or (
        upserts[0].path.endswith("/sobjects/Lead/Octopus_Event_Id__c/6513270e:primary-crm:lead")
    )
    assert "Octopus_Event_Id__c" not in orjson.loads(upserts[0].body)


async def test_lost_response_then_retry_makes_one_record(fake: SalesforceFake) -> None:
    sf = make_adapter(fake, externalIdField={"lead": "Octopus_Event_Id__c"})
    event = event_of("销售线索")
    fake.inject(Fault(502, "Bad Gateway", after_effect=True, path_contains="/sobjects/Lead"))
    try:
        with pytest.raises(RetryableError):
            await sf.create(event, "lead", ctx("k"))
        assert len(fake.by_type("Lead")) == 1  # the first attempt did land
        delivered = await sf.create(event, "lead", ctx("k"))
    finally:
        await sf.aclose()
    assert len(fake.by_type("Lead")) == 1
    assert delivered.detail["created"] is False


async def test_ambiguous_external_id_is_permanent(fake: SalesforceFake) -> None:
    for _ in range(2):
        fake.seed_record("Lead", {"LastName": "x", "Company": "y", "Octopus_Event_Id__c": "dup"})
    sf = make_adapter(fake, endpoints={"externalIdField": "Octopus_Event_Id__c"})
    try:
        with pytest.raises(PermanentError) as info:
            await sf.create(event_of("销售线索"), "lead", ctx("dup"))
        with pytest.raises(PermanentError):
            await sf.find_existing(event_of("销售线索"), "lead", ctx("dup"))
    finally:
        await sf.aclose()
    assert info.value.status == 300 and info.value.code == "MULTIPLE_CHOICES"
    assert len(fake.by_type("Lead")) == 2


async def test_find_existing_without_external_id_cannot_tell(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    assert await adapter.find_existing(event_of("销售线索"), "lead", ctx()) is None


# -- content and pacing ---------------------------------------------------------------------


async def test_message_arrives_byte_for_byte(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    content = 'Literal {{senderEmail}} and "quotes"\nsecond line 🐙 \\n 中文'
    event = with_changes(event_of("销售线索"), content=content)
    delivered = await adapter.create(event, "lead", ctx())
    assert fake.records[delivered.external_id]["Description"] == content
    [sent] = data_requests(fake)
    assert orjson.loads(sent.body)["Description"] == content
    assert orjson.dumps(content) in sent.body


async def test_test_connection(fake: SalesforceFake, adapter: SalesforceAdapter) -> None:
    await adapter.test_connection()
    paths = [r.path for r in data_requests(fake, "GET")]
    assert paths == ["/services/data/v58.0/sobjects/Lead", "/services/data/v58.0/sobjects/Case"]


async def test_password_and_security_token_are_each_registered_for_redaction() -> None:
    """The password flow sends them concatenated; a vendor or log may show either on its own."""
    password, security_token = f"pw-{uuid.uuid4().hex}", f"st{uuid.uuid4().hex}"
    fake = SalesforceFake(password=password + security_token)
    async with SandboxServer(fake):
        sf = make_adapter(fake, credentials={"password": password, "securityToken": security_token})
        try:
            await sf.test_connection()  # fetches a token with the password grant
        finally:
            await sf.aclose()
    assert redact(f"login failed for {password}") == f"login failed for {REDACTED}"
    assert redact(f"token {security_token} expired") == f"token {REDACTED} expired"
