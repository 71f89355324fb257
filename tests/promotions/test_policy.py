"""Each workflow policy condition refuses on its own, naming itself, and the refusal is audited."""

from datetime import timedelta

import pytest
from django.utils import timezone

from ci_integrations.models import ApiToken, Arrival, AuditEntry, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import check_report
from ci_integrations.services.copying import promotion_execute
from ci_integrations.services.errors import NotAllowed, PolicyViolation
from ci_integrations.services.freeze import freeze_window_create
from ci_integrations.services.promotions import bucket_rollback, promotion_evaluate, promotion_request
from tests.promotions.conftest import place

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def refusal(world, artifact, to_env="prod", actor=None, **kwargs) -> list[str]:
    with pytest.raises(PolicyViolation) as caught:
        promotion_request(artifact=artifact, to_env=to_env, actor=actor or world.actor(world.alice), **kwargs)
    return caught.value.unmet


def names(unmet: list[str]) -> list[str]:
    return [text.split(":", 1)[0] for text in unmet]


def test_it_refuses_an_artifact_the_source_bucket_does_not_hold(world):
    artifact = place(world, "qa", "v1")
    unmet = refusal(world, artifact)
    assert names(unmet) == ["source bucket"]
    assert "has not arrived in staging" in unmet[0]


def test_it_refuses_a_target_no_workflow_step_leads_into(world):
    artifact = place(world, "staging", "v1")
    assert names(refusal(world, artifact, to_env="qa")) == ["workflow step"]


def test_it_refuses_until_the_required_checks_pass(world):
    world.to_prod.required_checks = ["functional", "nft"]
    world.to_prod.save()
    artifact = place(world, "staging", "v1")
    check_report(artifact=artifact, name="functional", status="failed", actor=Actor.system("ci"))
    unmet = refusal(world, artifact)
    assert names(unmet) == ["required checks"]
    assert "failed: functional" in unmet[0] and "not reported: nft" in unmet[0]
    check_report(artifact=artifact, name="functional", status="passed", actor=Actor.system("ci"))
    check_report(
        artifact=artifact, name="nft", status="passed", url="https://ci.example.com/nft", actor=Actor.system("ci")
    )
    assert promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice)).pk


def test_it_refuses_before_the_minimum_soak_in_the_source_bucket(world):
    world.to_prod.min_soak = timedelta(hours=1)
    world.to_prod.save()
    fresh = place(world, "staging", "v1")
    assert names(refusal(world, fresh)) == ["minimum soak"]
    soaked = place(world, "staging", "v2", arrived_at=timezone.now() - timedelta(hours=2))
    assert promotion_request(artifact=soaked, to_env="prod", actor=world.actor(world.alice)).pk


def test_it_refuses_a_tag_that_does_not_match_the_rule_in_full(world):
    world.to_prod.tag_rule = r"v\d+\.\d+\.\d+"
    world.to_prod.save()
    artifact = place(world, "staging", "v1.2.3-rc1")
    unmet = refusal(world, artifact)
    assert names(unmet) == ["tag rule"] and "v1.2.3-rc1" in unmet[0]
    assert promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice), tag="v1.2.3").tag == (
        "v1.2.3"
    )


def test_it_refuses_a_second_open_promotion_of_the_same_artifact_into_the_same_bucket(world):
    artifact = place(world, "staging", "v1")
    first = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.alice))
    unmet = refusal(world, artifact, actor=world.actor(world.bob))
    assert names(unmet) == ["open promotion"] and f"#{first.pk}" in unmet[0]


def test_it_refuses_people_without_the_request_permission(world):
    artifact = place(world, "staging", "v1")
    assert names(refusal(world, artifact, actor=world.actor(world.dave))) == ["permission"]


def test_it_refuses_ci_tokens_without_the_request_scope_or_the_integration(world):
    artifact = place(world, "staging", "v1")
    token = ApiToken.objects.create(key_id="k1", name="ci", kind="ci", scopes=["artifacts:register"], secret_hash="x")
    token.integrations.add(world.integration)
    unmet = refusal(world, artifact, actor=Actor.for_token(token))
    assert names(unmet) == ["permission"] and "promotions:request" in unmet[0]
    other = ApiToken.objects.create(
        key_id="k2", name="other", kind="ci", scopes=["promotions:request"], secret_hash="x"
    )
    assert "not scoped to integration" in refusal(world, artifact, actor=Actor.for_token(other))[0]
    token.scopes = ["promotions:request"]
    token.save()
    assert promotion_request(artifact=artifact, to_env="prod", actor=Actor.for_token(token)).requested_by is None


def test_it_names_every_unmet_condition_at_once_and_audits_the_refusal(world):
    world.to_prod.required_checks = ["functional"]
    world.to_prod.min_soak = timedelta(days=1)
    world.to_prod.tag_rule = r"v\d+"
    world.to_prod.save()
    freeze_window_create(
        name="Black Friday",
        environments=["prod"],
        starts_at=timezone.now() - timedelta(hours=1),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="sales",
        actor=world.actor(world.admin),
    )
    artifact = place(world, "staging", "latest")
    unmet = refusal(world, artifact, actor=world.actor(world.dave))
    assert set(names(unmet)) == {"permission", "required checks", "minimum soak", "tag rule", "freeze window"}
    entry = AuditEntry.objects.filter(action="promotion.refused").get()
    assert entry.actor == "dave" and entry.environment == "prod" and entry.after["unmet"] == unmet
    assert not Promotion.objects.exists()


def test_a_freeze_window_that_has_already_ended_is_refused_and_nothing_is_saved(world):
    from ci_integrations.models import FreezeWindow
    from ci_integrations.services.errors import InvalidInput

    with pytest.raises(InvalidInput, match="already ended, so it would block nothing") as refused:
        freeze_window_create(
            name="last year",
            environments=["prod"],
            starts_at=timezone.now() - timedelta(days=366),
            ends_at=timezone.now() - timedelta(days=365),
            reason="",
            actor=world.actor(world.admin),
        )
    assert refused.value.details == {"ends_at": "the window has already ended, so it would block nothing"}
    assert not FreezeWindow.objects.exists()


def test_the_preview_lists_met_and_unmet_conditions_without_writing_anything(world):
    artifact = place(world, "staging", "v1")
    before = AuditEntry.objects.count()
    ev = promotion_evaluate(artifact=artifact, to_env="prod", actor=world.actor(world.alice))
    assert ev.ok and ev.required_approvals == 2 and ev.from_bucket == world.staging and ev.to_bucket == world.prod
    assert {c.name for c in ev.conditions} >= {"workflow step", "source bucket", "freeze window", "permission"}
    assert AuditEntry.objects.count() == before


def test_freeze_window_blocks_until_an_admin_overrides_with_a_reason(world):
    window = freeze_window_create(
        name="Code freeze",
        environments=["prod", "staging"],
        starts_at=timezone.now() - timedelta(minutes=5),
        ends_at=timezone.now() + timedelta(hours=2),
        reason="quarter end",
        actor=world.actor(world.admin),
    )
    artifact = place(world, "staging", "v1")
    unmet = refusal(world, artifact)
    assert names(unmet) == ["freeze window"] and "Code freeze" in unmet[0]
    # A release manager's reason is not enough: overriding needs the platform admin's right.
    assert "may not override" in refusal(world, artifact, freeze_override_reason="urgent fix")[0]
    promotion = promotion_request(
        artifact=artifact, to_env="prod", actor=world.actor(world.admin), freeze_override_reason="CVE-2026-1 hotfix"
    )
    assert promotion.freeze_override_reason == "CVE-2026-1 hotfix"
    override = AuditEntry.objects.get(action="promotion.freeze_overridden")
    assert override.actor == "admin" and override.reason == "CVE-2026-1 hotfix"
    with pytest.raises(NotAllowed):
        freeze_window_create(
            name="x",
            environments=["prod"],
            starts_at=timezone.now(),
            ends_at=timezone.now() + timedelta(hours=1),
            reason="",
            actor=world.actor(world.alice),
        )
    from ci_integrations.services.freeze import freeze_window_end, freeze_windows_active

    freeze_window_end(window=window, actor=world.actor(world.admin))
    assert freeze_windows_active(env="prod") == []


def test_a_rollback_through_a_freeze_needs_the_override_right_and_a_reason_and_is_audited(world):
    old = place(world, "prod", "v1")
    place(world, "prod", "v2")
    earlier = Arrival.objects.get(bucket=world.prod, artifact=old)
    freeze_window_create(
        name="Code freeze",
        environments=["prod"],
        starts_at=timezone.now() - timedelta(minutes=5),
        ends_at=timezone.now() + timedelta(hours=2),
        reason="quarter end",
        actor=world.actor(world.admin),
    )
    with pytest.raises(PolicyViolation, match="Code freeze"):
        bucket_rollback(bucket=world.prod, to_arrival=earlier, actor=world.actor(world.admin), reason="v2 500s")
    with pytest.raises(PolicyViolation, match="may not override"):
        bucket_rollback(
            bucket=world.prod,
            to_arrival=earlier,
            actor=world.actor(world.alice),
            reason="v2 500s",
            freeze_override_reason="outage",
        )
    rollback = bucket_rollback(
        bucket=world.prod,
        to_arrival=earlier,
        actor=world.actor(world.admin),
        reason="v2 500s",
        freeze_override_reason="outage INC-7",
    )
    assert rollback.kind == Promotion.Kind.ROLLBACK and rollback.freeze_override_reason == "outage INC-7"
    override = AuditEntry.objects.get(action="promotion.freeze_overridden")
    assert override.actor == "admin" and override.reason == "outage INC-7" and override.object_id == str(rollback.pk)


def test_it_refuses_to_move_an_immutable_tag_of_the_target_bucket_to_another_digest(world):
    world.prod.immutable_tags = True
    world.prod.save()
    running = place(world, "prod", "v1")
    candidate = place(world, "staging", "v1")
    unmet = refusal(world, candidate)
    assert names(unmet) == ["tag rule"] and "immutable" in unmet[0] and running.short_digest in unmet[0]
    assert promotion_request(artifact=candidate, to_env="prod", actor=world.actor(world.alice), tag="v2").tag == "v2"


def test_the_copy_job_fails_when_an_immutable_tag_was_taken_after_the_request(world):
    world.prod.immutable_tags = True
    world.prod.save()
    world.to_prod.required_approvals = 0
    world.to_prod.save()
    candidate = place(world, "staging", "v1")
    promotion = promotion_request(artifact=candidate, to_env="prod", actor=world.actor(world.alice))
    assert promotion.state == Promotion.State.QUEUED
    place(world, "prod", "v1")  # another image lands under v1 while this one waits in the queue
    promotion_execute(promotion_id=promotion.pk)
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.FAILED and "immutable" in promotion.error
    assert not Arrival.objects.filter(promotion=promotion).exists()
