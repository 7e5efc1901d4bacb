"""The shared HTTP engine: one pooled client per integration instance.

Every vendor call goes through :meth:`HttpClient.send`, which paces it with the integration's
limiter, applies auth, maps transport failures to the error taxonomy (this is the only place that
knows aiohttp's exceptions), classifies the response with the adapter's rules, refreshes a token
once on expiry, and slows the integration down when the vendor says so.

aiohttp is the transport because it measured ~20x faster than httpx's default transport at 64
concurrent POSTs on loopback (see ``bench/http_clients.py``).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import yarl

from octopus_crm.adapters.ratelimit import Limiter
from octopus_crm.adapters.urlguard import BlockedAddressError, GuardedResolver, check_url
from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    RetryableError,
    TokenExpiredError,
)
from octopus_crm.core.redaction import redact

if TYPE_CHECKING:
    from octopus_crm.adapters.auth import Auth

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "Classifier",
    "HttpClient",
    "Request",
    "Response",
    "Timeouts",
    "check_body_size",
    "classify_status",
    "parse_retry_after",
]


# A rendered body above this is a mapping that repeats the message (or a vendor limit we do
# not know): refused before it costs the vendor, the network or our memory any more.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def check_body_size(size: int, limit: int, name: str) -> None:
    """Raise a :class:`PermanentError` when a rendered body of ``size`` bytes exceeds ``limit``."""
    if size > limit:
        raise PermanentError(
            f"{name}: rendered body is {size:,} bytes, over the {limit:,}-byte limit; shorten the mapping"
            " (e.g. {{messageContent|truncate:2000}}) or use the field once",
            code="body_too_large",
        )


@dataclass
class Request:
    method: str
    url: str
    json: Any = None
    form: Mapping[str, str] | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    authenticated: bool = True
    #: False for an operator's test call: it neither waits for nor spends the delivery limiter's
    #: budget, and a 429 it meets does not slow deliveries down.
    paced: bool = True


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str = ""

    def json(self) -> Any:
        """The decoded JSON body, or ``None`` when the body is not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    def field(self, *path: str) -> Any:
        """The value at ``path`` in a JSON object body; ``None`` where any level is not an object.

        Vendor bodies are hostile input: a list where an object was documented must end as a
        typed error at the caller, never as an ``AttributeError``.
        """
        node = self.json()
        for key in path:
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node

    def json_object(self, what: str) -> dict[str, Any]:
        """The body as a JSON object, else an ``unexpected_response`` error naming ``what``."""
        body = self.json()
        if isinstance(body, dict):
            return body
        kind = "no JSON" if body is None else f"a JSON {type(body).__name__}"
        error = RetryableError if self.status >= 500 or self.status == 429 else PermanentError
        raise error(f"{what}: expected a JSON object, got {kind} (HTTP {self.status})", code="unexpected_response")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 25.0


Classifier = Callable[[Response], DeliveryError | None]
MessageOf = Callable[[Response], str]


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _default_message(resp: Response) -> str:
    return resp.text[:500]


def classify_status(resp: Response, message_of: MessageOf = _default_message) -> DeliveryError | None:
    """The HTTP-status half of the taxonomy: 2xx ok, 401 expired, 403 auth, 429/5xx retry."""
    status = resp.status
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        target = urlsplit(resp.headers.get("Location", "")).hostname or "another path"
        return PermanentError(
            f"HTTP {status} redirect to {target} not followed (credentials stay with the configured host);"
            " configure the final URL",
            code=f"http_{status}",
            status=status,
        )
    message = redact(message_of(resp)) or f"HTTP {status}"
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if status == 401:
        return TokenExpiredError(message, code="http_401", status=status)
    if status == 403:
        return AuthError(message, code="http_403", status=status)
    if status == 429:
        return RateLimitedError(message, code="http_429", status=status, retry_after=retry_after)
    if status in (408, 425) or status >= 500:
        return RetryableError(message, code=f"http_{status}", status=status, retry_after=retry_after)
    return PermanentError(message, code=f"http_{status}", status=status)


class HttpClient:
    """Pooled, paced, authenticated HTTP for one integration instance."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str = "",
        limiter: Limiter | None = None,
        auth: Auth | None = None,
        classify: Classifier | None = None,
        timeouts: Timeouts = Timeouts(),
        default_headers: Mapping[str, str] | None = None,
        allow_private_network: bool = False,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.auth = auth
        self.classify = classify or classify_status
        self.timeouts = timeouts
        self._default_headers = dict(default_headers or {})
        self._session: aiohttp.ClientSession | None = None
        self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self.max_response_bytes: int | None = None  # a cap on answers (connection tests set one)
        #: Loopback, link-local and private addresses are refused unless this is set.
        self.allow_private_network = allow_private_network

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            limit = self.limiter.limit.concurrency if self.limiter else 32
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=limit,
                    ttl_dns_cache=300,
                    resolver=GuardedResolver(allow_private=self.allow_private_network),
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeouts.connect, sock_read=self.timeouts.read
                ),
                # No vendor API here needs cookies, and a jar would hand a cookie one answer set
                # (a session, a load balancer's pin) to every later request of the integration;
                # keeping one also costs tens of µs a request once a vendor sets any.
                cookie_jar=aiohttp.DummyCookieJar(),
                headers=self._default_headers,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    async def send(self, request: Request) -> Response:
        """Send with auth and pacing; return a 2xx response or raise a :class:`DeliveryError`."""
        refreshed = False
        while True:
            token_used = None
            if request.authenticated and self.auth is not None:
                token_used = await self.auth.apply(request, self)
            limiter = self.limiter
            if limiter is not None and request.paced:
                # What ``async with limiter`` does, without its two coroutines per request (nor
                # acquire's when nothing waits).
                if not limiter.take():
                    await limiter.acquire()
                timing = limiter.began()
                try:
                    response = await self.raw(request)
                finally:
                    limiter.ended(timing)
                    limiter.release()
            else:
                response = await self.raw(request)
            error = self.classify(response)
            if error is None:
                return response
            if isinstance(error, TokenExpiredError):
                if not refreshed and self.auth is not None and self.auth.refreshable:
                    await self.auth.invalidate(token_used)
                    refreshed = True
                    continue
                raise AuthError(error.message, code=error.code, status=error.status)
            if isinstance(error, RateLimitedError) and self.limiter is not None and request.paced:
                self.limiter.slow_down(error.retry_after if error.retry_after is not None else 1.0)
            raise error

    async def raw(self, request: Request) -> Response:
        """One HTTP exchange, transport errors mapped; no auth, no pacing, no classification."""
        headers = request.headers
        data: bytes | aiohttp.FormData | None = None
        if request.json is not None:
            data = orjson.dumps(request.json)
            if len(data) > self.max_body_bytes:
                check_body_size(len(data), self.max_body_bytes, self.name)
            if "Content-Type" not in headers:
                headers = {**headers, "Content-Type": "application/json; charset=utf-8"}
        elif request.form is not None:
            data = aiohttp.FormData(dict(request.form))
        url = request.url
        if not url.startswith(("http://", "https://")):
            url = self.url(url)
        check_url(url, allow_private=self.allow_private_network, name=self.name)
        sent = False
        try:
            # Never follow a redirect: it would carry credentials to a host nobody configured.
            async with self.session.request(
                request.method,
                url,
                params=request.params or None,
                data=data,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                sent = True
                if self.max_response_bytes is None:
                    body = await resp.read()
                else:
                    body = await resp.content.read(self.max_response_bytes + 1)
                    if len(body) > self.max_response_bytes:
                        raise PermanentError(
                            f"{self.name}: the answer from {_host(url)} is larger than {self.max_response_bytes} bytes",
                            code="response_too_large",
                        )
                return Response(resp.status, resp.headers, body, _REPORTED.get(url) or _reported_url(url, resp.url))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddressError):
                raise ConfigError(f"{self.name}: refusing to call: {exc.os_error}", code="blocked_address") from None
            raise RetryableError(
                f"{self.name}: cannot connect to {_host(url)}: {type(exc).__name__}", code="connect"
            ) from None
        except aiohttp.ConnectionTimeoutError as exc:
            raise RetryableError(
                f"{self.name}: cannot connect to {_host(url)}: {type(exc).__name__}", code="connect"
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise AmbiguousDeliveryError(
                f"{self.name}: no answer from {_host(url)} within {self.timeouts.read:g}s",
                code="timeout",
            ) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            error_type = AmbiguousDeliveryError if sent or request.method != "GET" else RetryableError
            raise error_type(
                f"{self.name}: connection to {_host(url)} dropped: {type(exc).__name__}",
                code="disconnected",
            ) from None
        except aiohttp.InvalidURL:
            raise ConfigError(f"{self.name}: invalid URL for host {_host(url)}", code="bad_url") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{self.name}: {type(exc).__name__}", code="transport") from None


# The answered URL as reported (no query, no user info), per requested URL: it follows from
# that string alone (redirects are not followed, params only add a query), and yarl's work to
# derive it costs microseconds per response. Bounded: emptied when full.
_REPORTED: dict[str, str] = {}
_REPORTED_MAX = 4096


def _reported_url(requested: str, answered: yarl.URL) -> str:
    reported = _REPORTED.get(requested)
    if reported is None:
        if len(_REPORTED) >= _REPORTED_MAX:
            _REPORTED.clear()
        reported = _REPORTED[requested] = str(answered.with_query(None).with_user(None))
    return reported


def _host(url: str) -> str:
    """The host[:port] of ``url`` for an error message: never its ``user:password@``."""
    rest = url.split("://", 1)[-1]
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return authority.rsplit("@", 1)[-1]
