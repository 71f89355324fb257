"""The core flow end to end on real PostgreSQL, Redis, an RQ worker and two registries."""

import pytest

from ci_integrations.models import Arrival, AuditEntry, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.artifacts import artifact_register
from ci_integrations.services.audit import audit_verify
from ci_integrations.services.promotions import promotion_request
from tests.support.images import get_manifest_digest

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_register_request_two_approvals_copies_and_leaves_an_ordered_intact_audit_trail(world, run_worker):
    # CI pushes v1.2.3 into staging and registers it.
    digest = world.push(world.staging, "v1.2.3", layers=3, layer_size=64 * 1024)
    artifact, arrival, created = artifact_register(
        integration=world.integration,
        env="staging",
        tag="v1.2.3",
        metadata={"git_sha": "abc123", "branch": "main", "build_url": "https://ci.example.com/1"},
        actor=Actor.system("ci:checkout"),
    )
    assert created and artifact.digest == digest and arrival.how == Arrival.How.PUSH
    world.staging.refresh_from_db()
    assert world.staging.current_arrival == arrival

    promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice), reason="release")
    assert promotion.state == Promotion.State.PENDING_APPROVAL and promotion.required_approvals == 2

    promotion = promotion_approve(promotion=promotion, actor=world.actor(world.bob), comment="looks good")
    assert promotion.state == Promotion.State.PENDING_APPROVAL
    promotion = promotion_approve(promotion=promotion, actor=world.actor(world.carol), comment="ship it")
    assert promotion.state == Promotion.State.QUEUED and promotion.job_id

    run_worker()

    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.SUCCEEDED, promotion.error
    assert promotion.result_digest == digest
    assert promotion.attempts == 1 and promotion.blobs_total >= 4 and promotion.bytes_done == promotion.bytes_total
    world.prod.refresh_from_db()
    current = world.prod.current_arrival
    assert current.artifact_id == artifact.pk and current.how == Arrival.How.PROMOTION and current.tag == "v1.2.3"
    assert get_manifest_digest(world.production_url, world.prod.repository, "v1.2.3") == digest

    actions = list(AuditEntry.objects.order_by("id").values_list("action", flat=True))
    assert actions == [
        "artifact.registered",
        "arrival.recorded",
        "promotion.requested",
        "promotion.approval_recorded",
        "promotion.approved",
        "promotion.started",
        "arrival.recorded",
        "promotion.succeeded",
    ]
    assert audit_verify().ok
