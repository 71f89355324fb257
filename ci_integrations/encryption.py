"""Encryption at rest for stored registry credentials and webhook secrets (MultiFernet, P2P_FERNET_KEYS).

Below the models, which keep their secrets encrypted with it. May import: Django settings only.
"""

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class CredentialsUnreadable(Exception):
    """Stored secrets could not be decrypted with any configured key; never treated as empty credentials."""


def _fernet() -> MultiFernet:
    keys = settings.P2P_FERNET_KEYS
    if not keys:
        raise CredentialsUnreadable("P2P_FERNET_KEYS is empty: stored credentials cannot be read or written.")
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise CredentialsUnreadable(f"P2P_FERNET_KEYS holds a malformed key: {exc}") from None


def encrypt_json(value: dict) -> str:
    """Encrypt a JSON-serialisable dict under the newest key."""
    return _fernet().encrypt(json.dumps(value, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict:
    """Decrypt what encrypt_json produced with any configured key; a wrong key raises CredentialsUnreadable."""
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise CredentialsUnreadable(
            "stored credentials cannot be decrypted with any key in P2P_FERNET_KEYS (wrong or rotated-out key)"
        ) from None


def reencrypt(token: str) -> str:
    """Re-encrypt under the newest key (key rotation)."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise CredentialsUnreadable(
            "stored credentials cannot be decrypted with any key in P2P_FERNET_KEYS (wrong or rotated-out key)"
        ) from None
