"""Telling people: what happened to a promotion goes to the webhooks that want it and, by email, to the people it
concerns.

This is the single place promotion events go out. It only writes rows (a WebhookDelivery per webhook, an
EmailNotification per email) in the caller's transaction and enqueues their jobs after the commit: nothing is sent
inside a request or a promotion's transaction, and a notification that cannot be recorded is logged, never raised,
so it can neither block nor fail a promotion. Email goes out only when it is on (EMAIL_HOST, or P2P_EMAIL_CONSOLE);
services/emails.py finds the recipients and sends.

May import: models, webhooks, deliveries, audit, background.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ci_integrations.models import EmailNotification, EmergencyStop, NotificationPreference, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.background import transition
from ci_integrations.services.deliveries import EMAIL_DELIVERIES
from ci_integrations.services.errors import InvalidInput
from ci_integrations.services.webhooks import webhooks_notify, webhooks_notify_stop

logger = logging.getLogger(__name__)

# Promotion events that are emailed, and the kind of email each is (NotificationPreference.KINDS).
EMAILED_EVENTS = {
    "approval_needed": "approval_needed",
    "succeeded": "succeeded",
    "rolled_back": "succeeded",
    "failed": "failed",
    "rejected": "rejected",
    "expired": "expired",
}
REMINDER = "reminder"


def email_enabled() -> bool:
    """Whether email goes out: an SMTP server is named (EMAIL_HOST), or the console stands in for one."""
    return bool(settings.EMAIL_HOST) or bool(getattr(settings, "P2P_EMAIL_CONSOLE", False))


def _apart(what: str, send) -> None:
    """Run `send` in a savepoint of its own: if recording a notification fails, the caller's change still commits."""
    try:
        with transaction.atomic():
            send()
    except Exception:  # noqa: BLE001 - a notification must never fail the promotion it tells of
        logger.exception("could not record the %s notification; the promotion goes on without it", what)


def email_queue(*, promotion: Promotion, kind: str) -> EmailNotification | None:
    """Record an email of `kind` about `promotion` and send it after the caller's transaction commits."""
    if not email_enabled():
        return None
    email = EmailNotification.objects.create(promotion=promotion, kind=kind)
    EMAIL_DELIVERIES.enqueue_on_commit(email)
    return email


def notify_promotion(*, promotion: Promotion, event: str, actor: Actor, comment: str = "") -> None:
    """Send `event` of `promotion` to whoever listens; deliveries go out after the caller's transaction commits
    and never fail it."""
    _apart(event, lambda: webhooks_notify(promotion=promotion, event=event, actor=actor, comment=comment))
    if event in EMAILED_EVENTS:
        _apart(f"{event} email", lambda: email_queue(promotion=promotion, kind=EMAILED_EVENTS[event]))


def notify_emergency_stop(*, stop: EmergencyStop, actor: Actor) -> None:
    """Tell the system-wide webhooks that want it that the emergency stop was pulled."""
    _apart("stopped", lambda: webhooks_notify_stop(stop=stop, actor=actor))


def notify_reminders_due() -> int:
    """Remind approvers of promotions that have waited for them longer than P2P_REMINDER_HOURS, once each.

    The claim is a conditional update of `reminded_at`, so several scheduler passes at once send one reminder."""
    if not email_enabled():
        return 0
    due = timezone.now() - timedelta(hours=settings.P2P_REMINDER_HOURS)
    waiting = Promotion.objects.filter(
        state=Promotion.State.PENDING_APPROVAL, reminded_at__isnull=True, created_at__lte=due
    )
    reminded = 0
    for promotion in waiting.order_by("created_at")[:500]:
        with transaction.atomic():
            rows = Promotion.objects.filter(
                pk=promotion.pk, state=Promotion.State.PENDING_APPROVAL, reminded_at__isnull=True
            )
            if not transition(rows, reminded_at=timezone.now()):
                continue  # another pass reminded, or someone decided
            _apart("reminder email", lambda p=promotion: email_queue(promotion=p, kind=REMINDER))
        reminded += 1
    return reminded


def notifications_reconcile() -> int:
    """Re-enqueue emails whose job Redis lost (webhook deliveries are reconciled by webhooks.py)."""
    return EMAIL_DELIVERIES.reconcile()


def notification_preferences_of(user) -> list[str]:
    """The kinds of email `user` turned off."""
    preference = NotificationPreference.objects.filter(user=user).first()
    return list(preference.muted) if preference else []


def notification_preferences_set(*, user, muted: list[str]) -> list[str]:
    """Turn off the kinds of email in `muted` for `user` (and every other kind on). Not audited: it concerns only
    what the person is told, never what happens."""
    unknown = sorted(set(muted) - set(NotificationPreference.KINDS))
    if unknown:
        raise InvalidInput(
            f"unknown kinds of email {unknown}: use {NotificationPreference.KINDS}", details={"muted": unknown}
        )
    muted = [kind for kind in NotificationPreference.KINDS if kind in muted]
    NotificationPreference.objects.update_or_create(user=user, defaults={"muted": muted})
    return muted
