"""Emails about promotions: who they go to, what they say, and sending them (from the email's RQ job only).

- `approval_needed` and `reminder`: every person who may approve the promotion now (services/approvals.py decides,
  so approver groups, team release managers and four-eyes hold here as they do on the Approve button): never the
  requester;
- `succeeded`, `failed`, `rejected`, `expired`: the requester (and the person a CI token or an auto-promotion
  requested it for).

Nobody gets a kind they turned off (NotificationPreference), nor anything without an email address. Each message
has a plain text and an HTML part and links to the promotion's page (P2P_BASE_URL). The first attempt fixes the
recipients; each is sent their own message once, so a retry after a failure reaches only those not yet sent to.

May import: models, approvals, deliveries, links.
"""

from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db.models import Q
from django.template.loader import render_to_string

from ci_integrations.models import EmailNotification, NotificationPreference, Promotion
from ci_integrations.registry.errors import cut, redact
from ci_integrations.services.approvals import promotion_approval_block
from ci_integrations.services.deliveries import EMAIL_DELIVERIES
from ci_integrations.services.links import portal_url

logger = logging.getLogger(__name__)

FOR_APPROVERS = {"approval_needed", "reminder"}
SUBJECTS = {
    "approval_needed": "Approval needed: {what}",
    "reminder": "Reminder: {what} still waits for your approval",
    "succeeded": "Promoted: {what}",
    "failed": "Promotion failed: {what}",
    "rejected": "Promotion rejected: {what}",
    "expired": "Promotion request expired: {what}",
}


def _muted(users, kind: str) -> set[int]:
    return {
        preference.user_id
        for preference in NotificationPreference.objects.filter(user__in=users)
        if kind in (preference.muted or [])
    }


def email_recipients(promotion: Promotion, kind: str) -> list[str]:
    """The addresses an email of `kind` about `promotion` goes to, each once, sorted."""
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    if kind in FOR_APPROVERS:
        requesters = [pk for pk in (promotion.requested_by_id, promotion.on_behalf_of_id) if pk]
        candidates = [
            user
            for user in users.exclude(pk__in=requesters)
            # A freeze holding the approval back still leaves the person one who may approve it.
            if (block := promotion_approval_block(promotion=promotion, user=user)) is None or block.kind == "freeze"
        ]
    else:
        candidates = list(users.filter(Q(pk=promotion.requested_by_id) | Q(pk=promotion.on_behalf_of_id)))
    muted = _muted(candidates, kind)
    return sorted({user.email for user in candidates if user.pk not in muted})


def email_render(promotion: Promotion, kind: str) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of an email of `kind` about `promotion`."""
    what = f"{promotion.integration.name} {promotion.tag} → {promotion.to_bucket.env}"
    context = {
        "kind": kind,
        "promotion": promotion,
        "what": what,
        "url": portal_url("promotion", promotion.pk),
        "preferences_url": portal_url("notification_preferences"),
        "from_env": promotion.from_bucket.env if promotion.from_bucket_id else "",
    }
    subject = SUBJECTS[kind].format(what=what)
    text = render_to_string("ci_integrations/email/promotion.txt", context)
    html = render_to_string("ci_integrations/email/promotion.html", context)
    return subject, text, html


def email_send(*, email_id: int) -> None:
    """One attempt at an email; raises DeliveryFailed (so RQ retries) if any recipient could not be sent to."""
    email = EmailNotification.objects.filter(pk=email_id).first()
    if email is None or email.delivered_at is not None or email.given_up_at is not None:
        return
    promotion = Promotion.objects.select_related("integration", "to_bucket", "from_bucket", "step").get(
        pk=email.promotion_id
    )
    recipients = email.recipients
    if recipients is None:
        recipients = email_recipients(promotion, email.kind)
        EmailNotification.objects.filter(pk=email_id).update(recipients=recipients)
    subject, text, html = email_render(promotion, email.kind)
    sent_to, error = list(email.sent_to), ""
    for address in recipients:
        if address in sent_to:
            continue
        message = EmailMultiAlternatives(subject=subject, body=text, to=[address])
        message.attach_alternative(html, "text/html")
        try:
            message.send()
        except Exception as exc:  # noqa: BLE001 - SMTP and socket errors alike: retried, then given up
            error = cut(redact(f"{address}: {exc.__class__.__name__}: {exc}"))
            break
        sent_to.append(address)
    EMAIL_DELIVERIES.attempted(email_id, error=error, sent_to=sent_to)
