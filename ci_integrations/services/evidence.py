"""Evidence of each promotion: a signed in-toto statement attached to the image at its destination.

When a promotion (or rollback) succeeds and P2P_EVIDENCE_KEY_FILE names a PEM private key (ECDSA P-256, as cosign
uses; Ed25519 works too), the portal writes an in-toto Statement v1 of predicate type PREDICATE_TYPE saying where
the image came from and went, who approved it and when, its checks, the signature check, and the hash of the
`promotion.succeeded` audit entry. It is signed as a DSSE envelope and appended to the image's cosign `.att`
manifest at the destination, so an admission policy can require "promoted by the portal"
(`cosign verify-attestation --key portal.pub --type <PREDICATE_TYPE>`; see docs/configuration.md).

Writing it never fails the promotion, which has already succeeded: a failure is recorded on the promotion
(`evidence.error`) and in its log.

May import: models, registry, encryption, services.promotions.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import F, Value
from django.db.models.functions import Concat

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.models import AuditEntry, Promotion
from ci_integrations.registry import RegistryError
from ci_integrations.registry.errors import cut
from ci_integrations.registry.evidence import IN_TOTO_STATEMENT, attach_attestation, dsse_envelope
from ci_integrations.registry.signatures import TrustedKey
from ci_integrations.services.promotions import log_line

logger = logging.getLogger(__name__)

PREDICATE_TYPE = "https://p2p-portal.dev/attestations/promotion/v1"


@lru_cache(maxsize=4)
def _load_key(path: str):
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"P2P_EVIDENCE_KEY_FILE {path}: not a readable PEM private key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ImproperlyConfigured(f"P2P_EVIDENCE_KEY_FILE {path}: the key must be ECDSA P-256 or Ed25519")


def evidence_key():
    """The portal's evidence signing key, or None when P2P_EVIDENCE_KEY_FILE is not set."""
    path = (settings.P2P_EVIDENCE_KEY_FILE or "").strip()
    return _load_key(path) if path else None


def evidence_public_key_pem() -> str:
    """The public half of the evidence key as PEM (what `cosign verify-attestation --key` takes); empty if off."""
    key = evidence_key()
    if key is None:
        return ""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _sign(key, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))  # DER, as cosign writes and reads them
    return key.sign(data)


def promotion_statement(*, promotion: Promotion, audit_entry: AuditEntry) -> dict:
    """The in-toto statement for a promotion that succeeded, `audit_entry` being its `promotion.succeeded` entry."""
    target = promotion.to_bucket
    approvals = [
        {"by": a.user.get_username() if a.user else "", "decision": a.decision, "at": a.created_at.isoformat()}
        for a in promotion.approvals.select_related("user").order_by("id")
    ]
    checks = [
        {"name": c.name, "status": c.status, "url": c.url, "reported_at": c.reported_at.isoformat()}
        for c in promotion.artifact.checks.order_by("name")
    ]
    source = promotion.from_bucket
    return {
        "_type": IN_TOTO_STATEMENT,
        "subject": [{"name": target.image_name, "digest": {"sha256": promotion.digest.removeprefix("sha256:")}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "promotion": {
                "id": promotion.pk,
                "kind": promotion.kind,
                "integration": promotion.integration.name,
                "requested_by": promotion.requested_by_label,
                "reason": promotion.reason,
                "freeze_override_reason": promotion.freeze_override_reason,
                "requested_at": promotion.created_at.isoformat(),
                "finished_at": promotion.finished_at.isoformat() if promotion.finished_at else None,
            },
            "source": {
                "environment": source.env if source else target.env,
                "repository": (source or target).image_name,
                "digest": promotion.digest,
                "tag": promotion.source_tag,
            },
            "destination": {"environment": target.env, "repository": target.image_name, "tag": promotion.tag},
            "approvals": approvals,
            "checks": checks,
            "signature": promotion.signature or None,
            "attachments": promotion.attachments,
            "audit": {"entry": audit_entry.pk, "hash": audit_entry.hash, "action": audit_entry.action},
        },
    }


def promotion_evidence_attach(*, promotion_id: int, audit_entry_id: int) -> dict:
    """Sign and attach the evidence of a succeeded promotion at its destination; returns what was recorded on the
    promotion ({} when the portal has no evidence key)."""
    key = evidence_key()
    if key is None:
        return {}
    promotion = Promotion.objects.select_related("to_bucket__registry", "from_bucket", "artifact", "integration").get(
        pk=promotion_id
    )
    entry = AuditEntry.objects.get(pk=audit_entry_id)
    public = TrustedKey(pem=evidence_public_key_pem())
    try:
        envelope = dsse_envelope(promotion_statement(promotion=promotion, audit_entry=entry), lambda d: _sign(key, d))
        manifest = attach_attestation(
            promotion.to_bucket.location(promotion.digest), envelope, predicate_type=PREDICATE_TYPE
        )
    except (RegistryError, CredentialsUnreadable) as exc:
        why = exc.message if isinstance(exc, RegistryError) else str(exc)
        recorded = {"error": why, "predicate_type": PREDICATE_TYPE}
        line = f"warning: the evidence attestation was not attached: {why}"
        logger.warning("promotion %s: %s", promotion_id, line)
    else:
        recorded = {"attestation": manifest, "predicate_type": PREDICATE_TYPE, "key_id": public.key_id}
        line = f"evidence attestation signed by {public.label()} attached ({manifest})"
    Promotion.objects.filter(pk=promotion_id).update(
        evidence=recorded, log=Concat(F("log"), Value(log_line(cut(line))))
    )
    return recorded
