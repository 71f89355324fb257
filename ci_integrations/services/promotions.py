"""Promotions: request, cancel, retry and roll back; the record keeping every stage of a promotion shares.

Every state change is a conditional update or happens under a row lock (services/locks.py gives the order), and
writes its audit entry in the same transaction. Deciding (approve, reject) is in services/approvals.py. A promotion
that may go ahead is queued: its copy job
(services/copying.py) is enqueued after commit with the promotion id only, and the reconciler (services/reconciler.py)
re-enqueues whatever Redis lost.

May import: models, policy, arrivals, locks, audit, freeze, emergency_stop, webhooks, background.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from ci_integrations.input_rules import TAG
from ci_integrations.models import Arrival, Artifact, Bucket, Promotion, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import atomic_keeping_refusals, audit_record, audit_refusal
from ci_integrations.services.background import RUN_PROMOTION
from ci_integrations.services.emergency_stop import emergency_stop_active, emergency_stop_waiting_text
from ci_integrations.services.errors import (
    InvalidInput,
    NotAllowed,
    PolicyViolation,
    ServiceError,
    StateConflict,
)
from ci_integrations.services.freeze import freeze_blocks
from ci_integrations.services.locks import artifact_locked
from ci_integrations.services.notifications import notify_promotion
from ci_integrations.services.policy import (
    FREEZE,
    REQUEST_SCOPE,
    ci_token_owner_refusal,
    promotion_evaluate,
    promotion_reevaluate,
)
from ci_integrations.services.teams import may_request_for

logger = logging.getLogger(__name__)

State = Promotion.State
AUTO = Actor.system("auto-promote")
SYSTEM_TOKEN_APPROVALS = 2  # what a request by a token that no person owns needs, where four-eyes applies
SCHEDULE_HORIZON = timedelta(days=366)  # how far ahead a promotion may be scheduled


def promotion_snapshot(p: Promotion) -> dict:
    """What an audit entry records of a promotion."""
    return {
        "state": p.state,
        "digest": p.digest,
        "tag": p.tag,
        "to": p.to_bucket.env,
        "from": p.from_bucket.env if p.from_bucket_id else None,
        "kind": p.kind,
    }


def log_line(text: str) -> str:
    """One timestamped line of a promotion's log."""
    return f"{timezone.now().isoformat(timespec='seconds')} {text}\n"


def promotion_log_append(pk: int, text: str, **fields) -> int:
    """Append a line to a promotion's log (and set `fields`) in one UPDATE, without reading the row."""
    return Promotion.objects.filter(pk=pk).update(log=Concat(F("log"), Value(log_line(text))), **fields)


def promotion_queue(p: Promotion) -> None:
    """Mark `p` queued with a fresh job id and enqueue its copy once the transaction commits."""
    p.state = State.QUEUED
    p.queued_at = timezone.now()
    p.job_id = RUN_PROMOTION.new_job_id(p.pk)
    RUN_PROMOTION.enqueue_on_commit(p.pk, job_id=p.job_id)


def promotion_wait_reason(p: Promotion) -> str:
    """Why `p`, which has its approvals, may not be queued at this very moment ("" when it may): its not_before
    time has not come, or the emergency stop is pulled. The rest of the policy is the scheduler's to judge again."""
    if p.not_before and p.not_before > timezone.now():
        return f"scheduled for {p.not_before.isoformat(timespec='minutes')}"
    stop = emergency_stop_active()
    return emergency_stop_waiting_text(stop) if stop else ""


def promotion_queue_or_wait(p: Promotion) -> None:
    """Queue `p` (it has its approvals) now, or leave it approved and waiting, saying why; the caller saves state,
    queued_at, job_id and waiting_for."""
    waiting = promotion_wait_reason(p)
    if waiting:
        p.state = State.APPROVED
        p.waiting_for = waiting
        p.log += log_line(f"waits: {waiting}")
        return
    p.waiting_for = ""
    promotion_queue(p)


def promotion_end(p: Promotion, state: str, log_text: str) -> None:
    """Move a locked promotion to a final state by a person's decision, with a log line."""
    p.state = state
    p.finished_at = timezone.now()
    p.log += log_line(log_text)
    p.save(update_fields=["state", "finished_at", "log", "updated_at"])


def promotion_locked(promotion: Promotion) -> Promotion:
    return (
        Promotion.objects.select_for_update(of=("self",))
        .select_related("step", "step__approver_group", "to_bucket", "from_bucket", "artifact", "integration")
        .get(pk=promotion.pk)
    )


# ---- requesting ------------------------------------------------------------------------------------------------


def promotion_request(
    *,
    artifact: Artifact,
    to_env: str,
    actor: Actor,
    tag: str | None = None,
    reason: str = "",
    freeze_override_reason: str = "",
    from_env: str | None = None,
    not_before: datetime | None = None,
) -> Promotion:
    """Request moving `artifact` into `to_env` along its workflow step.

    `from_env`, when given, must be the step's source (CI scripts name it to be sure of the route). Refused with
    PolicyViolation naming every unmet condition (the refusal is audited). With no approvals required the promotion
    is queued at once, or, with `not_before`, at that time: soak and freeze windows are judged for that moment, and
    judged again then by the scheduler.
    """
    if from_env:
        integration = artifact.integration
        step = integration.workflow.steps.filter(to_env=to_env).first() if integration.workflow_id else None
        if step is not None and step.from_env != from_env:
            raise InvalidInput(
                f"the workflow moves into {to_env!r} from {step.from_env!r}, not from {from_env!r}",
                details={"from_env": f"expected {step.from_env}"},
            )
    return _request(
        artifact=artifact,
        to_env=to_env,
        actor=actor,
        tag=tag,
        reason=reason,
        freeze_override_reason=freeze_override_reason,
        rollback=False,
        not_before=_checked_not_before(not_before),
    )


def _checked_not_before(not_before: datetime | None) -> datetime | None:
    """A scheduled time must say its time zone and lie ahead, within SCHEDULE_HORIZON; a time in the past minute
    (the clock moved while the request travelled) means now."""
    if not_before is None:
        return None
    if timezone.is_naive(not_before):
        raise InvalidInput(
            "not_before must carry a UTC offset, like 2027-01-05T09:00+01:00", details={"not_before": "no offset"}
        )
    now = timezone.now()
    if not_before < now - timedelta(minutes=1):
        raise InvalidInput(f"not_before {not_before.isoformat()} is in the past", details={"not_before": "in the past"})
    if not_before > now + SCHEDULE_HORIZON:
        raise InvalidInput(
            f"not_before may be at most {SCHEDULE_HORIZON.days} days ahead", details={"not_before": "too far ahead"}
        )
    return not_before if not_before > now else None


def _request(
    *, artifact, to_env, actor, tag, reason, freeze_override_reason, rollback, on_behalf_of=None, not_before=None
) -> Promotion:
    """Shared by requests, rollbacks and auto-promotions. `on_behalf_of` is the person an auto-promotion counts as
    requested by (whoever caused it); otherwise the actor's requesting person (a CI token's owner)."""
    if tag is not None and not TAG.is_valid(tag):
        raise InvalidInput(TAG.problem(tag), details={"tag": "invalid"})
    if actor.is_ci_token and freeze_override_reason:
        raise NotAllowed("CI tokens cannot override freeze windows")
    with atomic_keeping_refusals():
        # One request at a time per artifact, so "no other open promotion" cannot be raced.
        artifact = artifact_locked(artifact.pk)
        ev = promotion_evaluate(
            artifact=artifact,
            to_env=to_env,
            actor=actor,
            rollback=rollback,
            tag=tag,
            freeze_override_reason=freeze_override_reason,
            at=not_before,
        )
        if not ev.ok:
            audit_refusal(
                PolicyViolation(ev.unmet),
                actor=actor,
                action="promotion.refused",
                obj=artifact,
                environment=to_env,
                after={
                    "to": to_env,
                    "digest": artifact.digest,
                    "kind": "rollback" if rollback else "promotion",
                    "unmet": ev.unmet,
                },
                reason=reason,
            )
        p = Promotion.objects.create(
            integration=artifact.integration,
            kind=Promotion.Kind.ROLLBACK if rollback else Promotion.Kind.PROMOTION,
            step=ev.step,
            artifact=artifact,
            digest=artifact.digest,
            from_bucket=ev.from_bucket,
            to_bucket=ev.to_bucket,
            source_tag=ev.source_tag,
            tag=ev.tag,
            required_approvals=_approvals_needed(ev, actor),
            requested_by=actor.person,
            on_behalf_of=on_behalf_of if on_behalf_of is not None else _on_behalf_of(actor),
            requested_by_label=actor.label,
            ci_identity=actor.token.ci_identity if actor.is_ci_token else {},
            reason=reason or "",
            freeze_override_reason=freeze_override_reason.strip() if ev.freeze_overridden else "",
            not_before=not_before,
            log=log_line(f"requested by {actor.label}"),
        )
        audit_record(
            actor=actor,
            action="promotion.rollback_requested" if rollback else "promotion.requested",
            obj=p,
            after={
                **promotion_snapshot(p),
                "required_approvals": p.required_approvals,
                "on_behalf_of": p.on_behalf_of.get_username() if p.on_behalf_of_id else None,
                **({"ci_identity": p.ci_identity} if p.ci_identity else {}),
                "not_before": p.not_before.isoformat() if p.not_before else None,
                "conditions": [c.message for c in ev.conditions],
            },
            reason=reason or "",
        )
        if ev.freeze_overridden:
            audit_record(
                actor=actor,
                action="promotion.freeze_overridden",
                obj=p,
                reason=p.freeze_override_reason,
                after={"env": to_env},
            )
        notify_promotion(promotion=p, event="requested", actor=actor)
        if p.required_approvals > 0:
            notify_promotion(promotion=p, event="approval_needed", actor=actor)
        if p.required_approvals == 0:
            promotion_queue_or_wait(p)
            p.save(update_fields=["state", "queued_at", "job_id", "waiting_for", "log"])
            audit_record(
                actor=actor,
                action="promotion.queued",
                obj=p,
                before={"state": State.PENDING_APPROVAL},
                after={"state": p.state, "job_id": p.job_id, "waiting_for": p.waiting_for},
                reason="no approvals required",
            )
    return p


def _on_behalf_of(actor: Actor):
    """The person a request by `actor` counts as besides `requested_by`: a CI token's owner, or the maker of a system
    token. None for people themselves (they are `requested_by`) and for the system."""
    return actor.requesting_person if actor.is_ci_token else None


def _approvals_needed(ev, actor: Actor) -> int:
    """The step's approvals; a system token's request needs two where four-eyes applies, since no single person
    answers for it."""
    needed = ev.required_approvals
    four_eyes = needed >= 1 and not (ev.step is not None and ev.step.self_approval)
    return max(needed, SYSTEM_TOKEN_APPROVALS) if four_eyes and actor.is_system_token else needed


def promotions_auto_request(
    *, artifact: Artifact, from_bucket: Bucket, cause=None, reason: str = ""
) -> list[Promotion]:
    """Steps marked auto_promote request themselves once the artifact is in their source bucket and passes policy.

    Called on every event that may make it pass (an arrival, a check report) and by the scheduler (a soak or a
    freeze ending). An artifact is auto-promoted along a step at most once: never again once any promotion of it
    into that bucket was made, whatever became of it (decided under the artifact's lock, so concurrent schedulers
    request it once). `cause` is the person whose action led here (the registration, the check report, the
    promotion that arrived): the auto-promotion counts as requested by them, so they may not approve it where
    four-eyes applies.
    """
    integration = artifact.integration
    if not integration.workflow_id:
        return []
    made = []
    steps = WorkflowStep.objects.filter(
        workflow_id=integration.workflow_id, from_env=from_bucket.env, auto_promote=True
    )
    for step in steps:
        if auto_promotion_done(artifact=artifact, integration=integration, to_env=step.to_env):
            continue
        ev = promotion_evaluate(artifact=artifact, to_env=step.to_env, actor=AUTO)
        if not ev.ok:
            continue
        try:
            with transaction.atomic():
                artifact_locked(artifact.pk)
                if auto_promotion_done(artifact=artifact, integration=integration, to_env=step.to_env):
                    continue
                made.append(
                    _request(
                        artifact=artifact,
                        to_env=step.to_env,
                        actor=AUTO,
                        tag=None,
                        reason=reason or f"auto-promotion after arrival in {from_bucket.env}",
                        freeze_override_reason="",
                        rollback=False,
                        on_behalf_of=cause,
                    )
                )
        except ServiceError as exc:
            logger.info("auto-promotion of %s into %s skipped: %s", artifact, step.to_env, exc.message)
    return made


def auto_promotion_done(*, artifact: Artifact, integration, to_env: str) -> bool:
    """Whether the artifact was ever in `to_env`, or any promotion of it into there was made: auto-promotion never
    repeats itself (a failed, rejected or cancelled one is for people to take up again)."""
    return (
        Arrival.objects.filter(bucket__integration=integration, bucket__env=to_env, artifact=artifact).exists()
        or Promotion.objects.filter(
            artifact=artifact, to_bucket__integration=integration, to_bucket__env=to_env
        ).exists()
    )


def bucket_rollback(
    *, bucket: Bucket, to_arrival: Arrival, actor: Actor, reason: str, freeze_override_reason: str = ""
) -> Promotion:
    """Put an earlier arrival's artifact back into `bucket`, as a promotion of kind rollback.

    It follows the approval policy of the step into the bucket, with the step's rollback approval count. During a
    freeze window, someone with override_freezewindow may roll back with a freeze override reason (audited), as for
    promotion_request.
    """
    if to_arrival.bucket_id != bucket.pk:
        raise InvalidInput(f"arrival #{to_arrival.pk} is not an arrival in bucket {bucket}")
    if not (reason or "").strip():
        raise InvalidInput("a rollback needs a reason", details={"reason": "required"})
    bucket.refresh_from_db(fields=["current_arrival"])
    current = bucket.current_arrival
    if current is not None and current.artifact_id == to_arrival.artifact_id:
        raise StateConflict(f"bucket {bucket} already runs {to_arrival.artifact.short_digest}")
    return _request(
        artifact=to_arrival.artifact,
        to_env=bucket.env,
        actor=actor,
        tag=to_arrival.tag,
        reason=reason.strip(),
        freeze_override_reason=freeze_override_reason or "",
        rollback=True,
    )


def promotion_frozen(p: Promotion) -> list[str]:
    """Why `p` may not be queued at its time (now, or its not_before when later): its target is frozen and its
    request did not override the freeze."""
    if p.freeze_override_reason:
        return []
    at = p.not_before if p.not_before and p.not_before > timezone.now() else None
    blocks = freeze_blocks(integration=p.integration, env=p.to_bucket.env, at=at)
    if not blocks:
        return []
    names = ", ".join(block.message for block in blocks)
    return [f"freeze window: {p.to_bucket.env} is frozen ({names}); a platform admin may override with a reason"]


# ---- cancelling and retrying -----------------------------------------------------------------------------------


def _may_manage(p: Promotion, actor: Actor) -> bool:
    """The requester, approvers and admins may cancel; requesters and approvers may retry."""
    if actor.is_ci_token:
        token = actor.token
        return (
            REQUEST_SCOPE in (token.scopes or [])
            and token.integrations.filter(pk=p.integration_id).exists()
            and ci_token_owner_refusal(token, "ci_integrations.request_promotion") is None
        )
    if actor.user is None:
        return actor.token is None  # the system itself
    user = actor.person
    if user is None:
        return False
    if p.integration.team_id is not None:
        return p.requested_by_id == user.pk or user.is_staff or may_request_for(user, p.integration)
    return (
        p.requested_by_id == user.pk
        or user.is_staff
        or user.has_perm("ci_integrations.approve_promotion")
        or user.has_perm("ci_integrations.request_promotion")
    )


def promotion_cancel(*, promotion: Promotion, actor: Actor, reason: str = "") -> Promotion:
    """Cancel a promotion that has not finished (pending approval, queued or running). Audited.

    A running copy sees the cancel at its next heartbeat and stops (between blobs and between chunks); it never
    writes the tag afterwards. Once it has gone to write the tag (result_digest set), it is too late.
    """
    with transaction.atomic():
        p = promotion_locked(promotion)
        if not _may_manage(p, actor):
            raise NotAllowed(f"{actor.label} may not cancel promotion #{p.pk}")
        if not p.is_cancellable:
            raise StateConflict(f"promotion #{p.pk} is {p.state}; only promotions not yet finished can be cancelled")
        if p.state == State.RUNNING and p.result_digest:
            raise StateConflict(
                f"promotion #{p.pk} is writing its tag in {p.to_bucket.env}; it can no longer be cancelled"
            )
        before = {"state": p.state}
        promotion_end(
            p,
            State.CANCELLED,
            f"cancelled by {actor.label}" + (" while copying" if before["state"] == State.RUNNING else ""),
        )
        audit_record(
            actor=actor,
            action="promotion.cancelled",
            obj=p,
            before=before,
            after={"state": p.state},
            reason=reason or "",
        )
    return p


def promotion_retry(*, promotion: Promotion, actor: Actor) -> Promotion:
    """Queue a failed promotion again (same digest, same approvals). Audited."""
    with transaction.atomic():
        p = promotion_locked(promotion)
        if not _may_manage(p, actor):
            raise NotAllowed(f"{actor.label} may not retry promotion #{p.pk}")
        if p.state != State.FAILED:
            raise StateConflict(f"promotion #{p.pk} is {p.state}; only failed promotions can be retried")
        # The lock promotion_request holds for its own check: a request or another retry of this artifact either
        # sees this one open or is seen by it, never neither.
        artifact_locked(p.artifact_id)
        # The policy again, as at the request (a required check may have failed since), for whoever asked then.
        ev = promotion_reevaluate(promotion=p, actor=AUTO)
        unmet = [reason for reason in ev.unmet if not reason.startswith(f"{FREEZE}:")] + promotion_frozen(p)
        if unmet:
            raise PolicyViolation(unmet)
        before = {"state": p.state, "error": p.error}
        promotion_queue(p)
        p.error = ""
        p.finished_at = None
        p.blobs_done = p.bytes_done = 0
        p.log += log_line(f"retried by {actor.label}")
        p.save(
            update_fields=[
                "state",
                "queued_at",
                "job_id",
                "error",
                "finished_at",
                "blobs_done",
                "bytes_done",
                "log",
                "updated_at",
            ]
        )
        person = actor.requesting_person
        audit_record(
            actor=actor,
            action="promotion.retried",
            obj=p,
            before=before,
            after={"state": p.state, "job_id": p.job_id, "by": person.get_username() if person else None},
        )
    return p
