"""Auth schemes: static credentials and cached, single-flight tokens.

A scheme decorates a :class:`~adapters.http.Request` just before it is sent. Token schemes cache
the token until shortly before it expires; when many deliveries find the cache cold at once, one
of them fetches and the rest wait for that fetch (single flight). On a rejected token the engine
calls :meth:`Auth.invalidate` with the token it used, so concurrent failures cause one refresh.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from octopus_crm.core.errors import AuthError, DeliveryError, RetryableError
from octopus_crm.core.redaction import register_secret

if TYPE_CHECKING:
    from octopus_crm.adapters.http import HttpClient, Request, Response

__all__ = [
    "Auth",
    "HeaderAuth",
    "QueryAuth",
    "RoutedAuth",
    "Token",
    "TokenAuth",
    "basic",
    "bearer",
    "fetch_json_token",
    "oauth2_token",
]


class Auth(Protocol):
    refreshable: bool

    async def apply(self, request: Request, http: HttpClient) -> str | None:
        """Add credentials to ``request``; return the token used (for :meth:`invalidate`)."""

    async def invalidate(self, token: str | None) -> None:
        """Forget ``token`` if it is still the cached one."""


class HeaderAuth:
    """A fixed header: bearer token, API key, basic credentials."""

    refreshable = False

    def __init__(self, name: str, value: str) -> None:
        register_secret(value)
        register_secret(value.split(" ", 1)[-1])
        self._name = name
        self._value = value

    async def apply(self, request: Request, http: HttpClient) -> str | None:
        request.headers[self._name] = self._value
        return None

    async def invalidate(self, token: str | None) -> None:
        return None


class QueryAuth:
    """A fixed query parameter (Trello-style ``key``/``token``)."""

    refreshable = False

    def __init__(self, params: Mapping[str, str]) -> None:
        for value in params.values():
            register_secret(value)
        self._params = dict(params)

    async def apply(self, request: Request, http: HttpClient) -> str | None:
        request.params.update(self._params)
        return None

    async def invalidate(self, token: str | None) -> None:
        return None


def bearer(token: str, scheme: str = "Bearer") -> HeaderAuth:
    return HeaderAuth("Authorization", f"{scheme} {token}" if scheme else token)


def basic(username: str, password: str) -> HeaderAuth:
    register_secret(password)
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return HeaderAuth("Authorization", f"Basic {raw}")


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def fresh(self, margin: float) -> bool:
        return self.expires_at is None or time.monotonic() < self.expires_at - margin


TokenFetcher = Callable[["HttpClient"], Awaitable[Token]]
TokenPlacer = Callable[["Request", Token], None]


def place_bearer(request: Request, token: Token) -> None:
    request.headers["Authorization"] = f"Bearer {token.value}"


class TokenAuth:
    """A fetched, cached token with single-flight refresh.

    ``place`` puts the token on a request (header or query); ``refresh_margin`` refreshes that
    many seconds before expiry (WeCom and Feishu tokens live ~7200 s and may be rotated early).
    """

    refreshable = True

    def __init__(
        self,
        fetch: TokenFetcher,
        *,
        place: TokenPlacer = place_bearer,
        refresh_margin: float = 300.0,
    ) -> None:
        self._fetch = fetch
        self._place = place
        self._margin = refresh_margin
        self._token: Token | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self.fetches = 0

    @property
    def token(self) -> Token | None:
        return self._token

    async def current(self, http: HttpClient) -> Token:
        token = self._token
        if token is not None and token.fresh(self._margin):
            return token
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh(http))
        return await asyncio.shield(self._inflight)

    async def _refresh(self, http: HttpClient) -> Token:
        try:
            self.fetches += 1
            token = await self._fetch(http)
            register_secret(token.value)
            self._token = token
            return token
        finally:
            self._inflight = None

    async def probe(self, http: HttpClient) -> None:
        """Fetch a token to prove the credentials, leaving the cached one (and the deliveries
        using it) alone."""
        token = await self._fetch(http)
        register_secret(token.value)

    async def apply(self, request: Request, http: HttpClient) -> str | None:
        token = await self.current(http)
        self._place(request, token)
        return token.value

    async def invalidate(self, token: str | None) -> None:
        if self._token is not None and (token is None or self._token.value == token):
            self._token = None


def _expiry(seconds: Any) -> float | None:
    try:
        return time.monotonic() + float(seconds)
    except (TypeError, ValueError):
        return None


async def oauth2_token(
    http: HttpClient,
    url: str,
    form: Mapping[str, str],
    *,
    default_ttl: float | None = None,
    secret_parts: tuple[str, ...] = (),
    headers: Mapping[str, str] | None = None,
) -> Token:
    """An OAuth2 token endpoint (RFC 6749 §4.3/§4.4/§6), form-encoded; errors per §5.2.

    ``secret_parts`` are pieces a form value is built from (Salesforce's password and security
    token, sent concatenated): each is registered for redaction on its own too."""
    from octopus_crm.adapters.http import Request

    for key in ("client_secret", "password", "refresh_token"):
        register_secret(form.get(key))
    for part in secret_parts:
        register_secret(part)
    response = await http.raw(Request("POST", url, form=form, headers=dict(headers or {}), authenticated=False))
    if not response.ok:
        raise _token_error(response, response.field("error_description") or response.field("error"))
    body = response.json_object(f"{http.name}: token endpoint")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise _token_error(response, body.get("error_description") or body.get("error") or "no access_token")
    ttl = body.get("expires_in", default_ttl)
    extra = {k: v for k, v in body.items() if k not in ("access_token", "refresh_token")}
    return Token(token, _expiry(ttl), extra)


async def fetch_json_token(
    http: HttpClient,
    request: Request,
    *,
    token_field: str,
    ttl_field: str,
    code_field: str | None = None,
    message_field: str = "errmsg",
    classify: Callable[[Response], DeliveryError | None] | None = None,
) -> Token:
    """A vendor token endpoint answering JSON (WeCom ``gettoken``, Feishu, DingTalk).

    ``classify`` (the adapter's body-code rules) turns vendor codes such as "rate limited" into
    the taxonomy; anything else that is not a token is an :class:`AuthError`.
    """
    response = await http.raw(request)
    if classify is not None and isinstance(error := classify(response), RetryableError):
        raise error
    if not response.ok:
        code = response.field(code_field) if code_field else None
        raise _token_error(response, f"{response.field(message_field) or ''} (code {code})".strip())
    body = response.json_object(f"{http.name}: token endpoint")
    code = body.get(code_field) if code_field else 0
    token = body.get(token_field)
    if code not in (0, None) or not isinstance(token, str) or not token:
        raise _token_error(response, f"{body.get(message_field) or ''} (code {code})".strip())
    return Token(token, _expiry(body.get(ttl_field)), body)


def _token_error(response: Response, reason: Any) -> DeliveryError:
    message = f"token request failed: HTTP {response.status} {reason or ''}".strip()
    if response.status == 429 or response.status >= 500:
        return RetryableError(message, code="token_unavailable", status=response.status)
    return AuthError(message, code="token_rejected", status=response.status)


class RoutedAuth:
    """One auth per URL prefix, for a vendor whose API generations authenticate differently
    (DingTalk: ``api.dingtalk.com/v1.0/…`` takes a header token from the new token endpoint, the
    old ``oapi`` paths take ``access_token`` from ``gettoken``). The first route whose prefix starts
    the request's URL (absolute, or a path) applies; else ``default``."""

    def __init__(self, routes: tuple[tuple[str, Auth], ...], default: Auth) -> None:
        self.routes = routes
        self.default = default
        self.refreshable = default.refreshable or any(auth.refreshable for _, auth in routes)

    def pick(self, request: Request) -> Auth:
        return next((auth for prefix, auth in self.routes if request.url.startswith(prefix)), self.default)

    async def apply(self, request: Request, http: HttpClient) -> str | None:
        return await self.pick(request).apply(request, http)

    async def invalidate(self, token: str | None) -> None:
        for auth in {id(a): a for a in (*(auth for _, auth in self.routes), self.default)}.values():
            await auth.invalidate(token)
