"""Workflow policy: may this artifact move into that environment now, and how many approvals does it need?

promotion_evaluate answers with every condition, met or not, so a refusal can name all of them at once and the UI
can show the same list as a preview.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from ci_integrations.models import Arrival, Artifact, Bucket, CheckResult, Promotion, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.emergency_stop import emergency_stop_banner
from ci_integrations.services.freeze import freeze_blocks
from ci_integrations.services.teams import may_request_for

REQUEST_SCOPE = "promotions:request"

# Condition names: stable words the API returns and tests look for.
STEP = "workflow step"
SOURCE = "source bucket"
CHECKS = "required checks"
SOAK = "minimum soak"
FREEZE = "freeze window"
TAG_RULE = "tag rule"
OPEN_PROMOTION = "open promotion"
PERMISSION = "permission"
ARRIVAL = "earlier arrival"
STOP = "emergency stop"


@dataclass(frozen=True)
class Condition:
    """One policy condition: its name, whether it holds, and a sentence saying why (not)."""

    name: str
    met: bool
    message: str


@dataclass
class PolicyEvaluation:
    """The policy's answer for moving one artifact into one environment."""

    artifact: Artifact
    to_env: str
    step: WorkflowStep | None = None
    from_bucket: Bucket | None = None
    to_bucket: Bucket | None = None
    tag: str = ""
    source_tag: str = ""
    conditions: list[Condition] = field(default_factory=list)
    required_approvals: int = 0
    current_target_arrival: Arrival | None = None
    freeze_overridden: bool = False
    rollback: bool = False
    # The moment the conditions are judged for: now, or a scheduled promotion's not_before.
    at: datetime | None = None

    @property
    def unmet(self) -> list[str]:
        return [f"{c.name}: {c.message}" for c in self.conditions if not c.met]

    @property
    def ok(self) -> bool:
        return all(c.met for c in self.conditions)

    def add(self, name: str, met: bool, message: str) -> None:
        self.conditions.append(Condition(name, met, message))


def actor_may_request(actor: Actor, integration) -> tuple[bool, str]:
    """Users need request_promotion; CI tokens need the promotions:request scope on this integration."""
    token = actor.token
    if actor.is_ci_token:
        if REQUEST_SCOPE not in (token.scopes or []):
            return False, f"the CI token {token.name!r} lacks the {REQUEST_SCOPE!r} scope"
        if not token.integrations.filter(pk=integration.pk).exists():
            return False, f"the CI token {token.name!r} is not scoped to integration {integration.name!r}"
        if refusal := ci_token_owner_refusal(token, "ci_integrations.request_promotion"):
            return False, refusal
        if token.owner_id and not may_request_for(token.owner, integration):
            return False, (
                f"the CI token {token.name!r} acts for {token.owner.get_username()}, who is not in team "
                f"{integration.team.name!r} of {integration.name}"
            )
        return True, f"CI token {token.name!r} has the {REQUEST_SCOPE!r} scope"
    if token is not None and token.kind == "personal" and token.scopes and REQUEST_SCOPE not in token.scopes:
        return False, f"the personal token {token.name!r} lacks the {REQUEST_SCOPE!r} scope"
    user = actor.user
    if user is None:
        if token is None:
            return True, f"{actor.label} acts for the system"
        return False, "no user behind this request"
    if not user.is_active:
        return False, f"user {user.get_username()!r} is inactive"
    if integration.team_id is not None:
        if may_request_for(user, integration):
            return True, f"{user.get_username()} may request promotions of team {integration.team.name!r}"
        return False, f"{user.get_username()} is not in team {integration.team.name!r}, which owns {integration.name}"
    if user.has_perm("ci_integrations.request_promotion"):
        return True, f"{user.get_username()} may request promotions"
    return False, f"{user.get_username()} may not request promotions (needs the request_promotion permission)"


def ci_token_owner_refusal(token, permission: str) -> str | None:
    """Why a CI token may not use `permission` now because of its owner, or None: a token never has more rights than
    its owner has at the time of use (a system token, which no person owns, has its scopes only)."""
    if not token.owner_id:
        return None
    owner = token.owner
    if not owner.is_active:
        return f"the owner of CI token {token.name!r}, {owner.get_username()}, is inactive"
    if not owner.has_perm(permission):
        return (
            f"the CI token {token.name!r} acts for {owner.get_username()}, who may not do this "
            f"(needs the {permission.split('.')[-1]} permission)"
        )
    return None


def may_override_freeze(actor: Actor) -> bool:
    return bool(actor.person and actor.person.has_perm("ci_integrations.override_freezewindow"))


def step_into(integration, to_env: str) -> WorkflowStep | None:
    if not integration.workflow_id:
        return None
    # The approver group comes along: previews show its name.
    steps = WorkflowStep.objects.select_related("approver_group")
    return steps.filter(workflow_id=integration.workflow_id, to_env=to_env).first()


def immutable_tag_holder(bucket: Bucket, tag: str, artifact: Artifact) -> Arrival | None:
    """In an immutable_tags bucket, the latest arrival that holds `tag` with another artifact (None if free)."""
    if not bucket.immutable_tags or not tag:
        return None
    latest = Arrival.objects.filter(bucket=bucket, tag=tag).select_related("artifact").order_by("-arrived_at", "-id")
    holder = latest.first()
    return holder if holder is not None and holder.artifact_id != artifact.pk else None


def promotion_evaluate(
    *,
    artifact: Artifact,
    to_env: str,
    actor: Actor,
    rollback: bool = False,
    tag: str | None = None,
    freeze_override_reason: str = "",
    exclude_promotion_id: int | None = None,
    at: datetime | None = None,
) -> PolicyEvaluation:
    """Evaluate every policy condition for moving `artifact` into `to_env` (or rolling `to_env` back to it).

    Promotions must follow the workflow step into to_env, from a source bucket that holds the artifact. Rollbacks
    return to an artifact that arrived in to_env before, so checks, soak and tag rule do not apply to them. Soak and
    freeze windows are judged at `at` (a scheduled promotion's time; now by default).
    """
    integration = artifact.integration
    at = max(at, timezone.now()) if at else timezone.now()
    ev = PolicyEvaluation(artifact=artifact, to_env=to_env, rollback=rollback, at=at)
    ev.to_bucket = (
        Bucket.objects.select_related("registry", "current_arrival__artifact")
        .filter(integration=integration, env=to_env)
        .first()
    )
    ev.step = step_into(integration, to_env)
    if ev.step is not None:
        ev.from_bucket = (
            Bucket.objects.select_related("registry").filter(integration=integration, env=ev.step.from_env).first()
        )
    if ev.to_bucket is None:
        ev.add(STEP, False, f"integration {integration.name!r} has no bucket {to_env!r}")
        return ev
    ev.current_target_arrival = ev.to_bucket.current_arrival

    allowed, why = actor_may_request(actor, integration)
    ev.add(PERMISSION, allowed, why)

    if rollback:
        earlier = Arrival.objects.filter(bucket=ev.to_bucket, artifact=artifact).order_by("-arrived_at", "-id").first()
        ev.add(
            ARRIVAL,
            earlier is not None,
            f"{artifact.short_digest} arrived in {to_env} before"
            if earlier
            else f"{artifact.short_digest} never arrived in {to_env}, so there is nothing to roll back to",
        )
        ev.tag = tag or (earlier.tag if earlier else "")
        ev.source_tag = ev.tag
        ev.required_approvals = ev.step.approvals_needed(rollback=True) if ev.step else 0
    else:
        if ev.step is None:
            workflow = integration.workflow.name if integration.workflow_id else None
            ev.add(
                STEP,
                False,
                f"no step of workflow {workflow!r} leads into {to_env!r}"
                if workflow
                else f"integration {integration.name!r} has no workflow",
            )
            return ev
        ev.add(STEP, True, f"follows {ev.step.from_env} → {ev.step.to_env}")
        ev.required_approvals = ev.step.approvals_needed(rollback=False)
        source_arrival = None
        if ev.from_bucket is None:
            ev.add(SOURCE, False, f"integration {integration.name!r} has no bucket {ev.step.from_env!r}")
        else:
            source_arrival = (
                Arrival.objects.filter(bucket=ev.from_bucket, artifact=artifact).order_by("-arrived_at", "-id").first()
            )
            ev.add(
                SOURCE,
                source_arrival is not None,
                f"{artifact.short_digest} is in {ev.from_bucket.env}"
                if source_arrival
                else f"{artifact.short_digest} has not arrived in {ev.step.from_env}; promote it there first",
            )
        ev.source_tag = source_arrival.tag if source_arrival else ""
        ev.tag = tag or ev.source_tag
        _checks(ev, artifact)
        _soak(ev, source_arrival)
        _tag_rule(ev)
        holder = immutable_tag_holder(ev.to_bucket, ev.tag, artifact)
        if holder is not None:
            ev.add(TAG_RULE, False, f"tag {ev.tag!r} is immutable in {to_env} and holds {holder.artifact.short_digest}")

    _freeze(ev, actor, freeze_override_reason)
    # Read through the cache, as the banner is (no query per evaluation): every move into queued and the copy's
    # claim ask PostgreSQL, so a stale answer here can never start a copy during a stop.
    stop = emergency_stop_banner()
    ev.add(
        STOP,
        stop is None,
        f"every promotion is stopped: {stop['reason']} (by {stop['started_by']})" if stop else "no emergency stop",
    )
    open_promotions = Promotion.objects.filter(artifact=artifact, to_bucket=ev.to_bucket, state__in=Promotion.OPEN)
    if exclude_promotion_id:
        open_promotions = open_promotions.exclude(pk=exclude_promotion_id)
    other = open_promotions.first()
    ev.add(
        OPEN_PROMOTION,
        other is None,
        f"promotion #{other.pk} of {artifact.short_digest} into {to_env} is already {other.state}"
        if other
        else "no other open promotion of this artifact into this bucket",
    )
    return ev


def promotion_reevaluate(*, promotion: Promotion, actor: Actor) -> PolicyEvaluation:
    """The policy as it stands now (or at its not_before, when later) for an existing promotion (the approval
    preview, a retry, the scheduler); the promotion itself does not count as "another open promotion"."""
    return promotion_evaluate(
        at=promotion.not_before,
        artifact=promotion.artifact,
        to_env=promotion.to_bucket.env,
        actor=actor,
        rollback=promotion.kind == Promotion.Kind.ROLLBACK,
        tag=promotion.tag,
        exclude_promotion_id=promotion.pk,
    )


def _checks(ev: PolicyEvaluation, artifact: Artifact) -> None:
    required = list(ev.step.required_checks or [])
    if not required:
        ev.add(CHECKS, True, "none required")
        return
    statuses = dict(CheckResult.objects.filter(artifact=artifact, name__in=required).values_list("name", "status"))
    missing = [name for name in required if name not in statuses]
    failed = [name for name in required if statuses.get(name) == CheckResult.Status.FAILED]
    problems = []
    if failed:
        problems.append("failed: " + ", ".join(failed))
    if missing:
        problems.append("not reported: " + ", ".join(missing))
    ev.add(CHECKS, not problems, "; ".join(problems) if problems else "passed: " + ", ".join(required))


def _soak(ev: PolicyEvaluation, source_arrival: Arrival | None) -> None:
    soak = ev.step.min_soak
    if not soak:
        ev.add(SOAK, True, "none required")
        return
    if source_arrival is None:
        ev.add(SOAK, False, f"needs {soak} in {ev.step.from_env}, and it has not arrived there")
        return
    soaked = ev.at - source_arrival.arrived_at
    if soaked >= soak:
        ev.add(SOAK, True, f"in {ev.step.from_env} for {_duration(soaked)} (needs {_duration(soak)})")
    else:
        ev.add(
            SOAK,
            False,
            f"in {ev.step.from_env} for {_duration(soaked)} only; needs {_duration(soak)} "
            f"(ready at {(source_arrival.arrived_at + soak).isoformat(timespec='seconds')})",
        )


def _tag_rule(ev: PolicyEvaluation) -> None:
    rule = ev.step.tag_rule
    if not rule:
        ev.add(TAG_RULE, True, "any tag")
        return
    try:
        matched = bool(ev.tag) and re.fullmatch(rule, ev.tag) is not None
    except re.error as exc:
        ev.add(TAG_RULE, False, f"the step's tag rule {rule!r} is not a valid expression ({exc})")
        return
    ev.add(
        TAG_RULE, matched, f"tag {ev.tag!r} matches {rule!r}" if matched else f"tag {ev.tag!r} does not match {rule!r}"
    )


def _freeze(ev: PolicyEvaluation, actor: Actor, override_reason: str) -> None:
    blocks = freeze_blocks(integration=ev.artifact.integration, env=ev.to_env, at=ev.at)
    if not blocks:
        ev.add(FREEZE, True, f"no active freeze window on {ev.to_env}")
        return
    names = ", ".join(block.message for block in blocks)
    override_reason = (override_reason or "").strip()
    if override_reason and may_override_freeze(actor):
        ev.freeze_overridden = True
        ev.add(FREEZE, True, f"{ev.to_env} is frozen ({names}); overridden by {actor.label}: {override_reason}")
    elif override_reason:
        ev.add(FREEZE, False, f"{ev.to_env} is frozen ({names}) and {actor.label} may not override freeze windows")
    else:
        ev.add(FREEZE, False, f"{ev.to_env} is frozen ({names}); a platform admin may override with a reason")


def _duration(delta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
