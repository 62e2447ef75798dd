"""Secrets at rest: Fernet tokens under MAILRELAY_SECRET_KEY (several keys, newest first).

MultiFernet decrypts with any listed key and encrypts with the first, so a key is rotated
by putting the new one in front, running `mailrelay accounts rotate-key`, and then
dropping the old one.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from mailrelay.config import get_settings
from mailrelay.errors import ConfigError


class SecretUnreadable(Exception):
    """A stored secret does not decrypt with any configured key."""


def parse_keys(raw: str) -> list[Fernet]:
    keys = [part.strip() for part in raw.split(",") if part.strip()]
    if not keys:
        raise ConfigError("MAILRELAY_SECRET_KEY is empty: set the key the account secrets were "
                          "stored with, or a new one from `mailrelay accounts genkey` on a new "
                          "installation (to change keys later: `mailrelay accounts rotate-key`)")
    fernets = []
    for number, key in enumerate(keys, 1):
        try:
            fernets.append(Fernet(key.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(f"MAILRELAY_SECRET_KEY: key {number} is not a Fernet key "
                              "(32 url-safe base64-encoded bytes)") from None
    return fernets


@lru_cache(maxsize=4)
def _keyring(raw: str) -> MultiFernet:
    return MultiFernet(parse_keys(raw))


def keyring() -> MultiFernet:
    return _keyring(get_settings().secret_key)


def encrypt(plain: str) -> bytes:
    return keyring().encrypt(plain.encode("utf-8"))


def decrypt(token: bytes) -> str:
    try:
        return keyring().decrypt(token).decode("utf-8")
    except InvalidToken:
        raise SecretUnreadable("a stored secret does not decrypt with MAILRELAY_SECRET_KEY") from None


def rotate(token: bytes) -> bytes:
    """Re-encrypt under the newest key."""
    try:
        return keyring().rotate(token)
    except InvalidToken:
        raise SecretUnreadable("a stored secret does not decrypt with MAILRELAY_SECRET_KEY") from None


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")
