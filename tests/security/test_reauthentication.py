"""Approving into a step that needs two or more approvals asks for the password again when the sign-in is older than
P2P_REAUTH_MINUTES (the low finding "sessions last two weeks with no re-authentication", second half)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from ci_integrations.models import Approval, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.promotions import promotion_request
from ci_integrations.views import SIGNED_IN_AT
from tests.security.conftest import PASSWORD, client_for, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def into_prod(world):
    """A promotion into prod (two approvals by release managers), requested by a platform admin through the prod
    freeze."""
    artifact = world.place("staging", "3.0.0")
    return promotion_request(
        artifact=artifact,
        to_env="prod",
        actor=Actor.for_user(world.users["platform_admin"]),
        freeze_override_reason="hotfix",
    )


def signed_in_minutes_ago(user, minutes: int) -> Client:
    client = client_for(user)
    session = client.session
    session[SIGNED_IN_AT] = (timezone.now() - timedelta(minutes=minutes)).isoformat()
    session.save()
    return client


def approve(client: Client, promotion: Promotion, **fields):
    return client.post(reverse("promotion_approve", args=[promotion.pk]), {"comment": "ok", **fields})


def test_an_old_sign_in_must_enter_the_password_again_to_approve_into_prod(world, into_prod, settings):
    settings.P2P_REAUTH_MINUTES = 15
    approver = world.users["release_manager"]
    client = signed_in_minutes_ago(approver, 60)
    page = client.get(reverse("approval_panel", args=[into_prod.pk])).content.decode()
    assert 'name="password"' in page and "enter your password again" in page
    refused = approve(client, into_prod)
    assert refused.status_code == 200 and "Enter your password to approve." in refused.content.decode()
    assert not Approval.objects.filter(promotion=into_prod).exists()
    wrong = approve(client, into_prod, password="not it")
    assert "That is not your password." in wrong.content.decode()
    assert not Approval.objects.filter(promotion=into_prod).exists()
    assert approve(client, into_prod, password=PASSWORD).status_code == 302
    assert Approval.objects.filter(promotion=into_prod, user=approver).exists()
    # The password made the sign-in fresh: the next high-stakes approval does not ask again.
    assert (
        "enter your password again" not in client.get(reverse("approval_panel", args=[into_prod.pk])).content.decode()
    )


def test_a_recent_sign_in_approves_into_prod_without_the_password(world, into_prod):
    client = signed_in_minutes_ago(world.users["release_manager"], 5)
    assert approve(client, into_prod).status_code == 302
    assert Approval.objects.filter(promotion=into_prod).count() == 1


def test_a_step_with_one_approval_never_asks_for_the_password(world):
    client = signed_in_minutes_ago(world.users["release_manager"], 24 * 60)
    assert world.pending.required_approvals == 1
    assert approve(client, world.pending).status_code == 302
    assert Promotion.objects.get(pk=world.pending.pk).state == Promotion.State.QUEUED


def test_a_session_without_a_recorded_sign_in_counts_as_old(world, into_prod):
    client = Client()
    client.force_login(world.users["release_manager"])  # e.g. signed in through the admin's own sign-in page
    assert approve(client, into_prod).status_code == 200
    assert not Approval.objects.filter(promotion=into_prod).exists()


def test_signing_in_on_the_sign_in_page_records_the_time(world, into_prod):
    user = make_user("fresh", "release-managers")
    client = Client()
    assert client.post(reverse("login"), {"username": "fresh", "password": PASSWORD}).status_code == 302
    assert approve(client, into_prod).status_code == 302
    assert Approval.objects.filter(promotion=into_prod, user=user).exists()
