"""Four-eyes: whoever requested a promotion cannot approve it — not through the UI, not through the Django admin,
not by calling the service — whatever their role (release manager, platform admin, superuser), and every refused
attempt leaves a `promotion.approve_refused` audit entry naming who tried. (The API path is tested in tests/api.)"""

from __future__ import annotations

import pytest
from django.urls import reverse

from ci_integrations.models import ApiToken, Approval, AuditEntry, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.errors import NotAllowed
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.tokens import token_create
from tests.security.conftest import client_for, make_user

pytestmark = pytest.mark.django_db


def refusals(promotion: Promotion) -> list[AuditEntry]:
    return list(
        AuditEntry.objects.filter(
            action="promotion.approve_refused", object_type="promotion", object_id=str(promotion.pk)
        ).order_by("id")
    )


def assert_untouched(promotion: Promotion) -> None:
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.PENDING_APPROVAL
    assert not Approval.objects.filter(promotion=promotion).exists()


@pytest.fixture
def requesters(world):
    """A release manager, a platform admin and a superuser, each with a promotion of their own waiting.

    The step into staging names no approver group, so only four-eyes stands between each of them and approving.
    """
    world.to_staging.approver_group = None
    world.to_staging.save(update_fields=["approver_group"])
    people = {
        "release manager": world.users["release_manager"],
        "platform admin": world.users["platform_admin"],
        "superuser": make_user("root", staff=True, superuser=True),
    }
    own = {}
    for i, (label, user) in enumerate(people.items()):
        artifact = world.place("qa", f"3.{i}.0")
        own[label] = (user, promotion_request(artifact=artifact, to_env="staging", actor=Actor.for_user(user)))
    return own


def test_the_requester_cannot_approve_through_the_ui_and_is_told_why(requesters):
    for label, (user, promotion) in requesters.items():
        client = client_for(user)
        panel = client.get(reverse("approval_panel", args=[promotion.pk])).content.decode()
        assert ">Approve</button>" not in panel and "four-eyes" in panel, label
        response = client.post(reverse("promotion_approve", args=[promotion.pk]), {"comment": "mine"}, follow=True)
        assert response.status_code == 200, label
        assert "four-eyes: you requested this promotion" in response.content.decode(), label
        assert_untouched(promotion)
        [entry] = refusals(promotion)
        assert entry.actor == user.username and "four-eyes" in entry.reason, label


def test_the_requester_cannot_approve_through_the_admin_and_each_attempt_is_audited(requesters):
    for label, (user, promotion) in requesters.items():
        if not user.is_staff:
            continue  # the admin turns non-staff away at its door (the authorization matrix proves it)
        client = client_for(user)
        change = reverse("admin:ci_integrations_promotion_change", args=[promotion.pk])
        page = client.get(change).content.decode()
        assert 'name="_save"' not in page, f"{label}: the promotion admin offers a Save button"
        attempts = [
            (change, {"state": "queued"}),
            (  # an approval smuggled in through the inline formset
                change,
                {
                    "approvals-TOTAL_FORMS": "1",
                    "approvals-INITIAL_FORMS": "0",
                    "approvals-0-user": str(user.pk),
                    "approvals-0-decision": Approval.Decision.APPROVE,
                    "approvals-0-digest": promotion.digest,
                    "approvals-0-promotion": str(promotion.pk),
                },
            ),
            (
                reverse("admin:ci_integrations_approval_add"),
                {
                    "promotion": str(promotion.pk),
                    "user": str(user.pk),
                    "decision": Approval.Decision.APPROVE,
                    "digest": promotion.digest,
                },
            ),
        ]
        for n, (url, data) in enumerate(attempts, start=1):
            assert client.post(url, data).status_code == 403, f"{label}: {url} {data}"
            assert_untouched(promotion)
            entries = refusals(promotion)
            assert len(entries) == n, f"{label}: attempt {n} was not audited"
            assert entries[-1].actor == user.username and entries[-1].after["via"] == "admin"


def test_the_admin_refuses_to_change_promotions_or_add_approvals_for_anyone(world):
    """Not only the requester: no one, superusers included, records decisions in the admin."""
    root = make_user("root", staff=True, superuser=True)
    client = client_for(root)
    pending = world.pending
    change = reverse("admin:ci_integrations_promotion_change", args=[pending.pk])
    assert client.post(change, {"state": "queued"}).status_code == 403
    assert client.get(reverse("admin:ci_integrations_approval_add")).status_code == 403
    assert client.post(reverse("admin:ci_integrations_approval_add"), {"promotion": pending.pk}).status_code == 403
    assert_untouched(pending)
    assert [e.actor for e in refusals(pending)] == ["root", "root"]


def test_the_service_refuses_the_requester_in_person_and_through_a_personal_token(requesters):
    for label, (user, promotion) in requesters.items():
        token, _ = token_create(name=f"{user.username}-laptop", kind=ApiToken.Kind.PERSONAL, actor=Actor.for_user(user),
                                user=user)  # fmt: skip
        for n, actor in enumerate((Actor.for_user(user), Actor.for_token(token)), start=1):
            with pytest.raises(NotAllowed, match="four-eyes"):
                promotion_approve(promotion=promotion, actor=actor, comment="self-service")
            assert_untouched(promotion)
            entries = refusals(promotion)
            assert len(entries) == n, label
            assert entries[-1].actor == actor.label and entries[-1].after["comment"] == "self-service"


def test_after_the_requester_is_refused_someone_else_can_still_approve(requesters, world):
    user, promotion = requesters["release manager"]
    with pytest.raises(NotAllowed):
        promotion_approve(promotion=promotion, actor=Actor.for_user(user))
    other = client_for(world.requester)
    assert other.post(reverse("promotion_approve", args=[promotion.pk]), {"comment": "second pair"}).status_code == 302
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.QUEUED
    assert list(promotion.approvals.values_list("user__username", flat=True)) == [world.requester.username]
