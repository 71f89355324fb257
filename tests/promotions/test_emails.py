"""Emails about promotions, sent by RQ jobs through a real SMTP server (aiosmtpd) that the tests read."""

from datetime import timedelta

import pytest
from django.utils import timezone

from ci_integrations.models import EmailNotification, Promotion
from ci_integrations.services.approvals import promotion_reject
from ci_integrations.services.notifications import notification_preferences_set, notify_reminders_due
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.scheduler import approvals_expire
from tests.promotions.conftest import place
from tests.support.smtp_server import SmtpServer

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
BASE = "https://p2p.example.com"


@pytest.fixture
def smtp(settings):
    server = SmtpServer()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = server.host, server.port
    settings.EMAIL_USE_TLS = False
    settings.DEFAULT_FROM_EMAIL = "P2P Portal <p2p@example.com>"
    settings.P2P_BASE_URL = BASE
    settings.P2P_EMAIL_RETRY_INTERVALS = [0, 0]
    yield server
    server.stop()


def _subject(message) -> str:
    # A long subject with non-ASCII text is folded after "Subject:"; mail readers drop the fold's space.
    return str(message["Subject"]).strip()


def _parts(message):
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return text, html


def test_everyone_who_may_approve_is_emailed_from_a_job_but_never_the_requester(world, run_worker, smtp):
    promotion = promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    assert smtp.messages == []  # nothing is sent inside the request
    run_worker()
    # The step's approver group is release-managers: alice, bob and carol; carol asked. dave and the admin may not.
    assert smtp.recipients() == ["alice@example.com", "bob@example.com"]
    (message,) = smtp.to("alice@example.com")
    assert _subject(message) == f"Approval needed: {world.integration.name} v1 → prod"
    assert message["From"] == "P2P Portal <p2p@example.com>" and message["To"] == "alice@example.com"
    text, html = _parts(message)
    link = f"{BASE}/promotions/{promotion.pk}/"
    assert "carol asks to promote" in text and link in text and "2 approvals" in text
    assert f'href="{link}"' in html and "Review and approve" in html
    email = EmailNotification.objects.get()
    assert email.kind == "approval_needed" and email.delivered_at is not None and email.attempts == 1


def test_a_person_who_turned_a_kind_off_does_not_get_it(world, run_worker, smtp):
    notification_preferences_set(user=world.bob, muted=["approval_needed"])
    promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    run_worker()
    assert smtp.recipients() == ["alice@example.com"]


def test_the_requester_hears_that_their_promotion_succeeded(world, run_worker, smtp):
    artifact = world.register("qa", "v1")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()
    assert Promotion.objects.get(pk=promotion.pk).state == Promotion.State.SUCCEEDED
    (message,) = smtp.to("alice@example.com")
    assert _subject(message).startswith("Promoted: ") and smtp.recipients() == ["alice@example.com"]
    assert artifact.digest in _parts(message)[0]


def test_the_requester_hears_of_a_rejection_and_of_an_expiry(world, run_worker, smtp):
    rejected = promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    promotion_reject(promotion=rejected, actor=world.actor(world.alice), comment="not on a Friday")
    expired = promotion_request(artifact=place(world, "staging", "v2"), to_env="prod", actor=world.actor(world.carol))
    Promotion.objects.filter(pk=expired.pk).update(created_at=timezone.now() - timedelta(days=8))
    assert approvals_expire() == 1
    smtp.messages.clear()
    EmailNotification.objects.filter(kind="approval_needed").delete()
    run_worker()
    subjects = sorted(_subject(message).split(":")[0] for message in smtp.to("carol@example.com"))
    assert subjects == ["Promotion rejected", "Promotion request expired"]
    assert smtp.recipients() == ["carol@example.com", "carol@example.com"]


def test_approvers_are_reminded_once_after_the_reminder_hours(world, run_worker, smtp, settings):
    settings.P2P_REMINDER_HOURS = 24
    promotion = promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    run_worker()
    smtp.messages.clear()
    Promotion.objects.filter(pk=promotion.pk).update(created_at=timezone.now() - timedelta(hours=23))
    assert notify_reminders_due() == 0
    Promotion.objects.filter(pk=promotion.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert notify_reminders_due() == 1
    assert notify_reminders_due() == 0  # once
    run_worker()
    assert smtp.recipients() == ["alice@example.com", "bob@example.com"]
    assert _subject(smtp.to("bob@example.com")[0]).startswith("Reminder: ")
    assert Promotion.objects.get(pk=promotion.pk).reminded_at is not None


def test_a_mail_server_that_refuses_never_fails_the_promotion_and_the_email_is_given_up(world, run_worker, settings):
    server = SmtpServer(refuse_with="554 5.7.1 relay denied")
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = server.host, server.port
        settings.P2P_EMAIL_RETRY_INTERVALS = [0, 0]
        promotion = promotion_request(
            artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice)
        )
        run_worker()
    finally:
        server.stop()
    assert Promotion.objects.get(pk=promotion.pk).state == Promotion.State.SUCCEEDED
    email = EmailNotification.objects.get(kind="succeeded")
    assert email.attempts == 3 and email.delivered_at is None and email.given_up_at is not None
    assert "relay denied" in email.error and email.sent_to == []


def test_without_an_email_host_no_email_is_made(world, run_worker, settings):
    settings.EMAIL_HOST = ""
    settings.P2P_EMAIL_CONSOLE = False
    promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    assert not EmailNotification.objects.exists()
