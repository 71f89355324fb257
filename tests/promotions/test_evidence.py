"""Evidence of each promotion: a signed in-toto statement in cosign's `.att` format at the destination.

Real PostgreSQL, Redis with an RQ worker, and docker-registry; the envelope is checked with the public key alone,
as `cosign verify-attestation --key` does (DSSE PAE, ECDSA P-256 over SHA-256).
"""

from __future__ import annotations

import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.exceptions import ImproperlyConfigured

from ci_integrations.models import AuditEntry, Promotion
from ci_integrations.registry.evidence import DSSE_LAYER, envelope_statement
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.evidence import PREDICATE_TYPE, evidence_key
from ci_integrations.services.promotions import promotion_request
from tests.support.attachments import attach_vuln_attestation
from tests.support.images import get_manifest

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def portal_key(tmp_path, settings) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "evidence.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    settings.P2P_EVIDENCE_KEY_FILE = str(path)
    return key


def verifier(public_key):
    def verify(signature: bytes, data: bytes) -> bool:
        try:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    return verify


def attestations(url: str, repository: str, digest: str) -> tuple[dict, list[bytes]]:
    """The `.att` manifest of `digest` and each of its layers' bytes."""
    import requests

    manifest = json.loads(get_manifest(url, repository, digest.replace(":", "-") + ".att")[0])
    blobs = [requests.get(f"{url}/v2/{repository}/blobs/{x['digest']}", timeout=10).content for x in manifest["layers"]]
    return manifest, blobs


def test_a_promotion_leaves_a_signed_statement_of_who_approved_what_at_the_destination(world, run_worker, portal_key):
    world.to_staging.required_approvals = 1
    world.to_staging.save()
    artifact = world.register("qa", "v1")
    artifact.checks.create(name="functional", status="passed")
    # A scan attested at the source travels along, and the portal's statement is appended next to it.
    attach_vuln_attestation(world.build_url, world.qa.repository, artifact.digest, {"Results": []})
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    promotion_approve(promotion=promotion, actor=world.actor(world.bob), comment="looks good")
    run_worker()

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED, promotion.error
    assert promotion.evidence["predicate_type"] == PREDICATE_TYPE and promotion.evidence["attestation"]
    manifest, blobs = attestations(world.build_url, world.staging.repository, artifact.digest)
    assert len(manifest["layers"]) == 2  # the scan that travelled, then the portal's evidence
    ours = manifest["layers"][-1]
    assert ours["mediaType"] == DSSE_LAYER and ours["annotations"] == {"predicateType": PREDICATE_TYPE}

    statement = envelope_statement(blobs[-1], verifier(portal_key.public_key()))
    assert statement is not None, "the envelope does not verify under the portal's public key"
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"][0]["digest"] == {"sha256": artifact.digest.removeprefix("sha256:")}
    predicate = statement["predicate"]
    assert predicate["source"]["environment"] == "qa" and predicate["destination"]["environment"] == "staging"
    assert [(a["by"], a["decision"]) for a in predicate["approvals"]] == [("bob", "approve")]
    assert [(c["name"], c["status"]) for c in predicate["checks"]] == [("functional", "passed")]
    succeeded = AuditEntry.objects.get(action="promotion.succeeded", object_id=str(promotion.pk))
    assert predicate["audit"] == {"entry": succeeded.pk, "hash": succeeded.hash, "action": "promotion.succeeded"}
    assert "evidence attestation signed by key sha256:" in promotion.log


def test_a_statement_signed_by_another_key_or_altered_does_not_verify(world, run_worker, portal_key):
    artifact = world.register("qa", "v1")
    promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()
    _, blobs = attestations(world.build_url, world.staging.repository, artifact.digest)

    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert envelope_statement(blobs[-1], verifier(stranger)) is None
    envelope = json.loads(blobs[-1])
    envelope["payloadType"] = "text/plain"  # the signature covers the payload type too
    assert envelope_statement(json.dumps(envelope).encode(), verifier(portal_key.public_key())) is None


def test_without_an_evidence_key_nothing_is_written(world, run_worker, settings):
    settings.P2P_EVIDENCE_KEY_FILE = ""
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED and promotion.evidence == {}
    assert get_manifest(world.build_url, world.staging.repository, artifact.digest.replace(":", "-") + ".att") is None


def test_an_evidence_key_that_is_not_p256_or_ed25519_is_refused_naming_the_setting(tmp_path, settings):
    path = tmp_path / "p384.pem"
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    settings.P2P_EVIDENCE_KEY_FILE = str(path)
    with pytest.raises(ImproperlyConfigured, match="P2P_EVIDENCE_KEY_FILE .* ECDSA P-256 or Ed25519"):
        evidence_key()
