"""Approvals: approving and rejecting a promotion, with four-eyes, approver groups and the quorum.

One row lock per decision, so concurrent clicks give one state change, one job and one audit entry. A refusal is
audited and raised after the commit. The approval that completes the quorum queues the copy.

May import: models, promotions (the promotion's record keeping), audit, webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass

from ci_integrations.models import Approval, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import atomic_keeping_refusals, audit_record, audit_refusal
from ci_integrations.services.errors import NotAllowed, PolicyViolation, ServiceError, StateConflict
from ci_integrations.services.notifications import notify_promotion
from ci_integrations.services.promotions import (
    log_line,
    promotion_end,
    promotion_frozen,
    promotion_locked,
    promotion_queue_or_wait,
)
from ci_integrations.services.teams import is_release_manager, sees_integration

State = Promotion.State


@dataclass(frozen=True)
class ApprovalBlock:
    """Why a person may not decide on a promotion now.

    `kind` is "forbidden" (who they are), "state" (the promotion is past deciding, or they decided already) or
    "freeze" (a freeze window holds the approval that would queue the copy: rejecting is still possible).
    """

    kind: str
    message: str

    def error(self) -> ServiceError:
        if self.kind == "state":
            return StateConflict(self.message)
        if self.kind == "freeze":
            return PolicyViolation([self.message])
        return NotAllowed(self.message)


def _block(p: Promotion, actor: Actor, decision: str) -> ApprovalBlock | None:
    """Why `actor` may not decide on `p` (who they are, or its state), or None."""
    verb = "approve" if decision == Approval.Decision.APPROVE else "reject"
    if actor.is_ci_token:
        return ApprovalBlock("forbidden", f"CI tokens cannot {verb} promotions")
    user = actor.person
    if user is None:
        return ApprovalBlock("forbidden", f"only signed-in people can {verb} promotions")
    if p.state != State.PENDING_APPROVAL:
        done = "approved" if decision == Approval.Decision.APPROVE else "rejected"
        return ApprovalBlock("state", f"promotion #{p.pk} is {p.state}; only promotions pending approval can be {done}")
    group = p.step.approver_group if p.step_id else None
    if p.step_id and p.step.approvers_from_team:
        if not is_release_manager(user, p.integration):
            team = f"team {p.integration.team.name!r}" if p.integration.team_id else "the integration's team"
            return ApprovalBlock(
                "forbidden", f"only release managers of {team} may {verb} promotions into {p.to_bucket.env}"
            )
    elif not sees_integration(user, p.integration):
        return ApprovalBlock("forbidden", f"{user.get_username()} is not in team {p.integration.team.name!r}")
    elif group is not None:
        if not user.groups.filter(pk=group.pk).exists():
            return ApprovalBlock(
                "forbidden", f"only members of {group.name!r} may {verb} promotions into {p.to_bucket.env}"
            )
    elif not user.has_perm("ci_integrations.approve_promotion"):
        return ApprovalBlock(
            "forbidden", f"{user.get_username()} may not {verb} promotions (needs the approve_promotion permission)"
        )
    if (
        decision == Approval.Decision.APPROVE
        and user.pk in (p.requested_by_id, p.on_behalf_of_id)
        and not (p.step_id and p.step.self_approval)
    ):
        if p.requested_by_id == user.pk:
            how = "requested this promotion"
        elif p.ci_identity:
            how = "triggered the CI run that requested it"
        else:
            how = "own the CI token that requested it"
        return ApprovalBlock("forbidden", f"four-eyes: you {how}, so someone else must approve it")
    if Approval.objects.filter(promotion=p, user=user).exists():
        return ApprovalBlock("state", f"{user.get_username()} has already decided on promotion #{p.pk}")
    return None


def _approval_block(p: Promotion, actor: Actor) -> ApprovalBlock | None:
    """_block for approving, plus the freeze window that holds the approval completing the quorum (and so queueing
    the copy): a freeze that began after the request."""
    blocked = _block(p, actor, Approval.Decision.APPROVE)
    if blocked is not None:
        return blocked
    unmet = promotion_frozen(p)
    if unmet and p.approvals_given + 1 >= p.required_approvals:
        return ApprovalBlock("freeze", unmet[0])
    return None


def promotion_approval_block(*, promotion: Promotion, user) -> ApprovalBlock | None:
    """Why `user` cannot approve `promotion` now, or None if they can (for the UI to show or hide the button)."""
    return _approval_block(promotion, Actor.for_user(user))


def promotion_approve(*, promotion: Promotion, actor: Actor, comment: str = "") -> Promotion:
    """Approve for the promotion's digest. The approval that completes the quorum queues the copy job.

    Refusals (CI token, approver group, four-eyes, a freeze) raise and are audited as promotion.approve_refused;
    a promotion already decided raises StateConflict.
    """
    return _decide(promotion, actor, comment, Approval.Decision.APPROVE)


def promotion_reject(*, promotion: Promotion, actor: Actor, comment: str = "") -> Promotion:
    """Reject: the request ends. Same rights as approving (four-eyes does not apply to saying no)."""
    return _decide(promotion, actor, comment, Approval.Decision.REJECT)


def _decide(promotion: Promotion, actor: Actor, comment: str, decision: str) -> Promotion:
    verb = "approve" if decision == Approval.Decision.APPROVE else "reject"
    comment = (comment or "").strip()
    with atomic_keeping_refusals():
        # The row lock serialises decisions: concurrent clicks give one state change, one job, one audit entry.
        p = promotion_locked(promotion)
        if decision == Approval.Decision.APPROVE:
            blocked = _approval_block(p, actor)
        else:
            blocked = _block(p, actor, decision)
        if blocked is not None and blocked.kind == "state":
            raise blocked.error()
        if blocked is not None:
            audit_refusal(
                blocked.error(),
                actor=actor,
                action=f"promotion.{verb}_refused",
                obj=p,
                reason=blocked.message,
                after={"state": p.state, "digest": p.digest, "comment": comment},
            )
        Approval.objects.create(promotion=p, user=actor.user, decision=decision, digest=p.digest, comment=comment)
        before = {"state": p.state}
        if decision == Approval.Decision.REJECT:
            promotion_end(p, State.REJECTED, f"rejected by {actor.label}")
            audit_record(
                actor=actor,
                action="promotion.rejected",
                obj=p,
                before=before,
                after={"state": p.state, "digest": p.digest},
                reason=comment,
            )
            notify_promotion(promotion=p, event="rejected", actor=actor, comment=comment)
            return p
        given = p.approvals_given
        progress = {"approvals": given, "required": p.required_approvals, "digest": p.digest}
        if given >= p.required_approvals:
            p.log += log_line(f"approved by {actor.label} ({given}/{p.required_approvals})")
            promotion_queue_or_wait(p)
            p.save(update_fields=["state", "queued_at", "job_id", "waiting_for", "log", "updated_at"])
            audit_record(
                actor=actor,
                action="promotion.approved",
                obj=p,
                before=before,
                after={"state": p.state, "job_id": p.job_id, "waiting_for": p.waiting_for, **progress},
                reason=comment,
            )
            notify_promotion(promotion=p, event="approved", actor=actor, comment=comment)
        else:
            p.log += log_line(f"approved by {actor.label} ({given}/{p.required_approvals})")
            p.save(update_fields=["log", "updated_at"])
            audit_record(
                actor=actor,
                action="promotion.approval_recorded",
                obj=p,
                after={"state": p.state, **progress},
                reason=comment,
            )
    return p
