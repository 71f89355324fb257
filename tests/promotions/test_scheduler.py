"""The scheduler: auto steps that fire when their soak ends, scheduled promotions, approvals that expire."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from ci_integrations.models import AuditEntry, Promotion, WebhookDelivery
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.errors import InvalidInput
from ci_integrations.services.freeze import freeze_window_create, freeze_window_end
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.scheduler import (
    approvals_expire,
    auto_promotions_due,
    scheduler_tick,
    waiting_promotions_release,
)
from ci_integrations.services.webhooks import webhook_create
from tests.promotions.conftest import place
from tests.promotions.test_worker_killed import kill_tree, start_worker, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
State = Promotion.State


def auto_with_soak(world, soak: timedelta) -> None:
    world.to_staging.auto_promote = True
    world.to_staging.min_soak = soak
    world.to_staging.save()


def test_an_auto_step_is_requested_by_the_worker_once_its_soak_ends_with_no_other_event(world, tmp_path, rq_queues):
    auto_with_soak(world, timedelta(seconds=3))
    artifact = world.register("qa", "v1")
    arrived = artifact.arrivals.get(bucket=world.qa).arrived_at
    assert not Promotion.objects.exists()  # the registration came too early for the soak
    # Two real workers, each with its scheduler every half second: the promotion is still requested once.
    workers = [
        start_worker(tmp_path / f"worker-{n}.log", "promotions", "default", options=("--schedule-every", "0.5"))
        for n in range(2)
    ]
    try:
        promotion = wait_for(
            lambda: Promotion.objects.filter(artifact=artifact, state=State.SUCCEEDED).first(), 60, "the auto-promotion"
        )
    finally:
        for worker in workers:
            kill_tree(worker.pid)
            worker.wait(10)
    assert Promotion.objects.filter(artifact=artifact).count() == 1
    requested = AuditEntry.objects.get(action="promotion.requested", object_id=str(promotion.pk))
    assert requested.actor == "auto-promote"
    # Allowed at arrival + soak; requested within the scheduler's period (and the workers' start) after that.
    delay = (promotion.created_at - (arrived + timedelta(seconds=3))).total_seconds()
    assert 0 <= delay < 10, delay


def test_concurrent_scheduler_passes_request_a_soaked_auto_promotion_exactly_once(world):
    auto_with_soak(world, timedelta(minutes=5))
    artifact = place(world, "qa", "v1", arrived_at=timezone.now() - timedelta(minutes=6))
    barrier = threading.Barrier(6)
    errors = []

    def run():
        try:
            barrier.wait()
            auto_promotions_due()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Promotion.objects.filter(artifact=artifact).count() == 1
    assert AuditEntry.objects.filter(action="promotion.requested").count() == 1
    # And it never repeats itself, even once that promotion is over.
    Promotion.objects.update(state=State.CANCELLED)
    assert auto_promotions_due() == 0


def test_an_artifact_replaced_in_its_bucket_before_its_soak_ended_is_not_auto_promoted(world):
    auto_with_soak(world, timedelta(minutes=5))
    old = place(world, "qa", "v1", arrived_at=timezone.now() - timedelta(minutes=6))
    place(world, "qa", "v2")
    assert auto_promotions_due() == 0
    assert not Promotion.objects.filter(artifact=old).exists()


def test_a_scheduled_promotion_waits_approved_and_is_copied_when_its_time_comes(world, run_worker):
    artifact = world.register("qa", "v1")
    at = timezone.now() + timedelta(seconds=2)
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice), not_before=at)
    assert promotion.state == State.APPROVED and promotion.waiting_for.startswith("scheduled for")
    assert waiting_promotions_release() == 0
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == State.APPROVED
    time.sleep(max(0.0, (at - timezone.now()).total_seconds()) + 0.1)
    assert scheduler_tick()["queued"] == 1
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == State.SUCCEEDED
    assert AuditEntry.objects.filter(action="promotion.queued", actor="scheduler", object_id=str(promotion.pk)).exists()


def test_approvals_given_beforehand_hold_and_a_freeze_at_the_time_keeps_it_waiting_saying_why(world):
    artifact = place(world, "staging", "v1")
    at = timezone.now() + timedelta(seconds=1)
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.carol), not_before=at)
    assert promotion.state == State.PENDING_APPROVAL
    promotion_approve(promotion=promotion, actor=world.actor(world.alice))
    promotion = promotion_approve(promotion=promotion, actor=world.actor(world.bob))
    assert promotion.state == State.APPROVED
    window = freeze_window_create(
        name="incident",
        environments=["prod"],
        starts_at=timezone.now(),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="INC-9",
        actor=world.actor(world.admin),
    )
    time.sleep(1.1)
    assert waiting_promotions_release() == 0
    promotion.refresh_from_db()
    assert promotion.state == State.APPROVED and "incident" in promotion.waiting_for
    freeze_window_end(window=window, actor=world.actor(world.admin))
    assert waiting_promotions_release() == 1
    promotion.refresh_from_db()
    assert promotion.state == State.QUEUED and promotion.waiting_for == ""


@pytest.mark.parametrize(
    "not_before, problem",
    [
        (lambda now: now.replace(tzinfo=None) + timedelta(hours=1), "offset"),
        (lambda now: now - timedelta(hours=1), "in the past"),
        (lambda now: now + timedelta(days=400), "ahead"),
    ],
)
def test_a_scheduled_time_without_offset_in_the_past_or_too_far_ahead_is_refused(world, not_before, problem):
    artifact = place(world, "qa", "v1")
    with pytest.raises(InvalidInput, match=problem):
        promotion_request(
            artifact=artifact, to_env="staging", actor=world.actor(world.alice), not_before=not_before(timezone.now())
        )
    assert not Promotion.objects.exists()


def test_a_promotion_pending_approval_past_its_timeout_expires_audited_and_announced(world, run_worker):
    from tests.promotions.test_webhooks import Receiver

    receiver = Receiver([200])
    try:
        webhook_create(
            integration=world.integration,
            url=receiver.url,
            secret="s3cret-s3cret-s3cret",
            events=["expired"],
            actor=world.actor(world.admin),
        )
        world.to_prod.approval_timeout = timedelta(hours=2)
        world.to_prod.save()
        artifact = place(world, "staging", "v1")
        promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.carol))
        Promotion.objects.filter(pk=promotion.pk).update(created_at=timezone.now() - timedelta(hours=1))
        assert approvals_expire() == 0
        Promotion.objects.filter(pk=promotion.pk).update(created_at=timezone.now() - timedelta(hours=2, seconds=1))
        assert approvals_expire() == 1
        assert approvals_expire() == 0
        promotion.refresh_from_db()
        assert promotion.state == State.EXPIRED and "2 hours" in promotion.error
        entry = AuditEntry.objects.get(action="promotion.expired")
        assert entry.actor == "scheduler" and entry.object_id == str(promotion.pk)
        run_worker()
        delivery = WebhookDelivery.objects.get(event="expired")
        assert delivery.delivered_at is not None
    finally:
        receiver.close()


def test_without_a_step_timeout_approvals_expire_after_seven_days(world):
    artifact = place(world, "staging", "v1")
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.carol))
    Promotion.objects.filter(pk=promotion.pk).update(created_at=timezone.now() - timedelta(days=6, hours=23))
    assert approvals_expire() == 0
    Promotion.objects.filter(pk=promotion.pk).update(created_at=timezone.now() - timedelta(days=7, seconds=1))
    assert approvals_expire() == 1
