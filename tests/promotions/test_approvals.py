"""Who may approve: four-eyes, the approver group, a quorum of distinct people, bound to one digest."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from ci_integrations.models import ApiToken, Approval, AuditEntry, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approval_block, promotion_approve, promotion_reject
from ci_integrations.services.errors import NotAllowed, PolicyViolation, StateConflict
from ci_integrations.services.freeze import freeze_window_create, freeze_window_end
from ci_integrations.services.promotions import promotion_cancel, promotion_request
from tests.promotions.conftest import place

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def pending(world):
    artifact = place(world, "staging", "v1")
    return promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))


def test_it_rejects_self_approval_and_audits_the_refusal(world, pending):
    assert "four-eyes" in promotion_approval_block(promotion=pending, user=world.alice).message
    with pytest.raises(NotAllowed, match="four-eyes"):
        promotion_approve(promotion=pending, actor=world.actor(world.alice), comment="mine")
    refused = AuditEntry.objects.get(action="promotion.approve_refused")
    assert refused.actor == "alice" and refused.object_id == str(pending.pk) and "four-eyes" in refused.reason
    assert not Approval.objects.exists()
    pending.refresh_from_db()
    assert pending.state == Promotion.State.PENDING_APPROVAL


def test_it_rejects_self_approval_through_a_personal_token_too(world, pending):
    token = ApiToken.objects.create(key_id="pt", name="laptop", kind="personal", user=world.alice, secret_hash="x")
    with pytest.raises(NotAllowed, match="four-eyes"):
        promotion_approve(promotion=pending, actor=Actor.for_token(token))


def test_self_approval_is_allowed_when_the_step_says_so(world):
    world.to_prod.self_approval = True
    world.to_prod.required_approvals = 1
    world.to_prod.save()
    promotion = promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.alice))
    assert promotion_approval_block(promotion=promotion, user=world.alice) is None
    assert promotion_approve(promotion=promotion, actor=world.actor(world.alice)).state == Promotion.State.QUEUED


def test_ci_tokens_can_never_approve(world, pending):
    token = ApiToken.objects.create(
        key_id="ci", name="pipeline", kind="ci", scopes=["promotions:request"], secret_hash="x"
    )
    with pytest.raises(NotAllowed, match="CI tokens"):
        promotion_approve(promotion=pending, actor=Actor.for_token(token))
    assert AuditEntry.objects.filter(action="promotion.approve_refused", actor="ci:pipeline").exists()


def test_only_members_of_the_approver_group_may_approve(world, pending):
    # dave has no role; an auditor has a role but not the approver group.
    auditor = type(world.dave).objects.create(username="erin")
    auditor.groups.add(Group.objects.get(name="auditors"))
    for outsider in (world.dave, auditor, world.admin):
        with pytest.raises(NotAllowed, match="release-managers"):
            promotion_approve(promotion=pending, actor=world.actor(outsider))
    assert AuditEntry.objects.filter(action="promotion.approve_refused").count() == 3
    promotion_approve(promotion=pending, actor=world.actor(world.bob))


def test_without_an_approver_group_the_approve_permission_decides(world):
    world.to_prod.approver_group = None
    world.to_prod.required_approvals = 1
    world.to_prod.save()
    promotion = promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.alice))
    with pytest.raises(NotAllowed, match="approve_promotion"):
        promotion_approve(promotion=promotion, actor=world.actor(world.dave))
    assert promotion_approve(promotion=promotion, actor=world.actor(world.admin)).state == Promotion.State.QUEUED


def test_the_quorum_counts_distinct_people(world, pending):
    promotion_approve(promotion=pending, actor=world.actor(world.bob))
    with pytest.raises(StateConflict, match="already decided"):
        promotion_approve(promotion=pending, actor=world.actor(world.bob))
    pending.refresh_from_db()
    assert pending.state == Promotion.State.PENDING_APPROVAL
    assert promotion_approve(promotion=pending, actor=world.actor(world.carol)).state == Promotion.State.QUEUED
    assert AuditEntry.objects.filter(action="promotion.approved").count() == 1


def test_an_approval_does_not_carry_over_to_another_digest(world, pending):
    promotion_approve(promotion=pending, actor=world.actor(world.bob))
    promotion_approve(promotion=pending, actor=world.actor(world.carol))
    approval = Approval.objects.filter(promotion=pending).first()
    assert approval.digest == pending.digest
    # The next build of the same service needs its own approvals, from the same people again.
    other = promotion_request(artifact=place(world, "staging", "v2"), to_env="prod", actor=world.actor(world.alice))
    assert other.digest != pending.digest
    assert other.state == Promotion.State.PENDING_APPROVAL
    assert promotion_approve(promotion=other, actor=world.actor(world.bob)).state == Promotion.State.PENDING_APPROVAL


def test_a_rejection_ends_the_request(world, pending):
    promotion_approve(promotion=pending, actor=world.actor(world.bob))
    rejected = promotion_reject(promotion=pending, actor=world.actor(world.carol), comment="breaks checkout")
    assert rejected.state == Promotion.State.REJECTED
    with pytest.raises(StateConflict):
        promotion_approve(promotion=pending, actor=world.actor(world.admin))
    entry = AuditEntry.objects.get(action="promotion.rejected")
    assert entry.reason == "breaks checkout" and entry.before == {"state": "pending_approval"}


def test_cancel_ends_a_pending_request_but_not_a_finished_one(world, pending):
    cancelled = promotion_cancel(promotion=pending, actor=world.actor(world.alice), reason="wrong build")
    assert cancelled.state == Promotion.State.CANCELLED
    assert AuditEntry.objects.get(action="promotion.cancelled").reason == "wrong build"
    with pytest.raises(StateConflict):
        promotion_cancel(promotion=pending, actor=world.actor(world.alice))
    with pytest.raises(NotAllowed):
        promotion_cancel(
            promotion=promotion_request(
                artifact=place(world, "staging", "v2"), to_env="prod", actor=world.actor(world.alice)
            ),
            actor=world.actor(world.dave),
        )


def test_a_freeze_that_starts_after_the_request_holds_the_approval_that_would_queue_it(world, pending):
    promotion_approve(promotion=pending, actor=world.actor(world.bob))
    window = freeze_window_create(
        name="Quarter close",
        environments=["prod"],
        starts_at=timezone.now() - timedelta(minutes=1),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="quarter end",
        actor=world.actor(world.admin),
    )
    with pytest.raises(PolicyViolation, match="Quarter close"):
        promotion_approve(promotion=pending, actor=world.actor(world.carol), comment="ship it")
    pending.refresh_from_db()
    assert pending.state == Promotion.State.PENDING_APPROVAL and not pending.job_id
    refused = AuditEntry.objects.get(action="promotion.approve_refused")
    assert refused.actor == "carol" and "freeze window" in refused.reason
    freeze_window_end(window=window, actor=world.actor(world.admin))
    assert promotion_approve(promotion=pending, actor=world.actor(world.carol)).state == Promotion.State.QUEUED


def test_the_approval_block_reports_the_freeze_only_for_the_approval_that_would_complete_the_quorum(world, pending):
    freeze_window_create(
        name="Quarter close",
        environments=["prod"],
        starts_at=timezone.now() - timedelta(minutes=1),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="quarter end",
        actor=world.actor(world.admin),
    )
    assert promotion_approval_block(promotion=pending, user=world.bob) is None  # 1 of 2: nothing is queued yet
    promotion_approve(promotion=pending, actor=world.actor(world.bob))
    block = promotion_approval_block(promotion=pending, user=world.carol)
    assert block is not None and "Quarter close" in block.message and "freeze window" in block.message
    with pytest.raises(PolicyViolation, match="Quarter close"):
        promotion_approve(promotion=pending, actor=world.actor(world.carol))
