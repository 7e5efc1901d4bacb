"""A submission server: aiosmtpd on loopback with STARTTLS or implicit TLS and AUTH PLAIN/LOGIN.

The certificate is issued at start by a throw-away CA (``trustme``); :meth:`SmtpFake.endpoints`
hands its CA file to the adapter, so certificate checks stay on. AUTH is only offered over TLS
and bad credentials get ``535``; ``mode="plain"`` offers AUTH in clear without requiring it (the
``allowInsecureAuth`` path). Every accepted message is parsed (headers decoded, text parts
decoded with line breaks as a mail client shows them) into ``records`` keyed by Message-ID; like
a real server the fake accepts a repeated Message-ID, and ``records[mid]["copies"]`` counts them;
``messages`` keeps every arrival in order.

Faults are the kit's :class:`Fault` with ``path_contains`` naming the SMTP command (``MAIL``,
``RCPT`` or ``DATA``), ``status`` the reply code and ``body`` its text; ``delay`` holds the reply
back and ``after_effect`` accepts the message before failing (a lost ``250``). A rate limit
(``rate_limit=(n, seconds)``) counts messages at ``MAIL`` and answers ``421 4.7.0 Too many
messages, slow down``.

SMTP is not HTTP, so this fake is not a :class:`~octopus_crm_sandbox.kit.FakeVendor` and
:class:`~octopus_crm_sandbox.kit.SandboxServer` cannot run it: it has the same face (``name``,
``ENV``, ``endpoints()``, ``records``, ``inject()``, ``window``, the ``rate_limit`` / ``latency``
keywords) and its own ``await fake.start()`` / ``await fake.stop()`` (or ``async with``), which
the sandbox runner calls for fakes that are not ``FakeVendor``s.
"""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import secrets
import shutil
import ssl
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from octopus_crm_sandbox.kit import Fault, SlidingWindow

__all__ = ["SmtpFake"]

Mode = Literal["starttls", "implicit", "plain"]


class _Session(Session):
    """aiosmtpd's session without the deprecation warning logged on every AUTH."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _Server(SMTP):
    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ssl_protocol = getattr(transport, "_ssl_protocol", None)
        if self._tls_protocol is None and ssl_protocol is not None and self.session is not None:
            # Implicit TLS (port 465) is encrypted from the first byte, but aiosmtpd only tracks
            # STARTTLS: mark the session protected so that AUTH is offered and STARTTLS is not.
            self._tls_protocol = ssl_protocol
            self.session.ssl = {"sslcontext": transport.get_extra_info("sslcontext")}


class SmtpFake:
    name = "email"
    ENV: ClassVar[dict[str, str]] = {
        "SMTP_USER": "octopus@company.com",
        "SMTP_PASSWORD": "sandbox-smtp-password",
    }

    def __init__(
        self,
        *,
        mode: Mode = "starttls",
        username: str | None = None,
        password: str | None = None,
        auth_required: bool = True,
        host: str = "127.0.0.1",
        rate_limit: tuple[int, float] | None = None,
        latency: float = 0.0,
        token_ttl: float | None = None,  # accepted like every fake's; SMTP AUTH has no tokens
    ) -> None:
        self.window = SlidingWindow(*rate_limit) if rate_limit else None
        self.latency = latency
        self.records: dict[str, dict[str, Any]] = {}
        self.faults: collections.deque[Fault] = collections.deque()
        self.base_url = ""
        self.mode = mode
        self.username = username or self.ENV["SMTP_USER"]
        self.password = password or self.ENV["SMTP_PASSWORD"]
        self.auth_required = auth_required
        self.host = host
        self.port = 0
        self.ca_file = ""
        self.messages: list[dict[str, Any]] = []
        self.auth_attempts = 0
        self.auth_failures = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []
        self._tmp: Path | None = None
        self._tls: ssl.SSLContext | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port); ``base_url`` becomes ``smtp://host:port``."""
        if self.mode != "plain":
            self._tls = self._make_certificate()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.host, port, ssl=self._tls if self.mode == "implicit" else None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"smtp://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for protocol in self._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
            await self._server.wait_closed()
            self._server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def __aenter__(self) -> SmtpFake:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def endpoints(self) -> dict[str, Any]:
        """The ``config.endpoints`` that point an email integration at this fake."""
        ep: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "starttls": self.mode == "starttls",
            "tls": self.mode == "implicit",
            "localHostname": "octopus-crm-sync.test",
        }
        if self.mode == "plain":
            ep["allowInsecureAuth"] = True
        else:
            ep["caFile"] = self.ca_file
        return ep

    def inject(self, *faults: Fault) -> None:
        """Queue replies: ``Fault(451, "4.3.0 try later", path_contains="RCPT")``."""
        self.faults.extend(faults)

    def _make_certificate(self) -> ssl.SSLContext:
        import trustme  # test/demo dependency only

        ca = trustme.CA(organization_name="octopus-crm-sync sandbox")
        cert = ca.issue_cert(self.host, "localhost")
        self._tmp = Path(tempfile.mkdtemp(prefix="octopus-smtp-"))
        self.ca_file = str(self._tmp / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    def _protocol(self) -> SMTP:
        self.connections += 1
        server = _Server(
            self,
            hostname="sandbox.smtp.test",
            ident="octopus sandbox ESMTP",
            tls_context=self._tls if self.mode == "starttls" else None,
            require_starttls=self.mode == "starttls",
            # "plain" offers AUTH in clear (the allowInsecureAuth path) and does not require it.
            auth_required=self.auth_required and self.mode != "plain",
            auth_require_tls=self.mode != "plain",
            authenticator=self._authenticate,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        self._protocols = [p for p in self._protocols if p.transport is not None]
        self._protocols.append(server)
        return server

    # -- SMTP hooks (aiosmtpd calls handle_<COMMAND>) ------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.auth_attempts += 1
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode("utf-8", "replace") == self.username
            and data.password.decode("utf-8", "replace") == self.password
        )
        if not ok:
            self.auth_failures += 1
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=data.login.decode())

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.window is not None and (wait := self.window.hit()) is not None:
            return f"421 4.7.0 Too many messages, slow down (retry in {wait:.1f}s)"
        if (reply := await self._fault("MAIL")) is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (reply := await self._fault("RCPT")) is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._take_fault("DATA")
        if fault is None or fault.after_effect:
            message_id = self._store(server, session, envelope)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            return _reply(fault)
        return f"250 2.0.0 OK queued as {message_id}"

    # -- helpers -----------------------------------------------------------------------------

    def _take_fault(self, command: str) -> Fault | None:
        for fault in list(self.faults):
            if fault.path_contains.upper() in ("", command):
                self.faults.remove(fault)
                return fault
        return None

    async def _fault(self, command: str) -> str | None:
        fault = self._take_fault(command)
        if fault is None:
            return None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        return _reply(fault)

    def _store(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        message_id = str(msg.get("Message-ID", "")).strip() or f"<none-{secrets.token_hex(8)}>"
        record = {
            "messageId": message_id,
            "from": str(msg.get("From", "")),
            "to": str(msg.get("To", "")),
            "cc": str(msg.get("Cc", "")),
            "replyTo": str(msg.get("Reply-To", "")),
            "subject": str(msg.get("Subject", "")),
            "body": _part(msg, "plain"),
            "html": _part(msg, "html"),
            "headers": {k: str(v) for k, v in msg.items()},
            "envelope": {"mailFrom": envelope.mail_from, "rcptTos": list(envelope.rcpt_tos)},
            "authenticatedAs": session.auth_data,
            "tls": server.transport is not None and server.transport.get_extra_info("sslcontext") is not None,
            "raw": raw,
            "copies": 1,
        }
        self.messages.append(record)
        if message_id in self.records:
            self.records[message_id]["copies"] += 1
        else:
            self.records[message_id] = record
        return message_id


def _reply(fault: Fault) -> str:
    text = str(fault.body or "Requested action not taken")
    return f"{fault.status} {text}"


def _part(msg: EmailMessage, subtype: str) -> str | None:
    part = msg.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    content = part.get_content()
    # MIME text travels with CRLF line breaks; show it the way a mail client does.
    return str(content).replace("\r\n", "\n")
