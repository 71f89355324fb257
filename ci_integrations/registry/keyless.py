"""Keyless (sigstore) image signatures: a Fulcio certificate instead of a key, checked offline.

cosign 2.4+ (`--new-bundle-format`, the default from cosign 3) attaches a sigstore bundle to the image as a referrer
of artifact type `application/vnd.dev.sigstore.bundle.v0.3+json`: a DSSE envelope of an in-toto statement whose
subject is the image's digest, with the signing certificate and its transparency log entry. The `sigstore`
library verifies the bundle against a trusted root read from a file (the certificate chain to the CA, its SCT,
the log's inclusion proof and promise), so nothing is fetched; this module then checks that the statement is
about the candidate's digest and that the certificate's issuer and subject match one of the accepted identities
(shell-style globs: `https://github.com/acme/*`).

cosign's older keyless format (a `.sig` layer with `dev.sigstore.cosign/certificate` and a Rekor SET in
`dev.sigstore.cosign/bundle` annotations) is not read: it carries no sigstore bundle to verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from cryptography import x509

from .client import RegistryClient
from .errors import RegistryError

SIGSTORE_BUNDLE_TYPES = {
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
}
MAX_BUNDLE_BYTES = 1024 * 1024  # a bundle is a few KiB: a certificate chain, an envelope, a log entry
MAX_BUNDLES = 16
OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")  # raw UTF-8 bytes
OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")  # a DER UTF8String


class KeylessUnavailable(RuntimeError):
    """The sigstore library or the trusted root cannot be used: keyless signatures cannot be checked at all."""


@dataclass(frozen=True)
class KeylessIdentity:
    """Who may sign without a key: a certificate issuer (the OIDC provider) and subject, both globs."""

    issuer: str
    subject: str

    def matches(self, issuer: str, subjects: list[str]) -> bool:
        return fnmatchcase(issuer, self.issuer) and any(fnmatchcase(s, self.subject) for s in subjects)


def certificate_identity(cert: x509.Certificate) -> tuple[str, list[str]]:
    """The OIDC issuer and the subjects (SAN URIs, e-mail addresses, other names) of a Fulcio certificate."""
    issuer = ""
    for oid in (OIDC_ISSUER_V2, OIDC_ISSUER_V1):
        try:
            raw = cert.extensions.get_extension_for_oid(oid).value.value
        except x509.ExtensionNotFound:
            continue
        if oid == OIDC_ISSUER_V2 and raw[:1] == b"\x0c":  # UTF8String: tag, one length byte (issuers are short)
            raw = raw[2:] if raw[1] < 0x80 else raw[2 + (raw[1] & 0x7F) :]
        issuer = raw.decode("utf-8", "replace")
        break
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return issuer, []
    subjects = [*san.get_values_for_type(x509.UniformResourceIdentifier), *san.get_values_for_type(x509.RFC822Name)]
    subjects += [o.value.decode("utf-8", "replace") for o in san.get_values_for_type(x509.OtherName)]
    return issuer, subjects


class _GlobPolicy:
    """A sigstore VerificationPolicy accepting a certificate whose issuer and subject match an identity."""

    def __init__(self, identities: tuple[KeylessIdentity, ...]):
        self.identities = identities
        self.seen: tuple[str, list[str]] = ("", [])

    def verify(self, cert: x509.Certificate) -> None:
        from sigstore.errors import VerificationError  # noqa: PLC0415 - only when keyless signatures are checked

        issuer, subjects = certificate_identity(cert)
        self.seen = (issuer, subjects)
        if not any(identity.matches(issuer, subjects) for identity in self.identities):
            raise VerificationError(f"certificate of {', '.join(subjects) or 'no subject'} (issuer {issuer})")


@lru_cache(maxsize=4)
def _verifier(trusted_root_path: str):
    try:
        from sigstore.models import TrustedRoot  # noqa: PLC0415 - an optional, heavy import
        from sigstore.verify import Verifier  # noqa: PLC0415
    except ImportError as exc:
        raise KeylessUnavailable(f"the sigstore library is not installed ({exc})") from None
    try:
        return Verifier(trusted_root=TrustedRoot.from_file(trusted_root_path))
    except Exception as exc:  # noqa: BLE001 - any reason the file is unusable, said once
        raise KeylessUnavailable(f"the sigstore trusted root {trusted_root_path} cannot be read: {exc}") from None


@dataclass
class KeylessFinding:
    verified: bool
    message: str
    identity: str = ""  # "subject (issuer)" of the certificate that verified
    bundle: str = ""  # digest of the referrer that held the bundle
    other_digest: bool = False


def verify_keyless(
    client: RegistryClient,
    repository: str,
    digest: str,
    bundles: list,
    identities: tuple[KeylessIdentity, ...],
    trusted_root_path: str,
) -> KeylessFinding:
    """Check the sigstore bundles attached to `digest` (Attachment entries of a bundle artifact type)."""
    from sigstore.errors import Error as SigstoreError  # noqa: PLC0415
    from sigstore.models import Bundle  # noqa: PLC0415

    verifier = _verifier(trusted_root_path)
    problems: list[str] = []
    other_digest = False
    for attachment in bundles[:MAX_BUNDLES]:
        policy = _GlobPolicy(identities)
        try:
            manifest = client.get_manifest(repository, attachment.digest)
            layers = [x for x in manifest.parsed().get("layers") or [] if isinstance(x, dict)]
            if not layers:
                raise RegistryError(f"bundle {attachment.digest} has no layer")
            raw = client.read_blob(repository, str(layers[0].get("digest")), limit=MAX_BUNDLE_BYTES, what="bundle")
            bundle = Bundle.from_json(raw)
            _, payload = verifier.verify_dsse(bundle, policy)
        except RegistryError as exc:
            problems.append(exc.message)
            continue
        except (SigstoreError, ValueError, TypeError) as exc:
            problems.append(f"bundle {attachment.digest[:19]}…: {str(exc)[:200]}")
            continue
        if digest not in _statement_digests(payload):
            other_digest = True
            continue
        issuer, subjects = policy.seen
        who = f"{subjects[0] if subjects else '?'} ({issuer})"
        return KeylessFinding(True, f"signed keyless by {who}", identity=who, bundle=attachment.digest)
    detail = "; ".join(problems[:3]) or "no sigstore bundle attached"
    return KeylessFinding(False, detail, other_digest=other_digest)


def _statement_digests(payload: bytes) -> set[str]:
    """The `sha256:` digests an in-toto statement's subjects name."""
    try:
        statement = json.loads(payload)
        return {
            f"sha256:{s['digest']['sha256']}"
            for s in statement.get("subject") or []
            if isinstance(s, dict) and isinstance(s.get("digest"), dict) and "sha256" in s["digest"]
        }
    except (ValueError, AttributeError, TypeError):
        return set()
