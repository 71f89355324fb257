"""The scheduler: what time alone makes happen, judged again every P2P_SCHEDULER_SECONDS by every worker.

- auto steps whose policy has come to pass with no event to trigger them (a soak ended, a freeze ended, an allow
  window opened) are requested, as `auto-promote`, once;
- approved promotions that waited (their not_before time, a freeze window, the emergency stop) are queued when
  their policy allows, and otherwise say why they still wait;
- promotions pending approval for longer than their step's approval_timeout expire.

Every change is a conditional update or happens under a row lock, so several workers running it at once are
harmless: one of them wins each change.

May import: models, promotions, policy, emergency_stop, audit, background, webhooks, notifications.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from ci_integrations.models import Bucket, Promotion, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import RUN_PROMOTION, transition
from ci_integrations.services.notifications import notify_promotion, notify_reminders_due
from ci_integrations.services.policy import FREEZE, STOP, promotion_reevaluate
from ci_integrations.services.promotions import (
    AUTO,
    auto_promotion_done,
    log_line,
    promotion_frozen,
    promotion_wait_reason,
    promotions_auto_request,
)

logger = logging.getLogger(__name__)

State = Promotion.State
SCHEDULER = Actor.system("scheduler")
DEFAULT_APPROVAL_TIMEOUT = timedelta(days=7)


def scheduler_tick() -> dict[str, int]:
    """One pass of everything time makes happen; returns how many of each it did."""
    return {
        "auto_requested": auto_promotions_due(),
        "queued": waiting_promotions_release(),
        "expired": approvals_expire(),
        "reminded": notify_reminders_due(),
    }


# ---- auto steps ---------------------------------------------------------------------------------------------------


def auto_promotions_due() -> int:
    """Request the auto steps whose source bucket's current artifact now passes their policy. What a bucket runs is
    what soaks there: an artifact replaced before its soak ended is not promoted on its own."""
    made = 0
    routes = WorkflowStep.objects.filter(auto_promote=True).values_list("workflow_id", "from_env").distinct()
    for workflow_id, from_env in routes:
        buckets = Bucket.objects.filter(
            integration__workflow_id=workflow_id, env=from_env, current_arrival__isnull=False
        ).select_related("integration", "current_arrival__artifact", "current_arrival__promotion")
        for bucket in buckets:
            arrival = bucket.current_arrival
            artifact = arrival.artifact
            steps = WorkflowStep.objects.filter(workflow_id=workflow_id, from_env=from_env, auto_promote=True)
            if all(
                auto_promotion_done(artifact=artifact, integration=bucket.integration, to_env=step.to_env)
                for step in steps
            ):
                continue
            cause = None
            if arrival.promotion is not None:
                cause = arrival.promotion.on_behalf_of or arrival.promotion.requested_by
            made += len(
                promotions_auto_request(
                    artifact=artifact,
                    from_bucket=bucket,
                    cause=cause,
                    reason=f"auto-promotion: its policy came to pass in {from_env} (scheduler)",
                )
            )
    return made


# ---- approved promotions that wait --------------------------------------------------------------------------------


def _still_waits(p: Promotion) -> str:
    """Why `p` may not be queued now ("" when it may): its time, the stop, a freeze, or its policy."""
    waiting = promotion_wait_reason(p)
    if waiting:
        return waiting
    ev = promotion_reevaluate(promotion=p, actor=AUTO)
    # The request's freeze override still holds; the stop is named by promotion_wait_reason.
    unmet = [r for r in ev.unmet if not r.startswith((f"{FREEZE}:", f"{STOP}:"))] + promotion_frozen(p)
    return "; ".join(unmet)


def waiting_promotions_release() -> int:
    """Queue approved promotions whose moment has come and whose policy allows; the others say why they wait."""
    queued = 0
    now = timezone.now()
    waiting = Promotion.objects.filter(state=State.APPROVED).select_related(
        "to_bucket", "from_bucket", "artifact__integration", "integration__team", "step"
    )
    for p in waiting.order_by("not_before", "pk"):
        reason = _still_waits(p)
        if reason:
            if reason != p.waiting_for:
                transition(
                    Promotion.objects.filter(pk=p.pk, state=State.APPROVED),
                    waiting_for=reason,
                    log=Concat(F("log"), Value(log_line(f"waits: {reason}"))),
                )
            continue
        job_id = RUN_PROMOTION.new_job_id(p.pk)
        with transaction.atomic():
            won = transition(
                Promotion.objects.filter(pk=p.pk, state=State.APPROVED),
                state=State.QUEUED,
                queued_at=now,
                job_id=job_id,
                waiting_for="",
                log=Concat(F("log"), Value(log_line("its moment came; queued by the scheduler"))),
            )
            if not won:
                continue  # another scheduler, or a cancel, got there first
            audit_record(
                actor=SCHEDULER,
                action="promotion.queued",
                obj=p,
                before={"state": State.APPROVED, "waiting_for": p.waiting_for},
                after={"state": State.QUEUED, "job_id": job_id},
                reason="its policy allows it now",
            )
            RUN_PROMOTION.enqueue_on_commit(p.pk, job_id=job_id)
        queued += 1
    return queued


# ---- approvals that never came ------------------------------------------------------------------------------------


def approval_timeout(step: WorkflowStep | None) -> timedelta:
    """How long a promotion along `step` may wait for its approvals."""
    if step is not None and step.approval_timeout:
        return step.approval_timeout
    return DEFAULT_APPROVAL_TIMEOUT


def approvals_expire() -> int:
    """Expire promotions pending approval for longer than their step allows; audited, and the requester is told."""
    expired = 0
    now = timezone.now()
    pending = Promotion.objects.filter(state=State.PENDING_APPROVAL).select_related(
        "step", "to_bucket", "from_bucket", "integration", "requested_by"
    )
    for p in pending.order_by("created_at"):
        timeout = approval_timeout(p.step)
        if p.created_at + timeout > now:
            continue
        message = f"no quorum of approvals within {_words(timeout)}"
        with transaction.atomic():
            won = transition(
                Promotion.objects.filter(pk=p.pk, state=State.PENDING_APPROVAL),
                state=State.EXPIRED,
                finished_at=now,
                error=message,
                log=Concat(F("log"), Value(log_line(f"expired: {message}"))),
            )
            if not won:
                continue
            p.refresh_from_db()
            audit_record(
                actor=SCHEDULER,
                action="promotion.expired",
                obj=p,
                before={"state": State.PENDING_APPROVAL},
                after={"state": State.EXPIRED, "approvals": p.approvals_given, "required": p.required_approvals},
                reason=message,
            )
            notify_promotion(promotion=p, event="expired", actor=SCHEDULER)
        expired += 1
    return expired


def _words(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def scheduler_interval() -> float:
    """Seconds between passes (P2P_SCHEDULER_SECONDS)."""
    return float(settings.P2P_SCHEDULER_SECONDS)
