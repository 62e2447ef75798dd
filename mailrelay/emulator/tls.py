"""A local certificate authority and a server certificate for the emulator.

Clients trust the emulator through ``bundle.pem`` (the system CAs plus ours), so the
same bundle works for a process that also talks to real hosts. The CA is kept in the
state directory and reused, so that a restarted emulator stays trusted by clients that
already loaded the bundle.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# "emulator" is its service name in docker/compose.yaml.
HOSTNAMES = ("localhost", "emulator")
ADDRESSES = ("127.0.0.1", "::1")
CA_VALIDITY = dt.timedelta(days=3650)
# A server certificate is cheap to reissue from the kept CA, so it lives shorter.
SERVER_VALIDITY = dt.timedelta(days=397)
# A certificate this close to its end is replaced rather than reused.
RENEW_MARGIN = dt.timedelta(days=2)


@dataclass(frozen=True)
class TlsFiles:
    ca_path: Path
    ca_key_path: Path
    cert_path: Path
    key_path: Path
    bundle_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def ensure_certificates(state_dir: Path) -> TlsFiles:
    """Reuse valid CA and server files in ``state_dir`` or make new ones; always rewrite
    the bundle, since the system CAs may have changed since the last start."""
    state_dir.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_path=state_dir / "ca.pem",
        ca_key_path=state_dir / "ca-key.pem",
        cert_path=state_dir / "server.pem",
        key_path=state_dir / "server-key.pem",
        bundle_path=state_dir / "bundle.pem",
    )
    now = dt.datetime.now(dt.UTC)
    ca = _load_ca(files, now)
    if ca is None:
        ca = _new_ca(now)
        _write(files.ca_key_path, _key_pem(ca[1]), private=True)
        _write(files.ca_path, ca[0].public_bytes(serialization.Encoding.PEM))
    if not _server_cert_valid(files, ca[0], now):
        cert, key = _new_server_cert(ca, now)
        _write(files.key_path, _key_pem(key), private=True)
        _write(files.cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(files.bundle_path, _system_bundle() + b"\n" + files.ca_path.read_bytes())
    return files


def _system_bundle() -> bytes:
    if SYSTEM_BUNDLE.is_file():
        return SYSTEM_BUNDLE.read_bytes()
    import certifi  # only where the system has no bundle of its own

    return Path(certifi.where()).read_bytes()


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    # Written to a temporary name and renamed, so that a client reading the bundle
    # while we start never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if not private:
            os.fchmod(fd, 0o644)  # mkstemp makes it 0600; the certificates are public
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_ca(
    files: TlsFiles, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(files.ca_path.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(cert, key):
        return None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return None
    if not is_ca or not _current(cert, now):
        return None
    return cert, key


def _server_cert_valid(files: TlsFiles, ca: x509.Certificate, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
        key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    wanted_ips = {ipaddress.ip_address(a) for a in ADDRESSES}
    return (
        isinstance(key, ec.EllipticCurvePrivateKey)
        and _same_key(cert, key)
        and _current(cert, now)
        and set(HOSTNAMES) <= set(names.get_values_for_type(x509.DNSName))
        and wanted_ips <= set(names.get_values_for_type(x509.IPAddress))
    )


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def _current(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and now + RENEW_MARGIN < cert.not_valid_after_utc


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailrelay emulator"),
        x509.NameAttribute(NameOID.COMMON_NAME, "mailrelay emulator local CA"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little: a client whose clock is slightly behind still accepts it.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server_cert(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in HOSTNAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )
