"""The SMTP adapter against real SMTP servers: aiosmtpd in this process, on 127.0.0.1.

Each test registers an account (the provider is put into the registry for the test
only) and calls the adapter directly, as delivery would.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.message
import email.policy
import ipaddress
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import mailrelay.providers
from mailrelay.auth.credentials import forget
from mailrelay.config import get_settings
from mailrelay.devstack import free_port
from mailrelay.errors import ProviderError
from mailrelay.message import make_message_id, validate
from mailrelay.providers.base import Outbound, SendResult
from mailrelay.providers.smtp import SmtpAdapter

pytestmark = pytest.mark.integration

SENDER = "sender@example.com"
USER, PASSWORD = "relay-user", "relay-password"


# -- the server ------------------------------------------------------------------------
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    peer: Any
    tls: bool
    login: bytes | None


class Mailbox:
    """aiosmtpd handler: records what it accepts and refuses what a test tells it to."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refuse_rcpt: dict[str, str] = {}
        self.data_reply: str | None = None
        self.data_delay = 0.0
        self.drop_after_data = False
        self.servers: list[SMTPServer] = []

    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        refusal = self.refuse_rcpt.get(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.servers.append(server)
        if self.data_reply is not None:
            return self.data_reply
        auth = session.auth_data
        self.received.append(Received(
            mail_from=str(envelope.mail_from), rcpt_tos=list(envelope.rcpt_tos),
            content=bytes(envelope.original_content or b""), peer=session.peer,
            tls=_tls(server, session), login=auth.login if isinstance(auth, LoginPassword) else None))
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.drop_after_data and isinstance(server.transport, asyncio.Transport):
            # Taken, and the answer lost: the case only sent_unknown can describe. abort(), not
            # close(): close() would still write the 250 that aiosmtpd pushes next.
            server.transport.abort()
        return "250 2.0.0 Ok: queued as 4F3A12"


def _tls(server: SMTPServer, session: Session) -> bool:
    # session.ssl is set by STARTTLS; implicit TLS shows only on the transport.
    transport = server.transport
    return session.ssl is not None or (transport is not None
                                       and transport.get_extra_info("ssl_object") is not None)


def authenticator(server: SMTPServer, session: Session, envelope: Envelope, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(), PASSWORD.encode())
    # handled=False: aiosmtpd answers a failure with 535 itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@dataclass
class Server:
    mailbox: Mailbox
    controller: Controller
    port: int

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def drop_connections(self) -> None:
        """Close every session the server has, as an idle timeout would."""
        async def close() -> None:
            for server in self.mailbox.servers:
                if server.transport is not None:
                    server.transport.close()

        asyncio.run_coroutine_threadsafe(close(), self.controller.loop).result(5)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("smtp-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailrelay test SMTP server")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    started: list[Controller] = []

    def start(**smtp_options: Any) -> Server:
        mailbox = Mailbox()
        port = free_port()
        # server_hostname: without it aiosmtpd asks socket.getfqdn(), which can be slow.
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, server_hostname="localhost",
                                **smtp_options)
        controller.start()
        started.append(controller)
        return Server(mailbox, controller, port)

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def plain(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture
def starttls(start_server: Callable[..., Server], certificate: tuple[Path, Path]) -> Server:
    return start_server(tls_context=_server_tls(certificate), require_starttls=True,
                        auth_required=True, authenticator=authenticator)


@pytest.fixture
def trust(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """Trust the test certificate, as the emulator's tests trust its CA."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    return certificate[0]


# -- the client side -------------------------------------------------------------------
@pytest.fixture
def register(clean_db: None, secret_key: str,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Add an SMTP account; the provider is in the registry for this test only."""
    from mailrelay.auth import accounts

    monkeypatch.setitem(mailrelay.providers.REGISTRY, "smtp", "mailrelay.providers.smtp:SmtpAdapter")
    forget()

    def add(tenant: str, *, user: str | None = None, password: str | None = None,
            address: str = SENDER) -> str:
        accounts.add("smtp", address, client_id=user, client_secret=password, tenant=tenant)
        forget()
        return address

    yield add
    forget()


@pytest.fixture
def adapter() -> Iterator[SmtpAdapter]:
    adapter = SmtpAdapter()
    yield adapter
    adapter.close()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def outbound(**fields: Any) -> Outbound:
    payload = {"from": SENDER, "to": ["Ada Lovelace <ada@example.org>"], "subject": "Hello",
               "text": "hi", **fields}
    return Outbound(message=validate(payload), message_id="m1", date=dt.datetime.now(dt.UTC),
                    attempt_number=1,
                    rfc822_message_id=make_message_id(os.urandom(16).hex(), "example.com"))


def send_failing(adapter: SmtpAdapter, out: Outbound | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as err:
        adapter.send(out or outbound())
    assert err.value.provider == "smtp"
    return err.value


def _part(parsed: email.message.EmailMessage, content_type: str) -> email.message.EmailMessage:
    found = [part for part in parsed.walk() if part.get_content_type() == content_type]
    assert len(found) == 1, content_type
    return found[0]


# -- delivery --------------------------------------------------------------------------
def test_delivers_the_mime_message_with_bcc_only_in_the_envelope(
        plain: Server, register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(plain.url("smtp+insecure"))
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(200)
    report = os.urandom(5000) + b"\r\n.\r\n"  # a lone dot line must survive dot-stuffing
    out = outbound(
        to=["Ada Lovelace <ada@example.org>"], cc=["bob@example.org"], bcc=["carol@example.net"],
        subject="Quarterly report – Q3 ✓", text="See attached.\n.\nThe end.",
        html="<p>See attached.</p><img src='cid:logo'>",
        inline=[{"filename": "logo.png", "content_type": "image/png",
                 "content": base64.b64encode(png).decode(), "cid": "logo"}],
        attachments=[{"filename": "q3.bin", "content_type": "application/octet-stream",
                      "content": base64.b64encode(report).decode()}])

    result = adapter.send(out)

    assert result == SendResult(provider_message_id="2.0.0 Ok: queued as 4F3A12")
    [got] = plain.mailbox.received
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["ada@example.org", "bob@example.org", "carol@example.net"]
    assert b"carol" not in got.content
    parsed = email.message_from_bytes(got.content, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert parsed["Subject"] == "Quarterly report – Q3 ✓"
    assert parsed["Message-ID"] == out.rfc822_message_id
    assert parsed["To"] == "Ada Lovelace <ada@example.org>" and parsed["Cc"] == "bob@example.org"
    assert parsed["Bcc"] is None
    assert _part(parsed, "text/plain").get_content().replace("\r\n", "\n") == "See attached.\n.\nThe end.\n"
    assert "cid:logo" in _part(parsed, "text/html").get_content()
    assert _part(parsed, "image/png").get_content() == png
    assert _part(parsed, "image/png")["Content-ID"] == "<logo>"
    attachment = _part(parsed, "application/octet-stream")
    assert attachment.get_filename() == "q3.bin" and attachment.get_content() == report


def test_one_connection_carries_several_sends_and_a_dead_one_is_replaced(
        plain: Server, register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(plain.url("smtp+insecure"))
    adapter.send(outbound())
    adapter.send(outbound())
    first, second = plain.mailbox.received
    assert first.peer == second.peer  # the same client port: one session

    plain.drop_connections()
    adapter.send(outbound())
    assert plain.mailbox.received[2].peer != first.peer


def test_auth_over_starttls(starttls: Server, trust: Path, register: Callable[..., str],
                            adapter: SmtpAdapter) -> None:
    register(starttls.url("smtp"), user=USER, password=PASSWORD)
    adapter.send(outbound())
    [got] = starttls.mailbox.received
    assert got.tls and got.login == USER.encode()


def test_a_wrong_password_is_invalid_credentials(starttls: Server, trust: Path,
                                                 register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(starttls.url("smtp"), user=USER, password="not-the-password")
    err = send_failing(adapter)
    assert (err.code, err.retryable, err.sent_unknown) == ("invalid_credentials", False, False)
    assert "535" in err.detail and "not-the-password" not in str(err)
    assert starttls.mailbox.received == []


def test_an_untrusted_certificate_fails_before_anything_is_sent(
        starttls: Server, register: Callable[..., str], adapter: SmtpAdapter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    register(starttls.url("smtp"), user=USER, password=PASSWORD)
    err = send_failing(adapter)
    assert (err.code, err.sent_unknown) == ("network_error", False)
    assert "not trusted" in err.detail
    assert starttls.mailbox.received == []


def test_implicit_tls(start_server: Callable[..., Server], certificate: tuple[Path, Path], trust: Path,
                      register: Callable[..., str], adapter: SmtpAdapter) -> None:
    server = start_server(ssl_context=_server_tls(certificate))
    register(server.url("smtps"))
    adapter.send(outbound())
    [got] = server.mailbox.received
    assert got.tls


def test_a_server_without_starttls_is_refused_for_smtp_urls(
        plain: Server, register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(plain.url("smtp"))
    err = send_failing(adapter)
    assert (err.code, err.retryable) == ("invalid_credentials", False)
    assert "does not offer STARTTLS" in err.detail
    assert plain.mailbox.received == []


# -- refusals --------------------------------------------------------------------------
def test_a_refused_recipient_stops_the_message_for_everyone(
        plain: Server, register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(plain.url("smtp+insecure"))
    plain.mailbox.refuse_rcpt["bob@example.org"] = "550 5.1.1 <bob@example.org>: User unknown"
    err = send_failing(adapter, outbound(to=["ada@example.org"], cc=["bob@example.org"],
                                         bcc=["carol@example.net"]))
    assert (err.code, err.retryable, err.sent_unknown) == ("invalid_recipient", False, False)
    assert "cc[0]" in err.detail and "bob@" not in str(err)
    assert plain.mailbox.received == []  # ada and carol got nothing either

    # The transaction was reset, so the same session goes on with the next message.
    adapter.send(outbound())
    assert [got.rcpt_tos for got in plain.mailbox.received] == [["ada@example.org"]]


@pytest.mark.parametrize("where", ["rcpt", "data"])
def test_a_451_is_retryable_and_sends_nothing(
        where: str, plain: Server, register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(plain.url("smtp+insecure"))
    if where == "rcpt":
        plain.mailbox.refuse_rcpt["ada@example.org"] = "451 4.7.1 Greylisted, try again later"
    else:
        plain.mailbox.data_reply = "451 4.3.0 Error: queue file write error"
    err = send_failing(adapter)
    assert (err.code, err.retryable, err.sent_unknown) == ("provider_unavailable", True, False)
    assert "451" in err.detail
    assert plain.mailbox.received == []


def test_the_servers_size_limit_is_checked_before_mail(
        start_server: Callable[..., Server], register: Callable[..., str], adapter: SmtpAdapter) -> None:
    server = start_server(data_size_limit=2000)
    register(server.url("smtp+insecure"))
    err = send_failing(adapter, outbound(text="x" * 5000))
    assert (err.code, err.retryable, err.sent_unknown) == ("message_too_large", False, False)
    assert server.mailbox.received == []


# -- lost answers and unreachable servers ----------------------------------------------
def test_a_connection_dropped_after_data_may_have_delivered(
        plain: Server, register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(plain.url("smtp+insecure"))
    plain.mailbox.drop_after_data = True
    err = send_failing(adapter)
    assert (err.code, err.retryable, err.sent_unknown) == ("provider_timeout", True, True)
    assert len(plain.mailbox.received) == 1  # it was in fact taken: why the flag matters

    plain.mailbox.drop_after_data = False
    adapter.send(outbound())  # a new connection
    assert len(plain.mailbox.received) == 2


def test_no_verdict_in_time_may_have_delivered(
        plain: Server, register: Callable[..., str], adapter: SmtpAdapter,
        settings_env: pytest.MonkeyPatch) -> None:
    # The whole send, the wait for the verdict included, is bounded by the provider timeout.
    settings_env.setenv("MAILRELAY_PROVIDER_TIMEOUT", "1")
    get_settings.cache_clear()
    register(plain.url("smtp+insecure"))
    plain.mailbox.data_delay = 3
    err = send_failing(adapter)
    assert (err.code, err.sent_unknown) == ("provider_timeout", True)
    assert "no answer in time" in err.detail


def test_a_closed_port_is_a_network_error_that_sent_nothing(
        register: Callable[..., str], adapter: SmtpAdapter) -> None:
    register(f"smtp+insecure://127.0.0.1:{free_port()}")
    err = send_failing(adapter)
    assert (err.code, err.retryable, err.sent_unknown) == ("network_error", True, False)
    assert "connection refused" in err.detail


def test_an_unknown_account_fails_at_once(register: Callable[..., str], adapter: SmtpAdapter) -> None:
    err = send_failing(adapter)
    assert (err.code, err.retryable) == ("unknown_account", False)
