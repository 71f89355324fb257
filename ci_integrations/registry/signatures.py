"""Verify cosign signatures of an image, as an admission controller would, before the image is promoted.

A cosign signature is a manifest attached to the image (the `sha256-<hex>.sig` tag, or a referrer of artifact
type `application/vnd.dev.cosign.artifact.sig.v1+json`) whose layers are simple-signing payloads. Each layer's
`dev.cosignproject.cosign/signature` annotation is the base64 signature of the payload's exact bytes; the payload's
`critical.image.docker-manifest-digest` names the image it signs. A signature counts when it verifies under an
accepted key (ECDSA P-256 with SHA-256, as cosign makes them; Ed25519 and RSA keys work too) and names this digest.

Keyless signatures (a Fulcio certificate in a sigstore bundle) are checked by keyless.py when the requirement
names identities.

Everything read is bounded: a signature manifest by the client's manifest cap, at most MAX_SIGNATURE_LAYERS
layers, each payload at most MAX_PAYLOAD_BYTES.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .client import Manifest, RegistryClient
from .client_cache import shared_client
from .errors import ProtocolError, RegistryError
from .keyless import SIGSTORE_BUNDLE_TYPES, KeylessIdentity, KeylessUnavailable, verify_keyless
from .referrers import attachments_of
from .refs import ImageLocation, check_reference, check_repository

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
MAX_PAYLOAD_BYTES = 64 * 1024  # a simple-signing payload is a few hundred bytes
MAX_SIGNATURE_LAYERS = 64
MAX_SIGNATURE_MANIFESTS = 16

NO_ACCEPTED_KEY = "no signature by an accepted key"  # or identity, for keyless signatures
OTHER_DIGEST = "the signature is for another digest"


class UnreadableKey(ValueError):
    """A configured public key that cannot be read."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key signatures may be made with, and the name people know it by."""

    pem: str
    name: str = ""

    @property
    def public_key(self):
        try:
            return serialization.load_pem_public_key(self.pem.encode())
        except (ValueError, TypeError) as exc:
            raise UnreadableKey(f"not a PEM public key ({exc})") from None

    @property
    def key_id(self) -> str:
        """sha256 of the key's DER SubjectPublicKeyInfo: stable whatever the PEM's line breaks."""
        der = self.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256:" + hashlib.sha256(der).hexdigest()

    def label(self) -> str:
        short = self.key_id[: len("sha256:") + 4] + "…"
        return f"key {short} ({self.name})" if self.name else f"key {short}"

    def verifies(self, signature: bytes, payload: bytes) -> bool:
        key = self.public_key
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, payload)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                return False
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SignatureRequirement:
    """What a step accepts: signatures by any of these keys, or keyless ones by any of these identities (checked
    against the sigstore trusted root in the file `trusted_root`)."""

    keys: tuple[TrustedKey, ...] = ()
    keyless: tuple[KeylessIdentity, ...] = ()
    trusted_root: str = ""


@dataclass(frozen=True)
class SignatureVerdict:
    """The answer: verified or not, a sentence, and who signed."""

    verified: bool
    message: str
    key_id: str = ""
    key_name: str = ""
    signature: str = ""  # digest of the signature manifest that verified
    identity: str = ""  # for a keyless signature: the certificate's subject (issuer)
    problems: tuple[str, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict:
        found = {"verified": self.verified, "message": self.message}
        for key in ("key_id", "key_name", "signature", "identity"):
            if getattr(self, key):
                found[key] = getattr(self, key)
        return found


@dataclass
class _Findings:
    checked: int = 0
    other_digest: bool = False
    problems: list[str] = field(default_factory=list)

    def verdict(self) -> SignatureVerdict:
        if self.other_digest:
            return SignatureVerdict(False, OTHER_DIGEST, problems=tuple(self.problems))
        if not self.checked and not self.problems:
            detail = "the image has no signature"
        else:
            detail = "; ".join([f"{self.checked} signature(s) checked", *self.problems[:3]])
        return SignatureVerdict(False, f"{NO_ACCEPTED_KEY} ({detail})", problems=tuple(self.problems))


def verify_image_signature(location: ImageLocation, requirement: SignatureRequirement) -> SignatureVerdict:
    """Is the image at `location` (reference: its digest) signed by an accepted key?"""
    check_repository(location.repository)
    check_reference(location.reference)
    if ":" not in location.reference:
        raise ProtocolError("signatures are checked for a digest, not a tag")
    return verify_signatures(shared_client(location.registry), location.repository, location.reference, requirement)


def verify_signatures(
    client: RegistryClient, repository: str, digest: str, requirement: SignatureRequirement
) -> SignatureVerdict:
    findings = _Findings()
    signatures = [a for a in attachments_of(client, repository, digest) if a.kind == "signature"]
    bundles = [a for a in signatures if a.artifact_type in SIGSTORE_BUNDLE_TYPES]
    if requirement.keyless and bundles:
        try:
            keyless = verify_keyless(client, repository, digest, bundles, requirement.keyless, requirement.trusted_root)
        except KeylessUnavailable as exc:
            findings.problems.append(f"keyless signatures cannot be checked: {exc}")
        else:
            if keyless.verified:
                return SignatureVerdict(True, keyless.message, signature=keyless.bundle, identity=keyless.identity)
            findings.other_digest = findings.other_digest or keyless.other_digest
            findings.checked += len(bundles)
            findings.problems.append(f"keyless: {keyless.message}")
    signatures = [a for a in signatures if a.artifact_type not in SIGSTORE_BUNDLE_TYPES]
    if not requirement.keys:
        return findings.verdict()
    for attachment in signatures[:MAX_SIGNATURE_MANIFESTS]:
        try:
            manifest = client.get_manifest(repository, attachment.digest)
        except RegistryError as exc:
            findings.problems.append(f"signature {attachment.digest}: {exc.message}")
            continue
        verdict = _check_manifest(client, repository, digest, manifest, requirement, findings)
        if verdict is not None:
            return verdict
    return findings.verdict()


def _check_manifest(
    client: RegistryClient,
    repository: str,
    digest: str,
    manifest: Manifest,
    requirement: SignatureRequirement,
    findings: _Findings,
) -> SignatureVerdict | None:
    try:
        layers = manifest.parsed().get("layers") or []
    except ProtocolError as exc:
        findings.problems.append(exc.message)
        return None
    if not isinstance(layers, list):
        findings.problems.append(f"signature {manifest.digest} has a malformed layers list")
        return None
    for layer in layers[:MAX_SIGNATURE_LAYERS]:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        annotations = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
        findings.checked += 1
        try:
            signature = base64.b64decode(str(annotations.get(SIGNATURE_ANNOTATION, "")), validate=True)
        except (binascii.Error, ValueError):
            findings.problems.append("a signature layer's signature is not valid base64")
            continue
        if not signature:
            findings.problems.append("a signature layer carries no signature")
            continue
        try:
            payload = _payload(client, repository, layer)
        except RegistryError as exc:
            findings.problems.append(exc.message)
            continue
        signer = next((key for key in requirement.keys if key.verifies(signature, payload)), None)
        if signer is None:
            continue
        if _signed_digest(payload) != digest:
            findings.other_digest = True
            continue
        return SignatureVerdict(
            True, f"signed by {signer.label()}", key_id=signer.key_id, key_name=signer.name, signature=manifest.digest
        )
    return None


def _payload(client: RegistryClient, repository: str, layer: dict) -> bytes:
    """The payload blob's exact bytes, at most MAX_PAYLOAD_BYTES, checked against its digest."""
    blob_digest = str(layer.get("digest") or "")
    try:
        declared = int(layer.get("size") or 0)
    except (TypeError, ValueError):
        declared = -1
    if declared < 0 or declared > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"a signature payload of {declared} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    check_reference(blob_digest)
    return client.read_blob(repository, blob_digest, limit=MAX_PAYLOAD_BYTES, what="signature payload")


def _signed_digest(payload: bytes) -> str | None:
    """The digest a simple-signing payload signs, or None when the payload is not one."""
    try:
        critical = json.loads(payload).get("critical") or {}
        if critical.get("type") != SIMPLE_SIGNING_TYPE:
            return None
        return critical["image"]["docker-manifest-digest"]
    except (ValueError, AttributeError, KeyError, TypeError):
        return None
