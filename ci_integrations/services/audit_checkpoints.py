"""Signed checkpoints of the audit chain's head, published outside the database.

The hash chain shows an edit in the middle, but not a tail cut off, nor a history rewritten and re-hashed by someone
who can write the table. A checkpoint is a statement "entry <id> is the head, <n> entries lead up to it, its hash is
<h>", signed with an Ed25519 key the database never sees (`P2P_AUDIT_SIGNING_KEY`) and written where the database's
users cannot reach: an append-only directory (`P2P_AUDIT_CHECKPOINT_DIR`) and, optionally, a webhook
(`P2P_AUDIT_CHECKPOINT_WEBHOOK`). Verifying the chain against them shows truncation and rewrites.

What is signed is the canonical JSON (sorted keys, no spaces, UTF-8) of the checkpoint without its `signature`, so
any Ed25519 tool can check a file on its own. This module knows nothing of the audit table: `services.audit` reads
the head and walks the chain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("ci_integrations.audit")

CHECKPOINT_TYPE = "p2p-audit-checkpoint"
CHECKPOINT_VERSION = 1
WEBHOOK_TIMEOUT = 5  # seconds; an export or the worker's loop waits at most this long for the webhook
OFF_REASON = "audit checkpoints are off: P2P_AUDIT_SIGNING_KEY is not set"


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the chain's head; `source` (a file name) is where it was read from, and is not signed."""

    entry_id: int
    entries: int
    head: str
    signed_at: str
    key_id: str
    signature: str = ""
    source: str = field(default="", compare=False)

    def statement(self) -> bytes:
        """The bytes the signature covers."""
        body = {
            "type": CHECKPOINT_TYPE,
            "version": CHECKPOINT_VERSION,
            "entry_id": self.entry_id,
            "entries": self.entries,
            "head": self.head,
            "signed_at": self.signed_at,
            "key_id": self.key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def as_dict(self) -> dict:
        """The checkpoint as published: the signed fields plus `signature`."""
        return {**json.loads(self.statement()), "signature": self.signature}

    @property
    def label(self) -> str:
        """How messages name this checkpoint: its file when it came from one, else its time."""
        return f"{self.source} (signed {self.signed_at})" if self.source else f"signed {self.signed_at}"


def _decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey) -> str:
    """The public key as auditors see it: base64 of its 32 raw bytes."""
    return base64.b64encode(_raw_public(key)).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key (the first 16 hex digits of its SHA-256), carried in each checkpoint."""
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key given as base64 of its 32 raw bytes, or as PEM; ValueError when it is neither."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        raw = _decode_base64(text)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 or PEM") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


@cache
def _signing_key(text: str) -> Ed25519PrivateKey:
    """The private key from P2P_AUDIT_SIGNING_KEY: base64 of the 32-byte seed, or a PEM (PKCS#8) private key."""
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 private key")
            return key
        raw = _decode_base64(text)
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 private key is 32 bytes, this one is {len(raw)}")
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError, TypeError) as error:
        # The message never repeats the key.
        raise ImproperlyConfigured(f"P2P_AUDIT_SIGNING_KEY is not a usable Ed25519 private key: {error}") from None


def audit_signing_key() -> Ed25519PrivateKey | None:
    """The configured signing key, or None when checkpoints are off."""
    text = (settings.P2P_AUDIT_SIGNING_KEY or "").strip()
    return _signing_key(text) if text else None


def audit_public_key() -> str | None:
    """The public half of the signing key (base64), for auditors; None when checkpoints are off."""
    key = audit_signing_key()
    return public_key_text(key.public_key()) if key else None


def audit_signing_status() -> dict:
    """What the audit page tells auditors: whether checkpoints are signed, with which public key, published where."""
    key = audit_signing_key()
    if key is None:
        return {"on": False, "reason": OFF_REASON}
    return {
        "on": True,
        "public_key": public_key_text(key.public_key()),
        "key_id": key_id(key.public_key()),
        "every_minutes": round(settings.P2P_AUDIT_CHECKPOINT_SECONDS / 60, 1),
        "directory": bool(settings.P2P_AUDIT_CHECKPOINT_DIR),
        "webhook": bool(settings.P2P_AUDIT_CHECKPOINT_WEBHOOK),
    }


def verification_keys(given: list[str] | None = None) -> dict[str, Ed25519PublicKey]:
    """The public keys a checkpoint may be signed with, by key id.

    `given` (an auditor's own copy of the key) replaces the portal's configuration; otherwise the signing key's public
    half and P2P_AUDIT_PUBLIC_KEYS (keys used before a rotation) count.
    """
    if given:
        keys = [parse_public_key(text) for text in given]
    else:
        keys = [parse_public_key(text) for text in settings.P2P_AUDIT_PUBLIC_KEYS]
        signing = audit_signing_key()
        if signing:
            keys.insert(0, signing.public_key())
    return {key_id(key): key for key in keys}


def checkpoint_sign(*, entry_id: int, entries: int, head: str) -> Checkpoint | None:
    """Sign a statement of the head, now; None when checkpoints are off."""
    key = audit_signing_key()
    if key is None:
        return None
    unsigned = Checkpoint(
        entry_id=entry_id,
        entries=entries,
        head=head,
        signed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        key_id=key_id(key.public_key()),
    )
    signature = base64.b64encode(key.sign(unsigned.statement())).decode()
    return Checkpoint(**{**asdict(unsigned), "signature": signature})


def checkpoint_problem(checkpoint: Checkpoint, keys: dict[str, Ed25519PublicKey]) -> str:
    """Why `checkpoint` cannot be believed ("" when its signature verifies with one of `keys`)."""
    key = keys.get(checkpoint.key_id)
    if key is None:
        return f"checkpoint {checkpoint.label} is signed by key {checkpoint.key_id}, which is not a trusted key"
    try:
        key.verify(_decode_base64(checkpoint.signature), checkpoint.statement())
    except (InvalidSignature, binascii.Error, ValueError):
        return f"checkpoint {checkpoint.label} has a signature that does not verify: it was altered or forged"
    return ""


def checkpoint_from_dict(data: dict, *, source: str = "") -> Checkpoint:
    """A checkpoint from its published form; ValueError naming what is wrong with it."""
    if not isinstance(data, dict) or data.get("type") != CHECKPOINT_TYPE or data.get("version") != CHECKPOINT_VERSION:
        raise ValueError("not a version 1 audit checkpoint")
    try:
        checkpoint = Checkpoint(
            entry_id=data["entry_id"],
            entries=data["entries"],
            head=data["head"],
            signed_at=data["signed_at"],
            key_id=data["key_id"],
            signature=data["signature"],
            source=source,
        )
    except KeyError as missing:
        raise ValueError(f"it has no {missing.args[0]}") from None
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (data["entry_id"], data["entries"])):
        raise ValueError("entry_id and entries must be whole numbers")
    if not all(isinstance(data[name], str) for name in ("head", "signed_at", "key_id", "signature")):
        raise ValueError("head, signed_at, key_id and signature must be text")
    return checkpoint


def _file_name(checkpoint: Checkpoint) -> str:
    """`<time>-<entry id>.json`: names sort by signing time, and two checkpoints never share one."""
    stamp = checkpoint.signed_at.replace("-", "").replace(":", "")
    return f"{stamp}-{checkpoint.entry_id}.json"


def checkpoint_write(checkpoint: Checkpoint, directory: Path) -> Path:
    """Write `checkpoint` as a new read-only file in `directory`, atomically, never replacing an existing file.

    The file is written under a hidden temporary name, flushed to disk, then hard-linked to its final name: a link
    appears whole or not at all, and unlike a rename it fails rather than replace a file already there.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _file_name(checkpoint)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(json.dumps(checkpoint.as_dict(), sort_keys=True, indent=1).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o444)
        try:
            os.link(temporary, final)
        except FileExistsError:
            # Same time and head: another worker signed the same statement, and Ed25519 signatures are deterministic.
            pass
    finally:
        os.unlink(temporary)
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)  # the new name survives a crash, not only the file's bytes
    finally:
        os.close(directory_descriptor)
    return final


def checkpoint_publish(checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to P2P_AUDIT_CHECKPOINT_DIR and POST it to P2P_AUDIT_CHECKPOINT_WEBHOOK, as configured.

    Failures are logged, never raised: an export or the worker must not stop because a copy could not be made.
    """
    if settings.P2P_AUDIT_CHECKPOINT_DIR:
        try:
            checkpoint_write(checkpoint, Path(settings.P2P_AUDIT_CHECKPOINT_DIR))
        except OSError:
            logger.exception("could not write the audit checkpoint for entry %d", checkpoint.entry_id)
    if settings.P2P_AUDIT_CHECKPOINT_WEBHOOK:
        try:
            response = requests.post(
                settings.P2P_AUDIT_CHECKPOINT_WEBHOOK, json=checkpoint.as_dict(), timeout=WEBHOOK_TIMEOUT
            )
            response.raise_for_status()
        except requests.RequestException as error:
            logger.warning("could not post the audit checkpoint for entry %d: %s", checkpoint.entry_id, error)


@dataclass(frozen=True)
class CheckpointFile:
    """One file of a checkpoint directory: the checkpoint in it, or why it could not be read."""

    name: str
    checkpoint: Checkpoint | None
    problem: str = ""


def _names(directory: Path, *, newest_first: bool = False) -> list[str]:
    """The checkpoint files in `directory` by name, which sorts them by signing time; temporary files are skipped."""
    names = (name for name in os.listdir(directory) if name.endswith(".json") and not name.startswith("."))
    return sorted(names, reverse=newest_first)


def checkpoint_files(directory: Path) -> list[CheckpointFile]:
    """Every checkpoint file in `directory`, oldest first, read and parsed; signatures are checked by the caller."""
    return [checkpoint_file_read(directory, name) for name in _names(directory)]


def checkpoint_file_read(directory: Path, name: str) -> CheckpointFile:
    """The checkpoint in one file, or why it cannot be read."""
    try:
        data = json.loads((directory / name).read_text(encoding="utf-8"))
        return CheckpointFile(name, checkpoint_from_dict(data, source=name))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return CheckpointFile(name, None, f"checkpoint {name} cannot be read: {error}")


def checkpoint_newest_valid(directory: Path, keys: dict[str, Ed25519PublicKey]) -> Checkpoint | None:
    """The newest checkpoint in `directory` whose signature verifies, reading files newest first until one does."""
    if not directory.is_dir():
        return None
    for name in _names(directory, newest_first=True):
        read = checkpoint_file_read(directory, name)
        if read.checkpoint and not checkpoint_problem(read.checkpoint, keys):
            return read.checkpoint
    return None
