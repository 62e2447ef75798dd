from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mailrelay.emulator import Emulator, start
from mailrelay.emulator.tls import SYSTEM_BUNDLE, ensure_certificates


def test_ca_and_server_certificate(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_path.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=3650)

    server = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "emulator"]  # compose's name
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert files.ca_key_path.stat().st_mode & 0o077 == 0
    assert files.key_path.stat().st_mode & 0o077 == 0


def test_bundle_is_the_system_cas_plus_ours(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path)
    bundle = files.bundle_path.read_bytes()
    assert bundle.endswith(files.ca_path.read_bytes())
    if SYSTEM_BUNDLE.is_file():
        assert bundle.startswith(SYSTEM_BUNDLE.read_bytes())
    assert bundle.count(b"BEGIN CERTIFICATE") > 10


def test_existing_files_are_reused_and_broken_ones_replaced(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path)
    ca, cert = first.ca_path.read_bytes(), first.cert_path.read_bytes()
    second = ensure_certificates(tmp_path)
    assert second.ca_path.read_bytes() == ca and second.cert_path.read_bytes() == cert

    second.cert_path.write_bytes(b"garbage")
    third = ensure_certificates(tmp_path)
    assert third.ca_path.read_bytes() == ca  # the CA survives: clients keep trusting it
    assert third.cert_path.read_bytes() not in (cert, b"garbage")

    third.ca_key_path.write_bytes(b"garbage")
    fourth = ensure_certificates(tmp_path)
    assert fourth.ca_path.read_bytes() != ca
    x509.load_pem_x509_certificate(fourth.cert_path.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(fourth.ca_path.read_bytes()))


def test_a_restarted_emulator_keeps_its_ca(tmp_path: Path) -> None:
    with start(state_dir=tmp_path, quiet=True) as first:
        ca = first.ca_path.read_bytes()
    with start(state_dir=tmp_path, quiet=True) as second:
        assert second.ca_path.read_bytes() == ca
        assert requests.get(f"{second.url}/_emulator/stats", verify=first.ca_path, timeout=10).ok


def test_clients_trusting_only_ca_pem_verify_the_hostnames(emulator: Emulator) -> None:
    context = ssl.create_default_context(cafile=str(emulator.ca_path))
    for name in ("localhost", "127.0.0.1"):
        with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_untrusting_clients_are_refused_and_the_server_carries_on(emulator: Emulator) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{emulator.url}/_emulator/stats", verify=SYSTEM_BUNDLE if SYSTEM_BUNDLE.is_file()
                     else True, timeout=10)
    assert requests.get(f"{emulator.url}/_emulator/stats", verify=emulator.bundle_path, timeout=10).ok


def test_ipv6_loopback(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with start("::1", state_dir=tmp_path, quiet=True) as emulator:
        assert emulator.url.startswith("https://[::1]:")
        assert requests.get(f"{emulator.url}/_emulator/stats", verify=emulator.bundle_path, timeout=10).ok
