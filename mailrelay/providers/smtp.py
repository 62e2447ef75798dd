"""SMTP provider: any submission server (a mailbox host, a company relay, a local MTA).

Endpoint   the account's `tenant`, one of
             smtps://host[:465]          implicit TLS
             smtp://host[:587]           STARTTLS, required (also without AUTH)
             smtp+insecure://host[:25]   plain text, no AUTH: tests and local relays only
           A bare `host:port` means smtp://; an IPv6 host is written [::1].
Auth       the account's client_id / client_secret are the SMTP username / password
           (both empty: no AUTH); AUTH PLAIN or LOGIN, as smtplib's login() picks. No
           OAuth, so the account is read here (auth.credentials.cached), not by delivery.
TLS        ssl.create_default_context() (system CAs, SSL_CERT_FILE) plus the file named by
           REQUESTS_CA_BUNDLE, added to that trust store rather than replacing it.
Sequence   EHLO [STARTTLS EHLO] [AUTH] MAIL FROM:<account> [SIZE=n], RCPT TO:<each of
           to+cc+bcc>; only when every recipient was accepted, DATA. A refusal before
           DATA is answered with RSET and nothing is sent to anyone (sendmail() would
           have sent to the accepted ones). Bcc is never in the headers.
Limits     100 recipients; 25 MiB, and the server's own SIZE, checked before MAIL.
           No verify: SMTP cannot say whether a Message-ID was sent, so an attempt whose
           outcome is unknown is resent (and recorded as such).
Errors     530/534/535 → invalid_credentials; RCPT 550/551/553 → invalid_recipient;
           552/554 naming the size → message_too_large; other 5xx → provider_rejected;
           4xx (421, 450, 451, 452, ...) → provider_unavailable. Before DATA: refused
           connection, DNS, TLS, timeouts and disconnects → network_error (nothing sent);
           after the message's first byte left: provider_timeout, sent_unknown. Account
           settings that cannot work (bad server spec, no STARTTLS offered, a password
           for smtp+insecure://, no AUTH offered) → invalid_credentials, never retried.
Settings   MAILRELAY_PROVIDER_TIMEOUT bounds the whole send, from the NOOP on a reused
           connection (or the connect) to the reply to the end of DATA: delivery starts a
           send only with that much lease left (plus a margin), and a send that outlived
           the lease could run beside another worker's. What is left of it is the wait
           for each reply; the last one is the only proof of delivery (RFC 5321 suggests
           waiting 10 minutes for it), so servers that scan slowly want a longer timeout.
Connection one per process, reused between sends: a new one costs TCP, the greeting,
           EHLO, STARTTLS, a TLS handshake, EHLO again and AUTH (5-7 round trips plus
           the servers' rate limits on logins); reuse costs one NOOP. Reused only for
           the same server and login, within IDLE_REUSE_SECONDS, for at most
           SENDS_PER_CONNECTION messages, and only after a send that left the session
           clean; any failure closes it. Per process (the registry keeps one adapter per
           pid), so a connection never crosses a fork; a lock guards the idle slot.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import os
import re
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mailrelay.auth import credentials
from mailrelay.auth.credentials import Credentials
from mailrelay.config import get_settings
from mailrelay.errors import ProviderError, scrub_addresses
from mailrelay.message import Message, build_mime
from mailrelay.providers.base import (
    Capabilities,
    Outbound,
    ProviderAdapter,
    SendResult,
    TokenSource,
    before_request,
)

NAME = "smtp"

# Security of the connection, by scheme, and each one's usual port.
SCHEMES = {"smtps": "tls", "smtp": "starttls", "smtp+insecure": "insecure"}
DEFAULT_PORTS = {"tls": 465, "starttls": 587, "insecure": 25}

# Reuse an idle connection only this soon: RFC 5321 servers may drop an idle client
# after 5 minutes, and NAT or firewalls drop silently sooner, which only a timeout shows.
IDLE_REUSE_SECONDS = 30.0
NOOP_TIMEOUT_SECONDS = 2.0
QUIT_TIMEOUT_SECONDS = 2.0
# Several large providers cap messages per connection; renewing it well before costs little.
SENDS_PER_CONNECTION = 100

AUTH_CODES = frozenset({530, 534, 535})
RECIPIENT_CODES = frozenset({550, 551, 553})
SIZE_CODES = frozenset({552, 554})
# A 552/554 reply is about the message's size when its text says so (5.3.4 "message too
# big for system", 5.2.3 "message length exceeds administrative limit").
SIZE_HINTS = ("size", "too large", "too big", "too much", "length", "5.3.4", "5.2.3")

# The conversation's steps, in order; a failure is classified by the step it happened in.
# From "payload" on, the message may have reached the server.
STEPS = ("connect", "starttls", "auth", "mail", "rcpt", "data", "payload", "reply")
AFTER_SEND = frozenset({"payload", "reply"})
REFUSED = {
    "connect": "the server refused the connection",
    "starttls": "STARTTLS refused",
    "auth": "AUTH refused",
    "mail": "MAIL FROM refused",
    "rcpt": "RCPT TO refused",
    "data": "DATA refused",
    "payload": "the server refused the message",
    "reply": "the server refused the message",
}

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_.])?")
_PATH_TEXT = re.compile(r"[ -~]+")  # printable ASCII: no CR, LF or anything smtplib cannot send


# -- server spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class ServerSpec:
    security: str  # "tls", "starttls" or "insecure"
    host: str
    port: int

    def __str__(self) -> str:
        scheme = next(name for name, security in SCHEMES.items() if security == self.security)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_server(spec: str | None) -> ServerSpec:
    """The account's ``tenant`` as a server. Raises ValueError saying what is wrong.

    The message never repeats the spec: someone may have put a password in it.
    """
    text = (spec or "").strip()
    if not text:
        raise ValueError("the account has no SMTP server: set its tenant to smtps://host:465, "
                         "smtp://host:587 or smtp+insecure://host:25")
    if "://" not in text:
        text = "smtp://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("the SMTP server is not host:port with a port from 1 to 65535") from None
    security = SCHEMES.get(parts.scheme)
    if security is None:
        raise ValueError(f"unknown scheme {parts.scheme[:20]!r} for an SMTP server: "
                         "use smtps://, smtp:// or smtp+insecure://")
    if "@" in parts.netloc:
        raise ValueError("the SMTP server must not carry a username or password (it is stored "
                         "in clear): give them as the account's client id and secret")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the SMTP server is a scheme, a host and a port, nothing more")
    host = parts.hostname or ""
    if not _valid_host(host):
        raise ValueError("the SMTP server's host is not a valid host name or IP address "
                         "(international names in their xn-- form)")
    if port == 0:
        raise ValueError("the SMTP server is not host:port with a port from 1 to 65535")
    return ServerSpec(security, host, port or DEFAULT_PORTS[security])


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOSTNAME.fullmatch(host)) and ".." not in host


# -- error tables ----------------------------------------------------------------------
def code_for_reply(step: str, code: int, text: str) -> str:
    """The mailrelay error code for an SMTP reply ``code`` that refused ``step``."""
    if code in AUTH_CODES:
        return "invalid_credentials"
    if 500 <= code < 600:
        # RFC 3463 5.7.x is a policy refusal (relay denied, sender not allowed), not a bad
        # address: the account may not send this, whoever the recipient.
        if text.lstrip().startswith("5.7."):
            return "permission_denied"
        if step == "rcpt" and code in RECIPIENT_CODES:
            return "invalid_recipient"
        lowered = text.lower()
        if code in SIZE_CODES and any(hint in lowered for hint in SIZE_HINTS):
            return "message_too_large"
        return "provider_rejected"
    # 4xx, and a reply that is no SMTP code at all: worth another try.
    return "provider_unavailable"


def reply_error(step: str, code: int, text: bytes | str, *, recipient: str | None = None) -> ProviderError:
    """A refusal by the server as a ProviderError; ``recipient`` names which one (``cc[1]``)."""
    said = server_text(text)
    which = f" for {recipient}" if recipient else ""
    # The reply to the end of DATA is the verdict: a 4xx or 5xx says it was not taken, but
    # anything else (a garbled reply) leaves the outcome open.
    unknown = step in AFTER_SEND and not 400 <= code < 600
    return ProviderError(code_for_reply(step, code, said), f"{REFUSED[step]}{which}: {code} {said}",
                         provider=NAME, sent_unknown=unknown)


def transport_error(err: BaseException, step: str, server: ServerSpec | str) -> ProviderError:
    """A failure of the connection itself during ``step``."""
    cause = _cause(err)
    if step in AFTER_SEND:
        return ProviderError("provider_timeout", f"{cause} during DATA ({server}); the server may "
                             "have accepted the message", provider=NAME, sent_unknown=True)
    return ProviderError("network_error", f"{cause} during {step} ({server}); nothing was sent",
                         provider=NAME)


def failure(err: Exception, step: str, server: ServerSpec | str) -> ProviderError | None:
    """What smtplib, ssl or the socket raised, as a ProviderError; None for anything else
    (a bug, which the base class records as internal_error with an unknown outcome)."""
    if isinstance(err, smtplib.SMTPRecipientsRefused):  # sendmail's way; kept for completeness
        refused = list(err.recipients.values())
        if refused:
            code, text = refused[0]
            return reply_error("rcpt", code, text)
    if isinstance(err, smtplib.SMTPResponseException) and step not in AFTER_SEND:
        return reply_error(step, err.smtp_code, err.smtp_error)
    if step == "auth" and isinstance(err, smtplib.SMTPNotSupportedError):
        return _settings_error(f"{server} offers no AUTH; leave the account's username and "
                               "password empty, or check the port")
    if step == "auth" and type(err) is smtplib.SMTPException:
        return _settings_error(f"{server} offers no AUTH method that smtplib speaks (PLAIN, LOGIN)")
    if step == "auth" and isinstance(err, UnicodeEncodeError):
        return _settings_error("AUTH PLAIN and LOGIN take an ASCII username and password")
    if isinstance(err, OSError):  # smtplib.SMTPException, ssl.SSLError and socket errors
        return transport_error(err, step, server)
    return None


def _cause(err: BaseException) -> str:
    if isinstance(err, smtplib.SMTPResponseException):  # smtplib could not read the reply
        return f"an unreadable reply ({err.smtp_code})"
    if isinstance(err, smtplib.SMTPServerDisconnected):
        if isinstance(err.__context__, TimeoutError):
            return "no answer in time"
        return "the server closed the connection"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({err.verify_message})"
    if isinstance(err, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(err, socket.gaierror):
        return "host name not found"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError):
        return "no answer in time"
    if isinstance(err, OSError) and err.strerror:
        return f"connection failed ({err.strerror})"
    return f"connection failed ({type(err).__name__})"


def _settings_error(detail: str) -> ProviderError:
    """The account's SMTP settings cannot work; retrying would not help."""
    return ProviderError("invalid_credentials", detail, provider=NAME)


def server_text(text: bytes | str, limit: int = 200) -> str:
    """A server's reply text on one line, addresses blanked (error details carry none)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return scrub_addresses(" ".join(text.split()))[:limit]


# -- the message as SMTP sends it --------------------------------------------------------
def data_block(raw: bytes) -> bytes:
    """``raw`` as DATA's payload: CRLF line ends, leading dots doubled, the final "."."""
    text = _LINE_END.sub(b"\r\n", raw)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return _LEADING_DOT.sub(b"..", text) + b".\r\n"


def envelope(message: Message) -> tuple[tuple[str, str], ...]:
    """Every recipient once, to + cc + bcc, with where it came from (``to[0]``, ``bcc[2]``),
    which error details name instead of the address."""
    labels: dict[str, str] = {}
    for field, mailboxes in (("to", message.to), ("cc", message.cc), ("bcc", message.bcc)):
        for index, mailbox in enumerate(mailboxes):
            labels.setdefault(mailbox.address, f"{field}[{index}]")
    return tuple((mailbox.address, labels.get(mailbox.address, "a recipient"))
                 for mailbox in message.recipients)


@dataclass(frozen=True)
class Prepared:
    block: bytes  # the DATA payload
    size: int  # the message's size for SIZE=
    envelope: tuple[tuple[str, str], ...]  # (address, label) for each RCPT


# -- connections -----------------------------------------------------------------------
@dataclass
class _Connection:
    smtp: smtplib.SMTP
    key: str
    pid: int
    sends: int = 0
    idle_since: float = 0.0


class _Talk:
    """One send's conversation: the step it is at and how long it may still take."""

    def __init__(self, server: ServerSpec, budget: float) -> None:
        self.server = server
        self.step = STEPS[0]
        self.budget = budget
        self.deadline = time.monotonic() + budget
        # The server is between transactions, so the connection can carry the next send.
        self.clean = False

    def wait(self, limit: float | None = None) -> float:
        """Seconds the next operation may take (at most ``limit``): what is left of the
        budget. Raises TimeoutError once it is spent."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the send's budget of {self.budget:g} s is spent")
        return left if limit is None else min(limit, left)

    def arm(self, smtp: smtplib.SMTP) -> None:
        """Give the next socket operation (a command, the whole message, a reply) the rest."""
        if smtp.sock is not None:
            smtp.sock.settimeout(self.wait())


def tls_context() -> ssl.SSLContext:
    """The system's trust (and SSL_CERT_FILE), plus REQUESTS_CA_BUNDLE, which mailrelay's
    HTTPS providers follow through requests, so that one setting trusts a test CA for all."""
    context = ssl.create_default_context()
    bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    if bundle:
        try:
            context.load_verify_locations(cafile=bundle)
        except (OSError, ssl.SSLError) as err:
            raise ProviderError("network_error", "cannot load the CA bundle named by "
                                "REQUESTS_CA_BUNDLE", provider=NAME) from err
    return context


@functools.cache
def _ehlo_name() -> str | None:
    """This host's name for EHLO, looked up once per process (getfqdn may be slow); None
    lets smtplib use an address literal, as RFC 5321 asks when there is no FQDN."""
    name = socket.getfqdn()
    return name if "." in name else None


def _close(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        with contextlib.suppress(OSError):
            smtp.close()


def _quit(smtp: smtplib.SMTP) -> None:
    """End a healthy session politely, without waiting long for the goodbye."""
    try:
        if smtp.sock is not None:
            smtp.sock.settimeout(QUIT_TIMEOUT_SECONDS)
        smtp.quit()
    except OSError:
        _close(smtp)


def _answers_noop(smtp: smtplib.SMTP, talk: _Talk) -> bool:
    try:
        if smtp.sock is None:
            return False
        smtp.sock.settimeout(talk.wait(NOOP_TIMEOUT_SECONDS))
        return smtp.noop()[0] == 250
    except OSError:  # smtplib's exceptions are OSErrors too
        return False


def _connection_key(server: ServerSpec, login: tuple[str, str] | None) -> str:
    """Which sessions can carry a send: same server, same login (a digest, not the secret)."""
    material = "\0".join([str(server), *(login or ("", ""))])
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


# -- the adapter -----------------------------------------------------------------------
class SmtpAdapter(ProviderAdapter):
    name = NAME
    uses_oauth = False
    # The SMTP password, stored like an OAuth client secret (the username is --client-id).
    account_secrets = ("client_secret",)
    capabilities = Capabilities(
        max_recipients=100,
        max_message_bytes=25 * 1024 * 1024,
        inline_images=True,
        large_message_path=None,
        sends_per_minute=None,
        can_verify=False,
    )

    def check_account(self, *, client_id: str | None, tenant: str | None, app_only: bool) -> None:
        from mailrelay.errors import ValidationError

        try:
            parse_server(tenant)
        except ValueError as err:
            raise ValidationError("invalid_message", f"--tenant must be the server, e.g. "
                                  f"smtp://mail.example.com:587 ({err})") from None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: _Connection | None = None

    def prepare(self, out: Outbound) -> Prepared:
        raw = _LINE_END.sub(b"\r\n", build_mime(out.message, message_id=out.rfc822_message_id,
                                                date=out.date, include_bcc=False))
        return Prepared(block=data_block(raw), size=len(raw), envelope=envelope(out.message))

    def transmit(self, out: Outbound, prepared: Prepared, tokens: TokenSource | None) -> str:
        """Send over SMTP; returns the server's reply to the end of DATA (its queue id)."""
        account = _account(out.account_address)
        try:
            server = parse_server(account.tenant)
        except ValueError as err:
            raise _settings_error(str(err)) from None
        login = login_for(account, server)
        talk = _Talk(server, get_settings().provider_timeout)
        key = _connection_key(server, login)
        conn = self._take(key, talk)
        try:
            if conn is None:
                conn = _Connection(self._connect(server, login, talk), key, os.getpid())
            reply = self._converse(conn.smtp, account.address, prepared, talk)
        except ProviderError:
            self._give_back(conn, reusable=talk.clean)
            raise
        except Exception as err:
            self._give_back(conn, reusable=False)
            mapped = failure(err, talk.step, server)
            if mapped is None:
                raise
            raise mapped from err
        except BaseException:
            self._give_back(conn, reusable=False)
            raise
        self._give_back(conn, reusable=True)
        return reply

    def parse(self, out: Outbound, response: Any) -> SendResult:
        # The reply usually carries the server's queue id ("2.0.0 Ok: queued as 4F3A12"),
        # which is what the server's logs are searched by.
        return SendResult(provider_message_id=server_text(str(response)) or None)

    # -- the conversation ----------------------------------------------------------------
    def _connect(self, server: ServerSpec, login: tuple[str, str] | None, talk: _Talk) -> smtplib.SMTP:
        talk.step = "connect"
        context = tls_context() if server.security != "insecure" else None
        smtp: smtplib.SMTP
        if server.security == "tls":
            smtp = smtplib.SMTP_SSL(server.host, server.port, local_hostname=_ehlo_name(),
                                    timeout=talk.wait(), context=context)
        else:
            smtp = smtplib.SMTP(server.host, server.port, local_hostname=_ehlo_name(),
                                timeout=talk.wait())
        try:
            talk.arm(smtp)
            smtp.ehlo_or_helo_if_needed()
            if server.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise _settings_error(f"{server} does not offer STARTTLS; refusing to go on in "
                                          "plain text (smtps:// is implicit TLS; smtp+insecure:// "
                                          "a local relay without AUTH)")
                talk.step = "starttls"
                talk.arm(smtp)
                smtp.starttls(context=context)
                talk.arm(smtp)
                code, text = smtp.ehlo()
                if code != 250:
                    raise reply_error("starttls", code, text)
            if login is not None:
                talk.step = "auth"
                talk.arm(smtp)
                smtp.login(*login)
        except BaseException:
            _close(smtp)
            raise
        return smtp

    def _converse(self, smtp: smtplib.SMTP, sender: str, prepared: Prepared, talk: _Talk) -> str:
        talk.step = "mail"
        limit = _advertised_size(smtp)
        if limit and prepared.size > limit:
            talk.clean = True
            raise ProviderError("message_too_large", f"{prepared.size} bytes; {talk.server} takes "
                                f"at most {limit} (its SIZE)", provider=NAME)
        options = f" SIZE={prepared.size}" if smtp.has_extn("size") else ""
        talk.arm(smtp)
        code, text = smtp.docmd("MAIL", f"FROM:<{_path(sender, 'the sender')}>{options}")
        if not 200 <= code < 300:
            raise self._abandon(smtp, talk, reply_error("mail", code, text), code)
        # Every recipient must be accepted before DATA: after DATA a message goes to all the
        # accepted ones at once, and a refused one could only be retried by sending again.
        talk.step = "rcpt"
        for address, label in prepared.envelope:
            talk.arm(smtp)
            code, text = smtp.docmd("RCPT", f"TO:<{_path(address, label)}>")
            if not 200 <= code < 300:
                raise self._abandon(smtp, talk, reply_error("rcpt", code, text, recipient=label), code)
        # The last moment to stop: after DATA the message is on its way.
        before_request(sends=True)
        talk.step = "data"
        talk.arm(smtp)
        code, text = smtp.docmd("DATA")
        if code != 354:
            raise self._abandon(smtp, talk, reply_error("data", code, text), code)
        # From the first byte of the message on, a lost connection may mean it was taken.
        talk.arm(smtp)
        talk.step = "payload"
        smtp.send(prepared.block)
        talk.step = "reply"
        talk.arm(smtp)
        code, text = smtp.getreply()
        if not 200 <= code < 300:
            # A 4xx/5xx here ends the transaction on the server's side: the session stays usable.
            talk.clean = 400 <= code < 600 and code != 421
            raise reply_error("reply", code, text)
        talk.clean = True
        return server_text(text)

    def _abandon(self, smtp: smtplib.SMTP, talk: _Talk, err: ProviderError, code: int) -> ProviderError:
        """Cancel the transaction (RSET) after a refusal before DATA; nothing was sent."""
        if code == 421:  # the server is closing the connection
            return err
        try:
            talk.arm(smtp)
            talk.clean = smtp.rset()[0] == 250
        except OSError:
            talk.clean = False
        return err

    # -- the idle connection -------------------------------------------------------------
    def _take(self, key: str, talk: _Talk) -> _Connection | None:
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is None:
            return None
        if idle.pid != os.getpid():  # inherited through a fork: the parent's session, no QUIT
            return None
        if (idle.key == key and time.monotonic() - idle.idle_since < IDLE_REUSE_SECONDS
                and _answers_noop(idle.smtp, talk)):
            return idle
        _close(idle.smtp)
        return None

    def _give_back(self, conn: _Connection | None, *, reusable: bool) -> None:
        if conn is None:
            return
        conn.sends += 1
        if not reusable or conn.pid != os.getpid():
            _close(conn.smtp)
            return
        if conn.sends >= SENDS_PER_CONNECTION:
            _quit(conn.smtp)
            return
        conn.idle_since = time.monotonic()
        with self._lock:
            older, self._idle = self._idle, conn
        if older is not None:
            _close(older.smtp)

    def close(self) -> None:
        """Close the idle connection (tests; a worker simply exits)."""
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is not None and idle.pid == os.getpid():
            _quit(idle.smtp)


def _account(address: str) -> Credentials:
    """The sending account, refused at once when it cannot send."""
    account = credentials.sendable(address, NAME)
    if account.provider != NAME:
        raise _settings_error(f"the account is registered for {account.provider!r}, so it has no "
                              "SMTP server")
    return account


def login_for(account: Credentials, server: ServerSpec) -> tuple[str, str] | None:
    """(username, password) for AUTH, or None; refuses what would send a password in clear."""
    user, password = account.client_id or "", account.client_secret or ""
    if not user and not password:
        return None
    if not (user and password):
        raise _settings_error("the account has an SMTP username without a password or the "
                              "reverse: set both (client id and secret) or neither")
    if server.security == "insecure":
        raise _settings_error("refusing AUTH in plain text: smtp+insecure:// is for local relays "
                              "without AUTH; use smtps:// or smtp://")
    return user, password


def _advertised_size(smtp: smtplib.SMTP) -> int | None:
    value = smtp.esmtp_features.get("size", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _path(address: str, label: str) -> str:
    """An address as it goes into MAIL FROM / RCPT TO. Intake allows only printable ASCII,
    so anything else means the stored message is corrupt: refuse rather than send."""
    if not _PATH_TEXT.fullmatch(address):
        raise ProviderError("invalid_recipient" if label != "the sender" else "provider_rejected",
                            f"{label}: the address cannot be written in an SMTP command",
                            provider=NAME)
    return address


__all__ = ["ServerSpec", "SmtpAdapter", "code_for_reply", "data_block", "login_for", "parse_server",
           "reply_error", "transport_error"]
