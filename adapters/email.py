"""Email over SMTP: one templated message per delivery, submitted with aiosmtplib.

Submission follows RFC 6409 / RFC 8314: port 587 with STARTTLS (the default) or port 465 with
implicit TLS (``endpoints.port: 465`` or ``endpoints.tls: true``). Credentials are only ever sent
over TLS: a configuration that would AUTH in clear is refused at load unless it sets
``endpoints.allowInsecureAuth: true`` (meant for a local relay or test server only). A private CA
goes in ``endpoints.caFile``; ``endpoints.verify: false`` turns certificate checks off.

The mapping (object type ``email``, also ``message``) holds ``from``, ``to`` and optionally
``cc``, ``bcc``, ``replyTo``, ``subject``, ``body`` (plain text) and ``html``. The message is a
UTF-8 MIME message (RFC 2047 encoded headers, 7-bit transfer encodings, IDN domains as
punycode; a non-ASCII local part would need SMTPUTF8 and is refused) with a ``Message-ID``
derived from the delivery's idempotency key, so every retry of one delivery carries the same
id: SMTP has no idempotency or lookup, a retry after a lost ``250`` duplicates the mail, and the
shared Message-ID lets mail clients and archives fold such duplicates. The Message-ID is the
external id; there is no URL.

Replies: 4xx is retryable (421/4.7.x "slow down" replies are rate limits), 5xx permanent with
the server's text, 530/534/535/538 are authentication failures. Connection failures and timeouts
before DATA are retryable; a timeout or disconnect once DATA started is ambiguous (the server may
have accepted the message). A 4xx on any recipient fails the whole attempt before DATA, so a
retry reaches every recipient exactly once; a 5xx on some recipients (not all) still sends to
the rest and lists the refusals in ``Delivered.detail``.

One connection per message (connect, STARTTLS, AUTH, MAIL/RCPT/DATA, QUIT): at the default pace
the handshake costs little, and no pooled connection can go stale between events.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as _SMTP_POLICY
from email.policy import Policy
from email.utils import format_datetime, getaddresses
from typing import Any

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from octopus_crm.adapters.base import Adapter, AdapterInfo, Delivered, DeliveryContext
from octopus_crm.adapters.http import Timeouts, check_body_size
from octopus_crm.adapters.ratelimit import Limiter, RateLimit
from octopus_crm.adapters.settings import Credentials, VendorSettings, alias
from octopus_crm.core.contracts import ClassifiedMessage
from octopus_crm.core.errors import (
    AmbiguousDeliveryError,
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    RetryableError,
)
from octopus_crm.core.redaction import redact, register_secret

__all__ = ["EmailAdapter", "SmtpEndpoints", "address_limits", "build_message", "classify_reply", "message_id_for"]

# 7-bit transfer encodings (quoted-printable / base64) work with every server, 8BITMIME or not.
POLICY = _SMTP_POLICY.clone(cte_type="7bit")
FIELDS = frozenset({"from", "to", "cc", "bcc", "replyTo", "subject", "body", "html"})
AUTH_CODES = frozenset({530, 534, 535, 538})  # auth required / too weak / invalid / needs TLS
RATE_LIMIT_PAUSE = 30.0  # SMTP has no Retry-After; back off this long on a "slow down" reply
QUOTA_PAUSE = 3600.0  # daily sending quota spent (e.g. Gmail 550 5.4.5)
_RATE = re.compile(r"too many (messages|mails|emails|connections)|slow down|throttl|\brate\b", re.I)
_QUOTA = re.compile(r"\b5\.4\.5\b|quota|sending limit exceeded", re.I)
_LINEBREAKS = re.compile(r"[\r\n]+")
_SLOT = re.compile(r"\{\{.*?\}\}", re.S)
ADDRESS_FIELDS = ("from", "to", "cc", "bcc", "replyTo")


class SmtpEndpoints(BaseModel):
    """``config.endpoints`` of an email integration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    starttls: bool | None = None
    tls: bool = False
    verify: bool = True
    caFile: str | None = None
    allowInsecureAuth: bool = False
    localHostname: str | None = None
    messageIdDomain: str = "octopus-crm-sync"

    @property
    def implicit_tls(self) -> bool:
        return self.tls or self.port == 465

    @property
    def use_starttls(self) -> bool:
        return not self.implicit_tls and self.starttls is not False

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self.use_starttls

    @property
    def port_number(self) -> int:
        return self.port or (465 if self.implicit_tls else 587)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.encrypted:
            return None
        try:
            context = ssl.create_default_context(cafile=self.caFile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"endpoints.caFile: cannot load {self.caFile!r}: {exc}", code="bad_ca_file") from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class EmailCredentials(Credentials):
    username: str | None = alias("username", "user", description="SMTP AUTH user (authType smtp).")
    password: SecretStr | None = Field(default=None, description="SMTP AUTH password (authType smtp).")


class EmailSettings(VendorSettings):
    credentials: EmailCredentials = Field(default_factory=EmailCredentials)
    endpoints: SmtpEndpoints  # type: ignore[assignment]


class EmailAdapter(Adapter):
    info = AdapterInfo(
        type="email",
        display_name="Email (SMTP)",
        display_name_zh="邮件 (SMTP)",
        object_types=("email", "message"),
        auth_types=("smtp", "none"),
        # No vendor limit to follow: submission servers cap per mailbox (Exchange Online 30/min,
        # Gmail ~2,000/day) and count concurrent connections. 5/s with 4 connections suits a
        # company relay; a hosted mailbox should set e.g. {"requests": 30, "perSeconds": 60}.
        rate_limit=RateLimit(requests=5, concurrency=4),
        aliases=("smtp",),
        idempotency="Message-ID derived from the idempotency key; SMTP has no dedupe or lookup",
        docs="RFC 5321, RFC 6409, RFC 8314, RFC 3834",
    )
    settings_model = EmailSettings

    endpoints: SmtpEndpoints
    _credentials: tuple[str, str] | None
    _tls: ssl.SSLContext | None
    _limiter: Limiter | None = None
    _address_limits: dict[str, dict[str, tuple[int, int]]]

    # -- configuration -----------------------------------------------------------------------

    def validate_config(self) -> None:
        super().validate_config()
        try:
            self.endpoints = SmtpEndpoints.model_validate(self.config.endpoints)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"endpoints.{where}: {first['msg']}", code="bad_endpoints") from None
        self._address_limits = {}
        for object_type, mapping in self.config.mappings.items():
            _check_mapping(object_type, mapping)
            self._address_limits[object_type] = address_limits(mapping)
        self._credentials = None
        if (self.config.authType or "smtp") != "none":
            user = self.config.secret("username", "user")
            password = self.config.secret("password")
            register_secret(password)
            self._credentials = (user, password)
        ep = self.endpoints
        if self._credentials and not ep.encrypted and not ep.allowInsecureAuth:
            raise ConfigError(
                "endpoints: refusing to send SMTP credentials without TLS; set starttls: true, "
                "use port 465 / tls: true, or (local test servers only) allowInsecureAuth: true",
                code="insecure_auth",
            )
        self._tls = self.endpoints.tls_context()

    @property
    def rate_limit(self) -> RateLimit:
        return self.config.rateLimit or self.info.rate_limit

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(**self.config.timeouts) if self.config.timeouts else Timeouts()

    def current_limiter(self) -> Limiter | None:
        return self.limiter

    @property
    def limiter(self) -> Limiter:
        if self._limiter is None:
            self._limiter = self.new_limiter(self.rate_limit)
        return self._limiter

    async def start(self) -> None:
        _ = self.limiter

    # -- delivery ----------------------------------------------------------------------------

    async def create(self, event: ClassifiedMessage, object_type: str, ctx: DeliveryContext) -> Delivered:
        message_id = message_id_for(ctx.idempotency_key, self.endpoints.messageIdDomain)
        if object_type not in self.templates:  # "email" and "message" are one object type
            mapped = (t for t in self.info.object_types if t in self.templates)
            object_type = next(mapped, object_type)
        limits = {**self._address_limits.get(object_type, {}), **address_limits(dict(ctx.overrides))}
        fields = self.render(event, object_type, ctx)
        rendered = sum(len(_text(v).encode("utf-8")) for v in fields.values() if not isinstance(v, list))
        check_body_size(rendered, self.info.max_body_bytes, self.integration_id)
        message, sender, recipients = build_message(
            fields, message_id=message_id, event_id=event.eventId, limits=limits
        )
        try:
            async with self.limiter.slot():
                reply, refused = await self._submit(message, sender, recipients)
        except RateLimitedError as exc:
            self.limiter.slow_down(RATE_LIMIT_PAUSE if exc.retry_after is None else exc.retry_after)
            raise
        detail: dict[str, Any] = {"reply": reply, "recipients": recipients}
        if refused:
            detail["refused"] = refused
        return Delivered(message_id, None, detail)

    async def test_connection(self) -> None:
        """Connect, STARTTLS, AUTH, NOOP, QUIT."""
        smtp, at = self._client(), _Phase()
        try:
            await self._open(smtp, at)
            await smtp.noop()
            await _quit(smtp)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._translate(exc, at.name) from None
        finally:
            smtp.close()

    def _client(self) -> aiosmtplib.SMTP:
        ep = self.endpoints
        return aiosmtplib.SMTP(
            hostname=ep.host,
            port=ep.port_number,
            use_tls=ep.implicit_tls,
            start_tls=False,  # done explicitly in _open, so a missing STARTTLS is a clear error
            tls_context=self._tls,
            timeout=self.timeouts.read,
            local_hostname=ep.localHostname,
        )

    async def _open(self, smtp: aiosmtplib.SMTP, at: _Phase) -> None:
        """Connect, upgrade to TLS, authenticate; ``at`` follows the progress."""
        at.name = "connect"
        await smtp.connect(timeout=self.timeouts.connect)
        at.name = "ehlo"
        await smtp.ehlo()
        if self.endpoints.use_starttls:
            at.name = "starttls"
            if not smtp.supports_extension("starttls"):
                raise ConfigError(
                    f"{self.integration_id}: {self.endpoints.host} does not offer STARTTLS; "
                    "use port 465 (tls: true) or a server that supports it",
                    code="no_starttls",
                )
            await smtp.starttls()
            await smtp.ehlo()
        if self._credentials is None:
            return
        at.name = "auth"
        if smtp.get_transport_info("sslcontext") is None and not self.endpoints.allowInsecureAuth:
            raise ConfigError(
                f"{self.integration_id}: connection is not encrypted; not sending credentials",
                code="insecure_auth",
            )
        if not smtp.supports_extension("auth"):
            raise ConfigError(
                f"{self.integration_id}: {self.endpoints.host} offers no AUTH on this connection",
                code="no_auth",
            )
        await smtp.login(*self._credentials)

    async def _submit(self, message: EmailMessage, sender: str, recipients: list[str]) -> tuple[str, dict[str, str]]:
        smtp, at = self._client(), _Phase()
        try:
            await self._open(smtp, at)
            await self.limiter.pace()  # servers count messages, not handshakes: pace at MAIL
            at.name = "envelope"
            await smtp.mail(sender)
            refused: dict[str, str] = {}
            first: aiosmtplib.SMTPRecipientRefused | None = None
            for rcpt in recipients:
                try:
                    await smtp.rcpt(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    if exc.code < 500:
                        raise  # nothing sent yet: retry the whole message later
                    refused[rcpt] = f"{exc.code} {exc.message}"
                    first = first or exc
            if first is not None and len(refused) == len(recipients):
                raise first
            raw = message.as_bytes(policy=POLICY)
            at.name = "data"
            response = await smtp.data(raw)
            at.name = "quit"
            await _quit(smtp)
            return f"{response.code} {response.message}", refused
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._translate(exc, at.name) from None
        finally:
            smtp.close()

    def _translate(self, exc: BaseException, phase: str) -> DeliveryError:
        """aiosmtplib and socket errors onto the taxonomy; ``phase`` says how far we got."""
        where = f"{self.integration_id}: {self.endpoints.host}:{self.endpoints.port_number}"
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            exc = exc.recipients[0]
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return classify_reply(exc.code, exc.message)
        tls = _ssl_cause(exc)
        if isinstance(tls, ssl.SSLCertVerificationError):
            return ConfigError(
                f"{where}: TLS certificate not trusted ({tls.verify_message or tls.reason});"
                " set endpoints.caFile to the server's CA",
                code="tls_verify",
            )
        if tls is not None:  # e.g. WRONG_VERSION_NUMBER: TLS spoken to a plain-text port
            return ConfigError(
                f"{where}: TLS handshake failed ({tls.reason or tls}); check endpoints.port,"
                " tls (port 465) and starttls (port 587)",
                code="tls_handshake",
            )
        if isinstance(exc, (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected)):
            label = "timeout" if isinstance(exc, aiosmtplib.SMTPTimeoutError) else "disconnected"
            if phase == "data":
                return AmbiguousDeliveryError(f"{where}: {label} after DATA was sent", code=label)
            return RetryableError(f"{where}: {label} during {phase}", code=label)
        if isinstance(exc, aiosmtplib.SMTPConnectError) or phase == "connect":
            return RetryableError(f"{where}: cannot connect: {redact(str(exc))}", code="connect")
        if phase == "data":
            return AmbiguousDeliveryError(f"{where}: {redact(str(exc))}", code="disconnected")
        return RetryableError(f"{where}: {redact(str(exc))}", code="smtp")


@dataclass
class _Phase:
    """How far one SMTP conversation got: decides retryable versus ambiguous."""

    name: str = "connect"


# -- replies -------------------------------------------------------------------------------


def classify_reply(code: int, text: str) -> DeliveryError:
    """An SMTP error reply as a typed error, keeping the server's words."""
    message = redact(f"{code} {text}".strip())[:500]
    label = f"smtp_{code}"
    if code in AUTH_CODES:
        return AuthError(message, code=label, status=code)
    if 400 <= code < 500:
        if _RATE.search(text):
            return RateLimitedError(message, code=label, status=code, retry_after=RATE_LIMIT_PAUSE)
        return RetryableError(message, code=label, status=code)
    if code >= 500 and _QUOTA.search(text):
        return QuotaExhaustedError(message, code=label, status=code, retry_after=QUOTA_PAUSE)
    return PermanentError(message, code=label, status=code)


# -- the message ---------------------------------------------------------------------------


def message_id_for(idempotency_key: str, domain: str = "octopus-crm-sync") -> str:
    """A Message-ID that is the same for every attempt of one delivery."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def address_limits(mapping: Any) -> dict[str, tuple[int, int]]:
    """For each address field of a mapping, how many addresses its rendering may hold.

    The bounds are (addresses written literally, those plus one per template slot); a slot is
    one address however it is written (``"{{senderName}} <{{senderEmail}}>"`` is one). A
    customer-supplied value such as ``eve@example.com, attacker@evil.example`` would otherwise
    add recipients to the envelope.
    """
    if not isinstance(mapping, dict):
        return {}
    limits: dict[str, tuple[int, int]] = {}
    for key in ADDRESS_FIELDS:
        if key not in mapping:
            continue
        value = mapping[key]
        items = value if isinstance(value, list) else [value]
        literal = templated = 0
        for item in items:
            skeleton = _SLOT.sub("\x00", _text(item))  # a slot: one opaque token, no comma, no @
            for name, addr in getaddresses([skeleton]):
                if not (name or addr):
                    continue
                if "\x00" in name or "\x00" in addr:
                    templated += 1
                else:
                    literal += 1
        limits[key] = (literal, literal + templated)
    return limits


def build_message(
    fields: dict[str, Any],
    *,
    message_id: str,
    event_id: str,
    limits: dict[str, tuple[int, int]] | None = None,
) -> tuple[EmailMessage, str, list[str]]:
    """The MIME message, the envelope sender and the envelope recipients (Bcc included).

    ``limits`` (from :func:`address_limits`) bounds how many addresses each rendered field holds.
    """
    parsed = {key: _addresses(fields.get(key), key) for key in ADDRESS_FIELDS}
    for key, (low, high) in (limits or {}).items():
        count = len(parsed.get(key, ()))
        if not low <= count <= high:
            allowed = f"{high}" if low == high else f"{low} to {high}"
            raise PermanentError(
                f"{key}: rendered to {count} addresses where the mapping allows {allowed}"
                " (each template value must be exactly one address)",
                code="address_count",
            )
    sender = parsed["from"]
    if len(sender) != 1:
        raise PermanentError("from must be exactly one address", code="bad_address")
    to, cc, bcc = parsed["to"], parsed["cc"], parsed["bcc"]
    if not (to or cc or bcc):
        raise PermanentError("the message has no recipients (to, cc, bcc)", code="no_recipients")
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender[0]
    if to:
        msg["To"] = to
    if cc:
        msg["Cc"] = cc
    reply_to = parsed["replyTo"]
    if reply_to:
        msg["Reply-To"] = reply_to
    # Header values cannot hold line breaks: a templated subject gets them as spaces.
    msg["Subject"] = _unstructured("Subject", _LINEBREAKS.sub(" ", _text(fields.get("subject"))))
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
    msg["X-Auto-Response-Suppress"] = "All"  # the same for Exchange
    msg["X-Octopus-Event-Id"] = event_id
    body, html = fields.get("body"), fields.get("html")
    if html is not None and body is None:
        msg.set_content(_text(html), subtype="html", charset="utf-8")
    else:
        msg.set_content(_text(body), charset="utf-8")
        if html is not None:
            msg.add_alternative(_text(html), subtype="html", charset="utf-8")
    recipients = list(dict.fromkeys(a.addr_spec for a in (*to, *cc, *bcc)))
    return msg, sender[0].addr_spec, recipients


def _addresses(value: Any, key: str) -> list[Address]:
    """A rendered list or comma-separated string of addresses, each checked."""
    if value is None or value == "":
        return []
    items: Iterable[Any] = value if isinstance(value, list) else [value]
    out: list[Address] = []
    for item in items:
        text = _text(item)
        parsed = [(n, a) for n, a in getaddresses([text]) if a]
        try:
            if "\r" in text or "\n" in text or (text.strip() and not parsed):
                raise ValueError(text)
            for name, addr in parsed:
                local, _, domain = addr.rpartition("@")
                if not local or not domain:
                    raise ValueError(addr)
                # IDN domains as punycode: every server takes them, no SMTPUTF8 needed. A
                # non-ASCII local part would need SMTPUTF8 and is refused (ValueError) here.
                domain = domain.encode("idna").decode("ascii")
                out.append(Address(display_name=name, addr_spec=f"{local}@{domain}"))
        except (ValueError, IndexError):
            raise PermanentError(
                f"{key}: {text!r} is not an email address we can send to", code="bad_address"
            ) from None
    return out


class _EncodedHeader(str):
    """An unstructured header value with its own RFC 2047 encoding; the policy folds it as is.

    CPython's folder (3.11-3.13) drops the space between two encoded words when it breaks a
    long non-ASCII header at that space, so '投诉 "紧急"' can arrive as '投诉"紧急"'.
    :class:`email.header.Header` encodes the whole text, spaces inside the words, exactly.
    """

    name: str

    def __new__(cls, name: str, value: str) -> _EncodedHeader:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        linesep = policy.linesep
        encoded = Header(str(self), "utf-8", header_name=self.name).encode(linesep=linesep)
        return f"{self.name}: {encoded}{linesep}"


def _unstructured(name: str, value: str) -> str:
    """A plain header value, or an :class:`_EncodedHeader` when it needs encoded words."""
    return value if value.isascii() and "=?" not in value else _EncodedHeader(name, value)


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _check_mapping(object_type: str, mapping: Any) -> None:
    path = f"mappings.{object_type}"
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path} must be an object (from, to, subject, body)", code="bad_mapping")
    unknown = sorted(set(mapping) - FIELDS)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}: unknown field (known: {', '.join(sorted(FIELDS))})",
            code="bad_mapping",
        )
    if "from" not in mapping:
        raise ConfigError(f"{path}.from is required", code="bad_mapping")
    if not any(k in mapping for k in ("to", "cc", "bcc")):
        raise ConfigError(f"{path}.to is required (or cc / bcc)", code="bad_mapping")


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Say goodbye politely; the message is already accepted, so a failed QUIT does not matter."""
    if smtp.is_connected:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS failure behind a connection error (aiosmtplib wraps it), if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
