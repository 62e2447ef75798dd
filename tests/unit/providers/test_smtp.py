"""The SMTP provider's pure parts: server specs, the reply-code table, transport failures
and the DATA payload. The conversation itself runs against aiosmtpd in
tests/integration/test_smtp.py."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import smtplib
import socket
import ssl

import pytest

from mailrelay.auth.credentials import Credentials
from mailrelay.errors import ProviderError
from mailrelay.message import make_message_id, validate
from mailrelay.providers.base import Outbound
from mailrelay.providers.smtp import (
    ServerSpec,
    SmtpAdapter,
    code_for_reply,
    data_block,
    failure,
    login_for,
    parse_server,
    reply_error,
    transport_error,
)

SERVER = ServerSpec("starttls", "mail.example.com", 587)


@pytest.mark.parametrize(("spec", "security", "host", "port", "canonical"), [
    ("smtps://mail.example.com:465", "tls", "mail.example.com", 465, "smtps://mail.example.com:465"),
    ("smtps://mail.example.com", "tls", "mail.example.com", 465, "smtps://mail.example.com:465"),
    ("smtp://mail.example.com", "starttls", "mail.example.com", 587, "smtp://mail.example.com:587"),
    ("mail.example.com:2525", "starttls", "mail.example.com", 2525, "smtp://mail.example.com:2525"),
    ("smtp+insecure://127.0.0.1:2525", "insecure", "127.0.0.1", 2525, "smtp+insecure://127.0.0.1:2525"),
    ("smtp+insecure://localhost", "insecure", "localhost", 25, "smtp+insecure://localhost:25"),
    ("  SMTPS://Mail.Example.COM:465/ ", "tls", "mail.example.com", 465, "smtps://mail.example.com:465"),
    ("smtp://[::1]:587", "starttls", "::1", 587, "smtp://[::1]:587"),
    ("smtp://xn--mnchen-3ya.de", "starttls", "xn--mnchen-3ya.de", 587, "smtp://xn--mnchen-3ya.de:587"),
])
def test_server_specs(spec: str, security: str, host: str, port: int, canonical: str) -> None:
    server = parse_server(spec)
    assert (server.security, server.host, server.port) == (security, host, port)
    assert str(server) == canonical


@pytest.mark.parametrize(("spec", "complaint"), [
    (None, "no SMTP server"),
    ("   ", "no SMTP server"),
    ("ftp://mail.example.com:21", "unknown scheme"),
    ("https://mail.example.com", "unknown scheme"),
    ("smtp://mail.example.com:70000", "port from 1 to 65535"),
    ("smtp://mail.example.com:0", "port from 1 to 65535"),
    ("smtp://mail.example.com:abc", "port from 1 to 65535"),
    ("smtp://mail.example.com:25/relay", "nothing more"),
    ("smtp://mail.example.com:25?tls=1", "nothing more"),
    ("smtp://exa mple.com:25", "not a valid host"),
    ("smtp://münchen.de:25", "xn--"),
    ("smtp://a..b:25", "not a valid host"),
    ("smtp://-a.example.com:25", "not a valid host"),
    ("smtp://[zz]:25", "host:port"),
])
def test_bad_server_specs_say_what_is_wrong(spec: str | None, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("?", r"\?")):
        parse_server(spec)


def test_a_password_in_the_server_spec_is_refused_and_not_repeated() -> None:
    with pytest.raises(ValueError, match="must not carry a username or password") as err:
        parse_server("smtps://relay-user:hunter2@mail.example.com:465")
    assert "hunter2" not in str(err.value) and "relay-user" not in str(err.value)


def account(tenant: str | None, user: str | None = None, password: str | None = None) -> Credentials:
    return Credentials(id=1, address="sender@example.com", provider="smtp", state="active",
                       client_id=user, tenant=tenant, app_only=False, client_secret=password,
                       refresh_token=None, rate_limit_per_minute=None)


def test_login_rules() -> None:
    tls = parse_server("smtps://mail.example.com")
    assert login_for(account("x", "relay-user", "pw"), tls) == ("relay-user", "pw")
    assert login_for(account("x"), tls) is None
    assert login_for(account("x"), parse_server("smtp+insecure://localhost")) is None
    with pytest.raises(ProviderError, match="refusing AUTH in plain text") as err:
        login_for(account("x", "relay-user", "pw"), parse_server("smtp+insecure://localhost"))
    assert (err.value.code, err.value.retryable) == ("invalid_credentials", False)
    assert "pw" not in err.value.detail.split()
    with pytest.raises(ProviderError, match="set both") as err:
        login_for(account("x", "relay-user", None), tls)
    assert err.value.code == "invalid_credentials"


@pytest.mark.parametrize(("step", "code", "text", "expected"), [
    ("auth", 535, "5.7.8 Authentication credentials invalid", "invalid_credentials"),
    ("auth", 534, "5.7.9 Please log in with your web browser", "invalid_credentials"),
    ("mail", 530, "5.7.0 Authentication required", "invalid_credentials"),
    ("rcpt", 550, "5.1.1 <bob@example.org>: Recipient address rejected: User unknown", "invalid_recipient"),
    ("rcpt", 551, "5.1.6 User not local", "invalid_recipient"),
    ("rcpt", 553, "5.1.3 Error: malformed address", "invalid_recipient"),
    ("mail", 550, "5.7.1 Sender address rejected", "permission_denied"),
    ("mail", 552, "5.3.4 Error: message size exceeds fixed maximum message size", "message_too_large"),
    ("reply", 552, "Error: Too much mail data", "message_too_large"),
    ("reply", 554, "5.3.4 Message too big for system", "message_too_large"),
    ("reply", 554, "5.7.1 Message rejected as spam", "permission_denied"),
    ("rcpt", 554, "5.7.1 Relay access denied", "permission_denied"),
    ("rcpt", 552, "5.2.2 Mailbox full", "provider_rejected"),
    ("data", 503, "5.5.1 Error: need RCPT command", "provider_rejected"),
    ("connect", 554, "5.7.1 No SMTP service here", "permission_denied"),
    ("connect", 421, "4.3.2 Service not available, closing channel", "provider_unavailable"),
    ("rcpt", 450, "4.2.0 Mailbox unavailable", "provider_unavailable"),
    ("rcpt", 451, "4.7.1 Greylisted, try again later", "provider_unavailable"),
    ("rcpt", 452, "4.5.3 Too many recipients", "provider_unavailable"),
    ("reply", 452, "4.3.1 Insufficient system storage", "provider_unavailable"),
    ("auth", 454, "4.7.0 Temporary authentication failure", "provider_unavailable"),
    ("reply", 451, "4.3.0 Error: queue file write error", "provider_unavailable"),
])
def test_reply_code_table(step: str, code: int, text: str, expected: str) -> None:
    assert code_for_reply(step, code, text) == expected
    err = reply_error(step, code, text.encode())
    assert (err.code, err.provider, err.sent_unknown) == (expected, "smtp", False)
    assert err.retryable == (400 <= code < 500)
    assert str(code) in err.detail


def test_reply_details_name_the_recipient_by_field_and_blank_addresses() -> None:
    err = reply_error("rcpt", 550, b"5.1.1 <bob@example.org>: User unknown in bob@example.org",
                      recipient="cc[0]")
    assert "cc[0]" in err.detail and "550 5.1.1" in err.detail
    assert "bob@" not in str(err) and "example.org" not in str(err)


def test_a_garbled_reply_to_the_end_of_data_leaves_the_outcome_open() -> None:
    err = reply_error("reply", -1, b"what?")
    assert err.sent_unknown and err.retryable


@pytest.mark.parametrize(("err", "step", "code", "sent_unknown", "words"), [
    (ConnectionRefusedError(111, "Connection refused"), "connect", "network_error", False,
     "connection refused"),
    (socket.gaierror(-2, "Name or service not known"), "connect", "network_error", False,
     "host name not found"),
    (TimeoutError("timed out"), "connect", "network_error", False, "no answer in time"),
    (ssl.SSLError(1, "handshake failure"), "starttls", "network_error", False, "TLS handshake failed"),
    (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), "rcpt", "network_error", False,
     "closed the connection"),
    (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), "data", "network_error", False,
     "nothing was sent"),
    (smtplib.SMTPServerDisconnected("Server not connected"), "payload", "provider_timeout", True,
     "may have accepted"),
    (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), "reply", "provider_timeout", True,
     "may have accepted"),
    (TimeoutError("budget spent"), "reply", "provider_timeout", True, "no answer in time"),
    (smtplib.SMTPResponseException(500, "Line too long."), "reply", "provider_timeout", True, "unreadable"),
])
def test_transport_failures_say_whether_the_message_may_have_left(
        err: Exception, step: str, code: str, sent_unknown: bool, words: str) -> None:
    mapped = failure(err, step, SERVER)
    assert mapped is not None
    assert (mapped.code, mapped.sent_unknown, mapped.retryable) == (code, sent_unknown, True)
    assert words in mapped.detail and "mail.example.com:587" in mapped.detail


def test_a_timeout_while_waiting_for_the_verdict_is_recognised() -> None:
    # smtplib turns the socket's timeout into SMTPServerDisconnected, raised while handling it.
    lost = smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out")
    lost.__context__ = TimeoutError("timed out")
    mapped = transport_error(lost, "reply", SERVER)
    assert mapped.code == "provider_timeout" and mapped.sent_unknown
    assert "no answer in time" in mapped.detail


def test_auth_failures_are_account_settings_not_network_trouble() -> None:
    wrong = failure(smtplib.SMTPAuthenticationError(535, b"5.7.8 Error: authentication failed"),
                    "auth", SERVER)
    assert wrong is not None and (wrong.code, wrong.retryable) == ("invalid_credentials", False)
    no_auth = failure(smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server."),
                      "auth", SERVER)
    assert no_auth is not None and no_auth.code == "invalid_credentials"
    assert "offers no AUTH" in no_auth.detail
    no_method = failure(smtplib.SMTPException("No suitable authentication method found."), "auth", SERVER)
    assert no_method is not None and no_method.code == "invalid_credentials"
    non_ascii = failure(UnicodeEncodeError("ascii", "pässword", 1, 2, "ordinal not in range"), "auth", SERVER)
    assert non_ascii is not None and non_ascii.code == "invalid_credentials" and "ASCII" in non_ascii.detail


def test_sendmails_refused_recipients_map_by_the_first_code() -> None:
    refused = smtplib.SMTPRecipientsRefused({"a@example.org": (550, b"5.1.1 unknown"),
                                             "b@example.org": (451, b"4.7.1 later")})
    mapped = failure(refused, "rcpt", SERVER)
    assert mapped is not None and mapped.code == "invalid_recipient"


def test_anything_else_is_left_to_the_base_class() -> None:
    assert failure(ValueError("a bug"), "mail", SERVER) is None
    assert failure(KeyError("a bug"), "reply", SERVER) is None


@pytest.mark.parametrize(("raw", "block"), [
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
    (b".starts\r\n..two\r\nmid.dle\r\n.\r\n", b"..starts\r\n...two\r\nmid.dle\r\n..\r\n.\r\n"),
    # Bare LF or CR become CRLF first, so that no "\n.\r\n" can end the data early.
    (b"x\n.\r\ny\r.z\n", b"x\r\n..\r\ny\r\n..z\r\n.\r\n"),
    (b"", b"\r\n.\r\n"),
])
def test_data_block_dot_stuffs_and_terminates(raw: bytes, block: bytes) -> None:
    assert data_block(raw) == block


def outbound(**fields: object) -> Outbound:
    payload: dict[str, object] = {"from": "sender@example.com", "to": ["Ada <ada@example.org>"],
                                  "text": "hi", **fields}
    return Outbound(message=validate(payload), message_id="m1", attempt_number=1,
                    date=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                    rfc822_message_id=make_message_id("unit.test", "example.com"))


def test_prepare_keeps_bcc_in_the_envelope_only() -> None:
    prepared = SmtpAdapter().prepare(outbound(cc=["bob@example.org", "ADA@example.org"],
                                              bcc=["carol@example.net", "bob@example.org"]))
    assert prepared.envelope == (("ada@example.org", "to[0]"), ("bob@example.org", "cc[0]"),
                                 ("carol@example.net", "bcc[0]"))
    assert prepared.block.endswith(b"\r\n.\r\n")
    headers = email.message_from_bytes(prepared.block[:-3], policy=email.policy.default)
    assert headers["Bcc"] is None and b"carol" not in prepared.block
    assert headers["Message-ID"] == "<unit.test@example.com>"
    assert prepared.size == len(prepared.block) - 3


def test_capabilities() -> None:
    caps = SmtpAdapter.capabilities
    assert (caps.max_recipients, caps.max_message_bytes) == (100, 25 * 1024 * 1024)
    assert caps.inline_images and not caps.can_verify
    assert caps.large_message_path is None and caps.sends_per_minute is None
    assert SmtpAdapter.name == "smtp" and not SmtpAdapter.uses_oauth
