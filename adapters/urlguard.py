"""Where vendor calls may go: http(s) URLs on public addresses, unless an integration opts in.

A configured URL (or one a vendor hands back, such as Salesforce's ``instance_url``) carries
client secrets and tokens. Pointed at ``http://169.254.169.254/`` it would post them to a cloud
metadata service; pointed at loopback or the pod network, to whatever listens there. So:

- at load, :func:`url_problem` refuses anything but ``http``/``https`` with a parseable host,
  and a literal loopback, link-local, private or otherwise non-public IP address;
- at request time, :func:`check_url` repeats that for the exact URL, and
  :class:`GuardedResolver` refuses a host name that resolves to such an address (checked on
  the addresses the connection will use, so DNS cannot swap them in between).

``endpoints.allowPrivateNetwork: true`` on an integration lifts the address rule for it (an
on-premises Jira, the sandbox fakes on 127.0.0.1); the scheme rule always holds.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from octopus_crm.core.errors import ConfigError
from octopus_crm.core.redaction import redact

__all__ = [
    "ALLOW_PRIVATE_KEY",
    "BlockedAddressError",
    "GuardedResolver",
    "address_problem",
    "allows_private_network",
    "check_url",
    "url_problem",
]

ALLOW_PRIVATE_KEY = "allowPrivateNetwork"
SCHEMES = frozenset({"http", "https"})
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddressError(OSError):
    """A host resolved to an address this integration may not call (raised inside aiohttp)."""


def allows_private_network(endpoints: Mapping[str, Any]) -> bool:
    """``endpoints.allowPrivateNetwork`` as a boolean (``"true"`` from an ``${ENV}`` counts)."""
    value = endpoints.get(ALLOW_PRIVATE_KEY, False)
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def address_problem(address: str | _IP) -> str | None:
    """Why ``address`` is not a public address (``"link-local"``, ``"loopback"`` …), or ``None``."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def _literal_host_problem(host: str) -> str | None:
    if host == "localhost" or host.endswith(".localhost"):
        return "loopback"
    return address_problem(host.strip("[]"))


def url_problem(url: Any, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a vendor endpoint, in words for a configuration report."""
    if not isinstance(url, str) or not url.strip():
        return "must be an http(s) URL"
    shown = repr(redact(url))  # the message reaches validate-config's output and the logs
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        _ = parts.port  # a non-numeric or out-of-range port raises here
    except ValueError as exc:
        return f"{shown} is not a valid URL ({exc})"
    if parts.scheme.lower() not in SCHEMES:
        return f"{shown} is not an http(s) URL"
    if not host:
        return f"{shown} has no host"
    if not allow_private and (kind := _literal_host_problem(host)) is not None:
        return (
            f"{shown} points at a {kind} address; set endpoints.{ALLOW_PRIVATE_KEY}: true"
            " if this integration really is on a private network"
        )
    return None


# URLs that passed check_url, per allow_private: the verdict depends on nothing else, and
# parsing the same URL again costs microseconds on every request. Refusals are not kept (their
# message is redacted with the secrets known at the time). Bounded: emptied when full.
_PASSED_PUBLIC: set[str] = set()
_PASSED_PRIVATE: set[str] = set()
_PASSED_MAX = 4096


def check_url(url: str, *, allow_private: bool, name: str) -> None:
    """:func:`url_problem` at request time, as a :class:`ConfigError` (never retried)."""
    passed = _PASSED_PRIVATE if allow_private else _PASSED_PUBLIC
    if url in passed:
        return
    problem = url_problem(url, allow_private=allow_private)
    if problem is not None:
        raise ConfigError(f"{name}: refusing to call {_host(url)}: {problem}", code="blocked_url")
    if len(passed) >= _PASSED_MAX:
        passed.clear()
    passed.add(url)


def _host(url: str) -> str:
    return urlsplit(url).netloc or url[:80]


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing host names that resolve to non-public addresses."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                kind = address_problem(result["host"])
                if kind is not None:
                    raise BlockedAddressError(
                        f"{host} resolves to a {kind} address; set endpoints.{ALLOW_PRIVATE_KEY}: true"
                        " if this integration really is on a private network"
                    )
        return results

    async def close(self) -> None:
        await self._inner.close()
