"""The emergency stop: no new promotion, queued ones held, a banner on every page, audited, and resumable."""

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from ci_integrations.models import AuditEntry, EmergencyStop, Promotion
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.emergency_stop import emergency_stop_pull, emergency_stop_release
from ci_integrations.services.errors import NotAllowed, PolicyViolation, StateConflict
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.scheduler import scheduler_tick
from tests.promotions.conftest import place

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
State = Promotion.State


def test_the_stop_holds_queued_promotions_and_refuses_new_ones_until_released(world, run_worker):
    artifact = world.register("qa", "v1")
    queued = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    assert queued.state == State.QUEUED
    emergency_stop_pull(reason="INC-7: bad base image", actor=world.actor(world.alice))
    queued.refresh_from_db()
    assert queued.state == State.APPROVED and "INC-7" in queued.waiting_for
    run_worker()  # the job already in Redis finds nothing to claim
    queued.refresh_from_db()
    assert queued.state == State.APPROVED
    other = place(world, "staging", "v9")
    with pytest.raises(PolicyViolation, match="emergency stop: every promotion is stopped: INC-7"):
        promotion_request(artifact=other, to_env="prod", actor=world.actor(world.alice))
    assert scheduler_tick()["queued"] == 0

    emergency_stop_release(actor=world.actor(world.admin))
    assert scheduler_tick()["queued"] == 1
    run_worker()
    queued.refresh_from_db()
    assert queued.state == State.SUCCEEDED
    actions = list(
        AuditEntry.objects.filter(action__startswith="emergency_stop.").order_by("id").values_list("action", "actor")
    )
    assert actions == [("emergency_stop.pulled", "alice"), ("emergency_stop.released", "admin")]
    assert AuditEntry.objects.get(action="emergency_stop.pulled").after["held_promotions"] == [queued.pk]


def test_a_copy_job_that_meets_the_stop_does_not_start_and_waits(world, run_worker):
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    # The stop is pulled after the hold: the row is queued again by hand, as a racing enqueue would leave it.
    emergency_stop_pull(reason="INC-8", actor=world.actor(world.alice))
    Promotion.objects.filter(pk=promotion.pk).update(state=State.QUEUED)
    from ci_integrations.services.copying import promotion_execute

    promotion_execute(promotion_id=promotion.pk)
    promotion.refresh_from_db()
    assert (
        promotion.state == State.APPROVED and promotion.attempts == 0 and "held by the emergency stop" in promotion.log
    )


def test_approvals_during_the_stop_count_and_the_promotion_waits_for_the_release(world):
    artifact = place(world, "staging", "v1")
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=world.actor(world.carol))
    emergency_stop_pull(reason="INC-9", actor=world.actor(world.carol))
    promotion_approve(promotion=promotion, actor=world.actor(world.alice))
    promotion = promotion_approve(promotion=promotion, actor=world.actor(world.bob))
    assert promotion.state == State.APPROVED and "INC-9" in promotion.waiting_for
    emergency_stop_release(actor=world.actor(world.carol))
    assert scheduler_tick()["queued"] == 1


def test_only_release_managers_and_platform_admins_use_the_stop_and_it_is_pulled_once(world):
    with pytest.raises(NotAllowed):
        emergency_stop_pull(reason="x", actor=world.actor(world.dave))
    emergency_stop_pull(reason="first", actor=world.actor(world.admin))
    with pytest.raises(StateConflict, match="already pulled.*first"):
        emergency_stop_pull(reason="second", actor=world.actor(world.alice))
    assert EmergencyStop.objects.count() == 1
    with pytest.raises(NotAllowed):
        emergency_stop_release(actor=world.actor(world.dave))


def test_the_commands_pull_and_release_the_stop(world):
    call_command("promotions_stop", "--reason", "maintenance of the prod registry")
    assert EmergencyStop.objects.get(active=True).started_by.startswith("manage.py promotions_stop")
    with pytest.raises(CommandError, match="already pulled"):
        call_command("promotions_stop", "--reason", "again")
    call_command("promotions_resume")
    assert not EmergencyStop.objects.filter(active=True).exists()
    with pytest.raises(CommandError, match="not pulled"):
        call_command("promotions_resume")


def test_every_page_shows_the_banner_while_the_stop_is_pulled(world):
    client = Client()
    client.force_login(world.dave)
    assert "Emergency stop:" not in client.get(reverse("overview")).content.decode()
    emergency_stop_pull(reason="INC-<b>10</b>", actor=world.actor(world.admin))
    for url in (reverse("overview"), reverse("tokens"), reverse("insights")):
        page = client.get(url).content.decode()
        assert "Emergency stop:" in page and "INC-&lt;b&gt;10&lt;/b&gt;" in page, url
    assert "Emergency stop:" in Client().get(reverse("login")).content.decode()


def test_the_api_pulls_and_releases_the_stop_for_a_release_manager(world):
    from ci_integrations.services.tokens import token_create
    from tests.api.conftest import Caller

    _, plain = token_create(
        name="rm",
        kind="personal",
        user=world.alice,
        scopes=["read", "promotions:request"],
        actor=world.actor(world.alice),
    )
    caller = Caller("alice", plain)
    assert caller.get("/api/v1/stop/").status_code == 404
    response = caller.post("/api/v1/stop/", {"reason": ""})
    assert response.status_code == 400 and "reason" in response.json()["error"]["details"]
    response = caller.post("/api/v1/stop/", {"reason": "INC-11"})
    assert response.status_code == 201 and response.json()["active"] is True
    assert caller.get("/api/v1/stop/").json()["reason"] == "INC-11"
    response = caller.call("DELETE", "/api/v1/stop/")
    assert response.status_code == 200 and response.json()["ended_by"] == "alice (token rm)"
