"""The VendorSpec engine: a vendor described as data, one adapter class that runs the description.

A :class:`VendorSpec` states what differs between vendors — auth scheme per ``authType``, base URL,
each object's create call (method, path, body builder, headers such as ``Idempotency-Key``, where
the id and URL are), an optional find-by-idempotency call, the error rules and the test-connection
call. :class:`SpecAdapter` turns it into a working adapter on the shared kit (HTTP engine, token
cache, limiter, templates). Escape hatches stay: a vendor passes its own body builder or classifier,
or overrides ``create`` where the wire shape is not a plain create (WeCom approvals, SMTP).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol

from octopus_crm.adapters.auth import (
    Auth,
    HeaderAuth,
    QueryAuth,
    Token,
    TokenAuth,
    basic,
    bearer,
    fetch_json_token,
    oauth2_token,
)
from octopus_crm.adapters.base import Delivered, DeliveryContext, HttpAdapter, IntegrationConfig
from octopus_crm.adapters.http import Classifier, HttpClient, Request, Response, classify_status, parse_retry_after
from octopus_crm.adapters.ratelimit import Limiter
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm.core.redaction import register_secret

__all__ = [
    "ApiKeyHeader",
    "ApiKeyQuery",
    "AuthScheme",
    "Basic",
    "Bearer",
    "ConnectionCheck",
    "CreateCall",
    "Errors",
    "FindCall",
    "JsonToken",
    "LimitHeaders",
    "NoAuth",
    "OAuth2ClientCredentials",
    "OAuth2Refresh",
    "SpecAdapter",
    "VendorSpec",
    "at_path",
]

Keys = tuple[str, ...]  # a credential's name and its other spellings, first is the documented one


def at_path(node: Any, path: tuple[str | int, ...]) -> Any:
    """The value at ``path`` in decoded JSON; None where a level is missing or of another shape."""
    for key in path:
        if isinstance(key, int):
            node = node[key] if isinstance(node, list) and -len(node) <= key < len(node) else None
        elif isinstance(node, dict):
            node = node.get(key)
        else:
            return None
    return node


# -- auth ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoAuth:
    def check(self, config: IntegrationConfig) -> None:
        return None

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None:
        return None


@dataclass(frozen=True)
class Bearer:
    """``Authorization: Bearer <credential>``; ``optional`` sends nothing when it is unset."""

    keys: Keys
    scheme: str = "Bearer"
    optional: bool = False

    def check(self, config: IntegrationConfig) -> None:
        config.secret(*self.keys, required=not self.optional)

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None:
        token = config.secret(*self.keys, required=not self.optional)
        return bearer(token, self.scheme) if token else None


@dataclass(frozen=True)
class Basic:
    user: Keys
    password: Keys
    #: A fixed password instead of a credential (Freshdesk: the API key as user, any password).
    fixed_password: str | None = None
    #: Appended to the user name (Zendesk API tokens: ``{email}/token``).
    user_suffix: str = ""

    def check(self, config: IntegrationConfig) -> None:
        config.secret(*self.user)
        if self.fixed_password is None:
            config.secret(*self.password)

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None:
        user = config.secret(*self.user) + self.user_suffix
        if self.fixed_password is None:
            return basic(user, config.secret(*self.password))
        register_secret(config.secret(*self.user))  # the user name is the secret here
        return basic(user, self.fixed_password)


@dataclass(frozen=True)
class ApiKeyHeader:
    header: str
    keys: Keys
    prefix: str = ""

    def check(self, config: IntegrationConfig) -> None:
        config.secret(*self.keys)

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None:
        return HeaderAuth(self.header, f"{self.prefix}{config.secret(*self.keys)}")


@dataclass(frozen=True)
class ApiKeyQuery:
    """Credentials as query parameters (Trello's ``key`` and ``token``)."""

    params: Mapping[str, Keys]

    def check(self, config: IntegrationConfig) -> None:
        for keys in self.params.values():
            config.secret(*keys)

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None:
        return QueryAuth({name: config.secret(*keys) for name, keys in self.params.items()})


@dataclass(frozen=True)
class OAuth2ClientCredentials:
    """RFC 6749 §4.4 against ``token_path`` (relative to the base URL, or absolute)."""

    token_path: str
    client_id: Keys = ("clientId",)
    client_secret: Keys = ("clientSecret",)
    scope: str = ""
    #: The ``Authorization`` scheme the access token is sent with (Zoho: ``Zoho-oauthtoken``).
    scheme: str = "Bearer"

    def check(self, config: IntegrationConfig) -> None:
        config.secret(*self.client_id)
        config.secret(*self.client_secret)

    def form(self, config: IntegrationConfig) -> dict[str, str]:
        form = {
            "grant_type": "client_credentials",
            "client_id": config.secret(*self.client_id),
            "client_secret": config.secret(*self.client_secret),
        }
        return {**form, "scope": self.scope} if self.scope else form

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None:
        url = _join(base_url, self.token_path)

        async def fetch(http: HttpClient) -> Token:
            return await oauth2_token(http, url, self.form(config), headers=self.token_headers(config))

        return TokenAuth(fetch, place=self.place)

    def place(self, request: Request, token: Token) -> None:
        request.headers["Authorization"] = f"{self.scheme} {token.value}"

    def token_headers(self, config: IntegrationConfig) -> dict[str, str]:
        """Headers of the token request (client authentication by HTTP basic, where asked)."""
        return {}


@dataclass(frozen=True)
class OAuth2Refresh(OAuth2ClientCredentials):
    """RFC 6749 §6: a long-lived refresh token traded for access tokens."""

    refresh_token: Keys = ("refreshToken",)
    #: Authenticate the client with HTTP basic (RFC 6749 §2.3.1) instead of form fields (Pipedrive).
    client_basic: bool = False

    def check(self, config: IntegrationConfig) -> None:
        super().check(config)
        config.secret(*self.refresh_token)

    def form(self, config: IntegrationConfig) -> dict[str, str]:
        if self.client_basic:
            return {"grant_type": "refresh_token", "refresh_token": config.secret(*self.refresh_token)}
        return {
            "grant_type": "refresh_token",
            "client_id": config.secret(*self.client_id),
            "client_secret": config.secret(*self.client_secret),
            "refresh_token": config.secret(*self.refresh_token),
        }

    def token_headers(self, config: IntegrationConfig) -> dict[str, str]:
        if not self.client_basic:
            return {}
        secret = config.secret(*self.client_secret)
        register_secret(secret)
        pair = base64.b64encode(f"{config.secret(*self.client_id)}:{secret}".encode()).decode()
        register_secret(pair)
        return {"Authorization": f"Basic {pair}"}


@dataclass(frozen=True)
class JsonToken:
    """A vendor token endpoint answering JSON (WeCom ``gettoken``, Feishu, DingTalk).

    ``send`` maps request field → credential keys; ``method`` GET sends them as query parameters,
    POST as a JSON body. The token goes in header ``header`` (with ``prefix``) or query ``param``.
    """

    path: str
    send: Mapping[str, Keys]
    token_field: str
    ttl_field: str
    method: Literal["GET", "POST"] = "POST"
    code_field: str | None = None
    message_field: str = "msg"
    header: str = "Authorization"
    prefix: str = "Bearer "
    param: str = ""

    def check(self, config: IntegrationConfig) -> None:
        for keys in self.send.values():
            config.secret(*keys)

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None:
        url = _join(base_url, self.path)
        for name, keys in self.send.items():
            if "secret" in name.lower():
                register_secret(config.secret(*keys))

        async def fetch(http: HttpClient) -> Token:
            values = {name: config.secret(*keys) for name, keys in self.send.items()}
            request = (
                Request("GET", url, params=values, authenticated=False)
                if self.method == "GET"
                else Request("POST", url, json=values, authenticated=False)
            )
            return await fetch_json_token(
                http,
                request,
                token_field=self.token_field,
                ttl_field=self.ttl_field,
                code_field=self.code_field,
                message_field=self.message_field,
                classify=http.classify,
            )

        def place(request: Request, token: Token) -> None:
            if self.param:
                request.params[self.param] = token.value
            else:
                request.headers[self.header] = f"{self.prefix}{token.value}"

        return TokenAuth(fetch, place=place)


class AuthScheme(Protocol):
    """How an ``authType`` authenticates: the credentials it needs, and the scheme it builds."""

    def check(self, config: IntegrationConfig) -> None: ...

    def build(self, config: IntegrationConfig, base_url: str) -> Auth | None: ...


def _join(base_url: str, path: str) -> str:
    return path if path.startswith(("http://", "https://")) else f"{base_url.rstrip('/')}/{path.lstrip('/')}"


# -- calls ---------------------------------------------------------------------------------------

BodyBuilder = Callable[[Any, dict[str, Any], ClassifiedMessage, DeliveryContext], Any]
UrlBuilder = Callable[[Any, str, Any], str | None]


@dataclass(frozen=True)
class CreateCall:
    """One object type's create call and where the created record's id and URL are."""

    path: str
    method: str = "POST"
    #: (adapter, rendered fields, event, ctx) → request body; default: the rendered mapping.
    body: BodyBuilder | None = None
    #: Send the delivery's idempotency key in this header (``Idempotency-Key``).
    idempotency_header: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: (adapter, ctx) → query parameters (Feishu's ``client_token``, ``user_id_type``).
    params: Callable[[Any, DeliveryContext], dict[str, str]] | None = None
    #: Headers from the event (``X-Octopus-Event-Id``).
    event_headers: Callable[[ClassifiedMessage], Mapping[str, str]] | None = None
    id_at: tuple[str | int, ...] = ("id",)
    #: Or: the id computed from the decoded body (a composite such as Slack's channel:ts).
    id_of: Callable[[Any], Any] | None = None
    #: Or: the id is the last path segment of this response header (``Location``).
    id_header: str | None = None
    url_at: tuple[str | int, ...] | None = None
    #: (adapter, id, decoded body) → a URL a person can open.
    url: UrlBuilder | None = None
    #: A receiver that answers without an id: the idempotency key stands in for one.
    key_as_id: bool = False
    #: Any answer is a success (a webhook's "ok"); otherwise the body must be a JSON object.
    any_body: bool = False
    #: More values kept with the result: name → body path (Jira's numeric id next to its key).
    detail: Mapping[str, tuple[str | int, ...]] = field(default_factory=dict)
    #: What the record is called in an error message ("issue key").
    what: str = "a record id"
    #: (adapter, request body, ctx) → the URL, when it depends on the record (DingTalk's to-do
    #: goes to ``/v1.0/todo/users/{the owner's unionId}/tasks``); overrides ``path``.
    path_of: Callable[[Any, Any, DeliveryContext], str] | None = None
    #: The idempotency key as the vendor takes it (a length limit: Zendesk's 255 characters).
    idempotency_value: Callable[[str], str] | None = None

    def delivered(self, adapter: Any, response: Response, ctx: DeliveryContext | None) -> Delivered:
        # A body the id is read from must be an object (a list or text is a typed error).
        body = response.json() if self.any_body or self.id_header else response.json_object(self.path or "create")
        return self.delivered_from(adapter, body, response.headers, ctx)

    def delivered_from(
        self, adapter: Any, body: Any, headers: Mapping[str, str], ctx: DeliveryContext | None
    ) -> Delivered:
        raw: Any
        if self.id_of is not None:
            raw = self.id_of(body)
        elif self.id_header is not None:
            raw = headers.get(self.id_header, "")
        else:
            raw = at_path(body, self.id_at)
        if self.id_header is not None and isinstance(raw, str):
            raw = raw.rstrip("/").rsplit("/", 1)[-1]
        if raw in (None, "") or isinstance(raw, (dict, list, bool)):
            if self.key_as_id and ctx is not None:
                raw = ctx.idempotency_key
            else:
                raise PermanentError(
                    f"{adapter.info.display_name.split()[0]} answered without {self.what}: {str(body)[:200]}",
                    code="bad_response",
                )
        record_id = str(raw)
        url: Any = None
        if self.url is not None:
            url = self.url(adapter, record_id, body)
        elif self.url_at is not None:
            url = at_path(body, self.url_at)
        detail: dict[str, Any] = {}
        if self.detail:
            detail = {name: value for name, path in self.detail.items() if (value := at_path(body, path))}
        return Delivered(record_id, url if isinstance(url, str) and url else None, detail)


@dataclass(frozen=True)
class FindCall:
    """Look a record up by the delivery's idempotency key (after an ambiguous create)."""

    path: str
    params: Callable[[Any, DeliveryContext], dict[str, str]]
    items_at: tuple[str | int, ...]
    method: str = "GET"
    #: (adapter) → whether the lookup can work with this configuration.
    enabled: Callable[[Any], bool] = lambda adapter: True
    #: (adapter, item, ctx) → whether a listed item is this delivery's record (a marker in its text),
    #: for vendors whose list call cannot filter by the marker itself.
    match: Callable[[Any, Any, DeliveryContext], bool] | None = None
    #: Reads a found item when it is shaped unlike the create answer (Zendesk wraps a created
    #: ticket in ``{"ticket": …}``, lists it bare); default: the object type's create call.
    read: CreateCall | None = None


@dataclass(frozen=True)
class ConnectionCheck:
    """The cheapest authenticated read; sent unpaced (an operator's test never waits)."""

    path: str
    method: str = "GET"


@dataclass(frozen=True)
class Errors:
    """How the vendor reports failures, on top of the HTTP-status taxonomy.

    ``message`` extracts the vendor's message; ``body_codes`` classifies 200-with-code answers;
    ``graphql`` treats a non-empty top-level ``errors`` list as a failure; ``status`` overrides the
    class of a status; ``retry_after_headers`` are read when ``Retry-After`` is absent (seconds, or
    an ISO time); ``quota`` says when a 429 is a spent quota rather than a short window.
    """

    message: Callable[[Response], str] | None = None
    body_codes: Any = None  # adapters.base.BodyCodes; Any keeps this module free of a cycle
    graphql: bool = False
    status: Mapping[int, Literal["retryable", "permanent", "auth"]] = field(default_factory=dict)
    retry_after_headers: tuple[str, ...] = ()
    quota: Callable[[Response], bool] | None = None
    quota_retry_after: float = 3600.0
    #: Headers holding the reset moment as Unix seconds (ClickUp's ``X-RateLimit-Reset``).
    reset_at_headers: tuple[str, ...] = ()
    #: The wait of a 429 that names none (Trello's 10-s window, Airtable's 30-s penalty).
    default_retry_after: float | None = None
    #: ``adapters.graphql.GraphQLErrors``: the vendor's ``errors[]`` codes (default rules when None).
    graphql_rules: Any = None

    def classify(self, response: Response) -> DeliveryError | None:
        if 200 <= response.status < 300 and not self.graphql and self.body_codes is None:
            return None  # classify_status's answer for a 2xx, which no rule below changes
        # errors[] decide before the status: vendors send the same GraphQL error with 200 or 400.
        error = _graphql_error(response, self.graphql_rules) if self.graphql else None
        if error is None:
            error = self._status_error(response)
        if error is None:
            return None
        if (kind := self.status.get(response.status)) is not None:
            cls = {"retryable": RetryableError, "permanent": PermanentError, "auth": AuthError}[kind]
            error = cls(error.message, code=error.code, status=error.status, retry_after=error.retry_after)
        if isinstance(error, RateLimitedError) and error.retry_after is None:
            error.retry_after = _header_seconds(response, self.retry_after_headers)
        if isinstance(error, RateLimitedError) and error.retry_after is None:
            error.retry_after = _reset_at_seconds(response, self.reset_at_headers) or self.default_retry_after
        if isinstance(error, RateLimitedError) and self.quota is not None and self.quota(response):
            wait = error.retry_after if error.retry_after is not None else self.quota_retry_after
            error = QuotaExhaustedError(error.message, code=error.code, status=error.status, retry_after=wait)
        return error

    def _status_error(self, response: Response) -> DeliveryError | None:
        if self.body_codes is not None:
            error: DeliveryError | None = self.body_codes.classify(response)
            return error
        if self.message is not None:
            return classify_status(response, self.message)
        return classify_status(response)


def _graphql_error(response: Response, rules: Any) -> DeliveryError | None:
    """A non-empty ``errors`` list (or top-level error code) classified by ``rules``; None without one."""
    from octopus_crm.adapters.graphql import GraphQLErrors  # the GraphQL kit builds on this module

    rules = rules if rules is not None else GraphQLErrors()
    body = response.json()
    if not isinstance(body, dict) or not (body.get("errors") or body.get(rules.top_code)):
        return None
    error: DeliveryError | None = rules.classify(response)
    return error


def _header_seconds(response: Response, names: tuple[str, ...]) -> float | None:
    for name in names:
        value = response.headers.get(name)
        if not value:
            continue
        seconds = parse_retry_after(value)
        if seconds is not None:
            return seconds
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            continue
        return max(0.0, when.timestamp() - datetime.now(when.tzinfo).timestamp())
    return None


# -- the spec and its engine ---------------------------------------------------------------------


@dataclass(frozen=True)
class VendorSpec:
    #: Auth scheme per ``authType``; ``default_auth`` is used when the config names none.
    auth: Mapping[str, AuthScheme]
    default_auth: str
    objects: Mapping[str, CreateCall]
    errors: Errors = field(default_factory=Errors)
    find: Mapping[str, FindCall] = field(default_factory=dict)
    test_call: ConnectionCheck | None = None
    #: Why the vendor cannot be tested without a write (when ``test_call`` is None).
    not_testable: str = "this target has no read call to test with"
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Headers announcing the requests left in the vendor's window (read on every answer).
    limit_headers: LimitHeaders | None = None


class SpecAdapter(HttpAdapter):
    """An adapter whose behaviour is its class's :class:`VendorSpec`."""

    spec: ClassVar[VendorSpec]

    def validate_config(self) -> None:
        super().validate_config()
        self.auth_scheme.check(self.config)

    @property
    def auth_type(self) -> str:
        return self.config.authType or self.spec.default_auth

    @property
    def auth_scheme(self) -> AuthScheme:
        scheme = self.spec.auth.get(self.auth_type)
        if scheme is None:
            raise ConfigError(
                f"authType must be one of {', '.join(self.spec.auth)} (got {self.config.authType!r})",
                code="bad_auth_type",
            )
        return scheme

    def classifier(self) -> Classifier:
        limits = self.spec.limit_headers
        if limits is None:
            return self.spec.errors.classify

        def classify(response: Response) -> DeliveryError | None:
            limits.observe(response, self.current_limiter())
            return self.spec.errors.classify(response)

        return classify

    def make_http(self, limiter: Limiter) -> HttpClient:
        return HttpClient(
            name=self.integration_id,
            base_url=self.base_url,
            limiter=limiter,
            auth=self.make_auth(),
            classify=self.classifier(),
            timeouts=self.timeouts,
            default_headers=self.default_headers(),
        )

    def make_auth(self) -> Auth | None:
        return self.auth_scheme.build(self.config, self.base_url)

    def default_headers(self) -> dict[str, str]:
        return dict(self.spec.headers)

    def create_call(self, object_type: str) -> CreateCall:
        call = self.spec.objects.get(object_type)
        if call is None:
            raise ConfigError(f"{self.info.type} has no object type {object_type!r}", code="unknown_object_type")
        return call

    def path_vars(self) -> dict[str, str]:
        """Values for ``{placeholders}`` in call paths (a Base's app token and table id)."""
        return {}

    def request_body(self, call: CreateCall, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Any:
        fields = self.render(event, object_type, ctx) if self.templates or not self.allows_unmapped else {}
        return call.body(self, fields, event, ctx) if call.body is not None else fields

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        call = self.create_call(object_type)
        headers = dict(call.headers)
        if call.idempotency_header:
            key = ctx.idempotency_key
            headers[call.idempotency_header] = call.idempotency_value(key) if call.idempotency_value else key
        if call.event_headers is not None:
            headers.update(call.event_headers(event))
        body = self.request_body(call, event, object_type, ctx)
        url = call.path.format(**self.path_vars()) if call.path else self.base_url  # "": the URL as written
        if call.path_of is not None:
            url = call.path_of(self, body, ctx)
        params = call.params(self, ctx) if call.params is not None else {}
        response = await self.http.send(Request(call.method, url, json=body, headers=headers, params=params))
        return call.delivered(self, response, ctx)

    async def find_existing(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered | None:
        find = self.spec.find.get(object_type)
        if find is None or not find.enabled(self):
            return None
        path = find.path.format(**self.path_vars())
        response = await self.http.send(Request(find.method, path, params=find.params(self, ctx)))
        items = at_path(response.json(), find.items_at)
        if isinstance(items, list) and find.match is not None:
            items = [item for item in items if find.match(self, item, ctx)]
        if not isinstance(items, list) or not items:
            return None
        return (find.read or self.create_call(object_type)).delivered_from(self, items[0], {}, None)

    async def test_connection(self) -> None:
        call = self.spec.test_call
        if call is None:
            raise ConfigError(self.spec.not_testable, code="not_testable")
        await self.http.send(Request(call.method, call.path, paced=False))


def _reset_at_seconds(response: Response, names: tuple[str, ...]) -> float | None:
    """Seconds until the Unix time in the first of ``names`` present (never negative)."""
    for name in names:
        try:
            return max(0.0, float(response.headers.get(name) or "") - time.time())
        except ValueError:
            continue
    return None


def dedupe_marker(idempotency_key: str, digits: int = 16) -> str:
    """``octopus-<digits hex of sha256(key)>``: a findable trace of a delivery (a label, tag, text
    marker or external id) for vendors without an idempotency key; no spaces, safe in labels, tags
    and queries."""
    return "octopus-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:digits]


@dataclass(frozen=True)
class LimitHeaders:
    """A vendor's "requests left" headers (Zendesk ``ratelimit-remaining``, Pipedrive
    ``x-ratelimit-remaining``): at zero, hold this integration until the window resets, so the
    next call does not spend a 429 finding out.
    """

    remaining: str
    #: Seconds until the window resets (delta-seconds); ``default_wait`` when absent.
    reset: str
    default_wait: float = 1.0
    #: A rolling window of this many seconds (Pipedrive's 2 s): its oldest call ages out about
    #: one slot (window / the ``limit`` header) later, so wait that, not the whole window.
    rolling_window: float = 0.0
    limit: str = ""

    def observe(self, response: Response, limiter: Limiter | None) -> None:
        value = response.headers.get(self.remaining)
        if limiter is None or value is None:
            return
        try:
            left = float(value)
        except ValueError:
            return  # a vendor header is untrusted text: an unreadable one says nothing
        if left > 0:
            return
        if self.rolling_window and (allowed := parse_retry_after(response.headers.get(self.limit))):
            limiter.slow_down(self.rolling_window / allowed)
            return
        wait = parse_retry_after(response.headers.get(self.reset))
        limiter.slow_down(self.default_wait if wait is None else wait)
