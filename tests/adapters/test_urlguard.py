"""Where credentialed calls may go: configured URLs, resolved addresses and redirects, over loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from octopus_crm.adapters.base import DeliveryContext, IntegrationConfig
from octopus_crm.adapters.http import HttpClient, Request
from octopus_crm.adapters.salesforce import SalesforceAdapter
from octopus_crm.adapters.urlguard import address_problem, url_problem
from octopus_crm.core.errors import AuthError, ConfigError, PermanentError
from octopus_crm_sandbox.kit import FakeVendor, Fault, SandboxServer
from octopus_crm_sandbox.salesforce import SalesforceFake
from tests.adapters.seed import event_of, seed_entry


class MetadataFake(FakeVendor):
    """Stands in for a cloud metadata service: records whatever reaches it."""

    name = "metadata"

    def routes(self) -> list[web.RouteDef]:
        async def anything(request: web.Request) -> web.Response:
            return web.json_response({"access_token": "stolen", "instance_url": self.base_url})

        return [web.route("*", "/{tail:.*}", anything)]


@pytest_asyncio.fixture(loop_scope="function")
async def fakes() -> AsyncIterator[tuple[SalesforceFake, MetadataFake]]:
    crm, metadata = SalesforceFake(), MetadataFake()
    async with SandboxServer(crm, metadata):
        yield crm, metadata


def salesforce(login_url: str, env: dict[str, str], **endpoints: Any) -> SalesforceAdapter:
    config = seed_entry("salesforce", env)["config"]
    config["endpoints"] = {"loginUrl": login_url, "apiVersion": "v58.0", **endpoints}
    return SalesforceAdapter("primary-crm", IntegrationConfig.model_validate(config))


def ctx() -> DeliveryContext:
    return DeliveryContext(idempotency_key="evt-1:primary-crm:lead")


@pytest.mark.parametrize(
    "url,allow,expected",
    [
        ("https://login.salesforce.com", False, None),
        ("not a url", False, "is not an http(s) URL"),
        ("file:///etc/passwd", False, "is not an http(s) URL"),
        ("gopher://example.com/", False, "is not an http(s) URL"),
        ("https://", False, "has no host"),
        ("https://example.com:99999/", False, "is not a valid URL"),
        ("http://169.254.169.254/", False, "points at a link-local address"),
        ("http://127.0.0.1:8080", False, "points at a loopback address"),
        ("http://localhost:8080", False, "points at a loopback address"),
        ("http://[::1]/", False, "points at a loopback address"),
        ("http://[fc00::1]/", False, "points at a private address"),
        ("http://[::ffff:169.254.169.254]/", False, "points at a link-local address"),
        ("http://10.0.0.5/", False, "points at a private address"),
        ("http://100.64.0.1/", False, "points at a non-public address"),
        ("http://10.0.0.5/", True, None),
        ("file:///etc/passwd", True, "is not an http(s) URL"),
    ],
)
def test_url_problem(url: str, allow: bool, expected: str | None) -> None:
    problem = url_problem(url, allow_private=allow)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_address_problem_unwraps_ipv4_mapped_addresses() -> None:
    assert address_problem("::ffff:127.0.0.1") == "loopback"
    assert address_problem("8.8.8.8") is None
    assert address_problem("2606:4700:4700::1111") is None


async def test_a_config_url_at_the_metadata_service_is_refused_at_load() -> None:
    with pytest.raises(ConfigError) as info:
        salesforce("http://169.254.169.254/", {**SalesforceFake.ENV})
    assert info.value.message.startswith("endpoints.loginUrl: 'http://169.254.169.254/' points at a link-local address")


async def test_a_host_name_resolving_to_loopback_is_refused_before_any_byte_is_sent(
    fakes: tuple[SalesforceFake, MetadataFake],
) -> None:
    crm, _ = fakes
    name = socket.gethostname()
    resolved = {info[4][0] for info in socket.getaddrinfo(name, None)}
    if not all(address_problem(str(a)) for a in resolved):
        pytest.skip(f"{name} resolves to a public address here ({resolved})")
    login_url = crm.base_url.replace("127.0.0.1", name)
    guarded = salesforce(login_url, crm.ENV)  # a name: only resolving it tells where it goes
    try:
        with pytest.raises(ConfigError) as info:
            await guarded.create(event_of("销售线索"), "lead", ctx())
        assert info.value.code == "blocked_address"
        assert "allowPrivateNetwork" in info.value.message
        with pytest.raises(ConfigError):
            await guarded.test_connection()
    finally:
        await guarded.aclose()
    assert crm.requests == []  # the client secret never left the process

    allowed = salesforce(login_url, crm.ENV, allowPrivateNetwork=True)
    try:
        delivered = await allowed.create(event_of("销售线索"), "lead", ctx())
    finally:
        await allowed.aclose()
    assert delivered.external_id in crm.records


async def test_a_redirected_token_request_is_not_followed(fakes: tuple[SalesforceFake, MetadataFake]) -> None:
    crm, metadata = fakes
    crm.inject(Fault(307, headers={"Location": f"{metadata.base_url}/steal"}, path_contains="/oauth2/token"))
    sf = salesforce(crm.base_url, crm.ENV, allowPrivateNetwork=True)
    try:
        with pytest.raises(AuthError) as info:
            await sf.create(event_of("销售线索"), "lead", ctx())
    finally:
        await sf.aclose()
    assert "HTTP 307" in info.value.message
    assert metadata.requests == []


async def test_a_redirected_api_call_is_a_permanent_error(fakes: tuple[SalesforceFake, MetadataFake]) -> None:
    crm, metadata = fakes
    http = HttpClient(name="records", base_url=crm.base_url, allow_private_network=True)
    crm.inject(Fault(302, headers={"Location": f"{metadata.base_url}/elsewhere"}, path_contains="/anything"))
    try:
        with pytest.raises(PermanentError) as info:
            await http.send(Request("POST", "/anything", json={"secret": "x"}, headers={"Authorization": "Bearer t"}))
    finally:
        await http.aclose()
    assert info.value.code == "http_302"
    assert "redirect to 127.0.0.1 not followed" in info.value.message
    assert metadata.requests == []


async def test_the_engine_refuses_a_url_outside_http_and_private_literals() -> None:
    http = HttpClient(name="t")
    try:
        for url in ("file:///etc/passwd", "http://169.254.169.254/latest/meta-data/"):
            with pytest.raises(ConfigError) as info:
                await http.raw(Request("GET", url))
            assert info.value.code == "blocked_url"
    finally:
        await http.aclose()
