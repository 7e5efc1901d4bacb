"""A fake's envelope from the vendor's spec: who may call, and the token endpoint.

A fake states which credentials it accepts (credential name → value, the names the spec's auth
scheme reads) and gets, from the same :class:`~adapters.spec.VendorSpec` auth scheme the adapter
runs, the check of an incoming request and — for token schemes — the token route. The checks read
the wire the way the vendor does (a basic header is decoded, not re-encoded from the spec), so a
scheme declared wrongly in the spec still fails against its fake.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from octopus_crm.adapters.spec import (
    ApiKeyHeader,
    ApiKeyQuery,
    AuthScheme,
    Basic,
    Bearer,
    JsonToken,
    NoAuth,
    OAuth2ClientCredentials,
    OAuth2Refresh,
)
from octopus_crm_sandbox.kit import FakeVendor

__all__ = ["caller", "token_route"]


def _accepted(accepted: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    return next((accepted[k] for k in keys if k in accepted), None)


def caller(scheme: AuthScheme, request: web.Request, accepted: Mapping[str, str], fake: FakeVendor) -> str | None:
    """Who is calling under ``scheme`` (a user or key name), or None when the request is refused."""
    headers = request.headers
    if isinstance(scheme, NoAuth):
        return "anonymous"
    if isinstance(scheme, (OAuth2ClientCredentials, JsonToken)):
        token = _presented_token(scheme, request)
        return "token" if token and fake.token_valid(token) else None
    if isinstance(scheme, Bearer):
        expected = _accepted(accepted, scheme.keys)
        prefix = f"{scheme.scheme} " if scheme.scheme else ""
        presented = headers.get("Authorization", "")
        if expected is None:
            return "anonymous" if scheme.optional and not presented else None
        return scheme.keys[0] if presented == f"{prefix}{expected}" else None
    if isinstance(scheme, Basic):
        kind, _, value = headers.get("Authorization", "").partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        # A fixed password is a placeholder the vendor ignores (Freshdesk documents any value).
        expected_user = _accepted(accepted, scheme.user)
        good_password = scheme.fixed_password is not None or password == _accepted(accepted, scheme.password)
        ok = expected_user is not None and user == expected_user + scheme.user_suffix and good_password
        return user if ok else None
    if isinstance(scheme, ApiKeyHeader):
        expected = _accepted(accepted, scheme.keys)
        return scheme.header if expected and headers.get(scheme.header) == f"{scheme.prefix}{expected}" else None
    if isinstance(scheme, ApiKeyQuery):
        ok = all(request.query.get(name) == _accepted(accepted, keys) for name, keys in scheme.params.items())
        return "query" if ok else None
    raise TypeError(f"no fake envelope for auth scheme {type(scheme).__name__}")


def _presented_token(scheme: OAuth2ClientCredentials | JsonToken, request: web.Request) -> str:
    if isinstance(scheme, JsonToken) and scheme.param:
        return request.query.get(scheme.param, "")
    header = scheme.header if isinstance(scheme, JsonToken) else "Authorization"
    prefix = scheme.prefix if isinstance(scheme, JsonToken) else f"{scheme.scheme} "
    value = request.headers.get(header, "")
    return value.removeprefix(prefix) if value.startswith(prefix) else ""


def token_route(scheme: AuthScheme, accepted: Mapping[str, str], fake: FakeVendor) -> web.RouteDef:
    """The token endpoint ``scheme`` fetches from, issuing the fake's tokens to valid callers."""
    if isinstance(scheme, OAuth2ClientCredentials):
        return web.post(_path(scheme.token_path), _oauth2_handler(scheme, accepted, fake))
    if isinstance(scheme, JsonToken):
        return web.route(scheme.method, _path(scheme.path), _json_token_handler(scheme, accepted, fake))
    raise TypeError(f"{type(scheme).__name__} has no token endpoint")


def _path(path: str) -> str:
    return "/" + path.lstrip("/")


def _oauth2_handler(scheme: OAuth2ClientCredentials, accepted: Mapping[str, str], fake: FakeVendor) -> Any:
    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        grant = "refresh_token" if isinstance(scheme, OAuth2Refresh) else "client_credentials"
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if isinstance(scheme, OAuth2Refresh) and scheme.client_basic:  # RFC 6749 §2.3.1, and only that
            client_id, client_secret = _basic_pair(request.headers.get("Authorization", ""))
        ok = (
            form.get("grant_type") == grant
            and client_id == _accepted(accepted, scheme.client_id)
            and client_secret == _accepted(accepted, scheme.client_secret)
        )
        if isinstance(scheme, OAuth2Refresh):
            ok = ok and form.get("refresh_token") == _accepted(accepted, scheme.refresh_token)
        if not ok:  # RFC 6749 §5.2
            return web.json_response({"error": "invalid_client"}, status=401)
        body = {"access_token": fake.issue_token(), "token_type": "bearer", "expires_in": int(fake.token_ttl)}
        return web.json_response(body)

    return handler


def _json_token_handler(scheme: JsonToken, accepted: Mapping[str, str], fake: FakeVendor) -> Any:
    async def handler(request: web.Request) -> web.Response:
        sent: Mapping[str, Any] = request.query if scheme.method == "GET" else await request.json()
        ok = all(sent.get(name) == _accepted(accepted, keys) for name, keys in scheme.send.items())
        code = {scheme.code_field: 0} if scheme.code_field else {}
        if not ok:
            failure = {scheme.code_field: 40001} if scheme.code_field else {}
            return web.json_response({**failure, scheme.message_field: "invalid credential"})
        body = {**code, scheme.token_field: fake.issue_token(), scheme.ttl_field: int(fake.token_ttl)}
        return web.json_response({**body, scheme.message_field: "ok"})

    return handler


def _basic_pair(header: str) -> tuple[str | None, str | None]:
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return user, password
