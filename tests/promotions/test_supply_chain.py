"""Promotions carry what is attached to the image, and a step can require a signature by an accepted key.

Real PostgreSQL, Redis with an RQ worker, and two docker-registry instances (the qa/staging and the prod side).
"""

from __future__ import annotations

import pytest

from ci_integrations.models import Arrival, AuditEntry, Promotion
from ci_integrations.registry.signatures import TrustedKey
from ci_integrations.services.config import config_apply
from ci_integrations.services.config_reader import config_read
from ci_integrations.services.errors import PolicyViolation
from ci_integrations.services.preflight import promotion_preflight
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.supply_chain import require_signature_parse
from tests.support.attachments import SPDX, push_fallback_index, push_referrer, referrer_entry
from tests.support.cosign import generate_key_pair, sign_image
from tests.support.images import get_manifest, get_manifest_digest
from tests.support.sigstore_bundle import GITHUB_ISSUER, OfflineSigstore, attach_bundle, image_statement

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def keys():
    return generate_key_pair()


def _attach(world, bucket, digest: str) -> tuple[str, str]:
    """A cosign signature tag and an SBOM referrer (listed in the fallback index) next to the image."""
    url = world.build_url
    signature = sign_image(url, bucket.repository, digest, generate_key_pair())
    sbom = push_referrer(url, bucket.repository, digest, artifact_type=SPDX)
    size = len(get_manifest(url, bucket.repository, sbom)[0])
    push_fallback_index(url, bucket.repository, digest, [referrer_entry(sbom, size, SPDX)])
    return signature, sbom


def test_a_promotion_carries_signature_and_sbom_and_records_them(world, run_worker):
    artifact = world.register("qa", "v1")
    signature, sbom = _attach(world, world.qa, artifact.digest)
    preflight = promotion_preflight(artifact=artifact, to_env="staging")
    assert preflight["attachments"] == 2

    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED, promotion.error
    assert {a["digest"] for a in promotion.attachments} == {signature, sbom}
    arrival = Arrival.objects.get(promotion=promotion)
    assert {(a["digest"], a["artifact_type"]) for a in arrival.attachments} >= {(sbom, SPDX)}
    tag = artifact.digest.replace(":", "-") + ".sig"
    assert get_manifest_digest(world.build_url, world.staging.repository, tag) == signature
    entry = AuditEntry.objects.get(action="promotion.succeeded", object_id=str(promotion.pk))
    assert {a["digest"] for a in entry.after["attachments"]} == {signature, sbom}
    assert "2 attachment(s) travelled" in promotion.log


def test_a_step_with_attached_none_leaves_them_behind(world, run_worker):
    world.to_staging.attached = "none"
    world.to_staging.save()
    artifact = world.register("qa", "v1")
    _attach(world, world.qa, artifact.digest)

    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED and promotion.attachments == []
    tag = artifact.digest.replace(":", "-") + ".sig"
    assert get_manifest_digest(world.build_url, world.staging.repository, tag) is None


def test_a_step_requiring_a_signature_refuses_an_unsigned_image_naming_why(world, keys):
    world.to_staging.require_signature = {"keys": [{"name": "prod-signing", "pem": keys.public_pem}]}
    world.to_staging.save()
    artifact = world.register("qa", "v1")

    with pytest.raises(PolicyViolation) as refused:
        promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))

    assert any(u.startswith("signature: no signature by an accepted key") for u in refused.value.unmet)


def test_a_signed_image_passes_the_gate_and_the_key_is_recorded(world, keys, run_worker):
    world.to_staging.require_signature = {"keys": [{"name": "prod-signing", "pem": keys.public_pem}]}
    world.to_staging.save()
    artifact = world.register("qa", "v1")
    sign_image(world.build_url, world.qa.repository, artifact.digest, keys)

    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()

    promotion.refresh_from_db()
    key_id = TrustedKey(keys.public_pem).key_id
    assert promotion.state == Promotion.State.SUCCEEDED, promotion.error
    assert promotion.signature["key_id"] == key_id
    assert promotion.signature["message"] == f"signed by key {key_id[:11]}… (prod-signing)"
    entry = AuditEntry.objects.get(action="promotion.succeeded", object_id=str(promotion.pk))
    assert entry.after["signature"]["key_id"] == key_id


def test_config_file_sets_attached_and_require_signature_and_refuses_a_bad_key(world, keys):
    spec = {
        "workflows": [
            {
                "name": "signed",
                "steps": [
                    {
                        "from": "qa",
                        "to": "prod",
                        "attached": "signatures",
                        "require_signature": {"keys": [keys.public_pem]},
                    }
                ],
            }
        ]
    }
    config_apply(data=spec, actor=world.actor(world.admin), source="test")
    step = world.workflow.__class__.objects.get(name="signed").steps.get()
    assert step.attached == "signatures"
    assert step.require_signature == {"keys": [{"name": "", "pem": keys.public_pem}]}

    step = {"from": "qa", "to": "prod", "attached": "some", "require_signature": {"keys": ["nope"], "keyless": []}}
    problems = config_read({"workflows": [{"name": "bad", "steps": [step]}]}).problems
    assert any("attached" in p and "'some'" in p for p in problems)
    assert any("require_signature.keys[0]" in p for p in problems)
    assert any("require_signature.keyless" in p for p in problems)


def test_a_keyless_step_lets_in_an_image_signed_by_the_workflow_and_records_the_identity(
    world, run_worker, settings, tmp_path
):
    sigstore = OfflineSigstore()
    settings.P2P_SIGSTORE_TRUSTED_ROOT = sigstore.write_trusted_root(tmp_path / "trusted_root.json")
    identity = {"issuer": GITHUB_ISSUER, "subject": "https://github.com/acme/*"}
    problems: list[str] = []
    world.to_staging.require_signature = require_signature_parse(
        {"keyless": [identity]}, lambda where, why: problems.append(where + why)
    )
    assert problems == [] and world.to_staging.require_signature == {"keys": [], "keyless": [identity]}
    world.to_staging.save()
    artifact = world.register("qa", "v1")
    with pytest.raises(PolicyViolation):
        promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    workflow = "https://github.com/acme/checkout/.github/workflows/release.yml@refs/heads/main"
    statement = image_statement(world.qa.repository, artifact.digest)
    bundle = sigstore.bundle(subject=workflow, issuer=GITHUB_ISSUER, statement=statement)
    attach_bundle(world.build_url, world.qa.repository, artifact.digest, bundle)

    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED, promotion.error
    assert promotion.signature["identity"] == f"{workflow} ({GITHUB_ISSUER})"
    entry = AuditEntry.objects.get(action="promotion.succeeded", object_id=str(promotion.pk))
    assert entry.after["signature"]["identity"] == promotion.signature["identity"]
