"""Promotions: request, approve, reject, cancel, retry, roll back, and the job that copies the image.

Every state change is a conditional update or happens under a row lock, and writes its audit entry in the same
transaction. Jobs are enqueued after commit with the promotion id only; the reconciler re-enqueues anything Redis
lost, so PostgreSQL alone says what must happen.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from ci_integrations.models import Approval, Arrival, Artifact, Bucket, Job, Promotion, WorkflowStep
from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry.refs import is_valid_tag
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import arrival_record, artifact_locked
from ci_integrations.services.audit import audit_record
from ci_integrations.services.enqueue import (
    DEFAULT_QUEUE,
    LIVE_JOB_STATUSES,
    PROMOTIONS_QUEUE,
    enqueue_on_commit,
    job_status,
    new_job_id,
)
from ci_integrations.services.errors import InvalidInput, NotAllowed, PolicyViolation, ServiceError, StateConflict
from ci_integrations.services.freeze import freeze_windows_active
from ci_integrations.services.policy import (  # noqa: F401 - re-exported for callers of this module
    Condition,
    PolicyEvaluation,
    actor_may_request,
    immutable_tag_holder,
    promotion_evaluate,
)
from ci_integrations.services.secrets import CredentialsUnreadable
from ci_integrations.services.webhooks import webhooks_notify, webhooks_reconcile

logger = logging.getLogger(__name__)

State = Promotion.State
WORKER = Actor.system("p2p-worker")
RECONCILER = Actor.system("reconciler")
AUTO = Actor.system("auto-promote")
# Keys for pg_advisory_lock(namespace, bucket id): one copy into a bucket at a time.
BUCKET_LOCK_NAMESPACE = 0x50325042  # "P2PB"
PROGRESS_EVERY = 1.0  # seconds between progress/heartbeat writes
MAX_ATTEMPTS = 5  # a promotion whose worker keeps dying is failed rather than re-run for ever


def _copy_retry_delays() -> list[float]:
    return list(getattr(settings, "P2P_COPY_RETRY_DELAYS", [2.0, 8.0]))


def _snapshot(p: Promotion) -> dict:
    return {
        "state": p.state,
        "digest": p.digest,
        "tag": p.tag,
        "to": p.to_bucket.env,
        "from": p.from_bucket.env if p.from_bucket_id else None,
        "kind": p.kind,
    }


def _log_line(text: str) -> str:
    return f"{timezone.now().isoformat(timespec='seconds')} {text}\n"


def _append_log(pk: int, text: str, **fields) -> int:
    return Promotion.objects.filter(pk=pk).update(log=Concat(F("log"), Value(_log_line(text))), **fields)


def _queue(p: Promotion) -> None:
    """Mark `p` queued with a fresh job id and enqueue it once the transaction commits."""
    from ci_integrations import jobs

    p.state = State.QUEUED
    p.queued_at = timezone.now()
    p.job_id = new_job_id("promotion", p.pk)
    enqueue_on_commit(jobs.run_promotion, p.pk, queue=PROMOTIONS_QUEUE, job_id=p.job_id)


def _end(p: Promotion, state: str, log_text: str) -> None:
    """Move a locked promotion to a final state by a person's decision, with a log line."""
    p.state = state
    p.finished_at = timezone.now()
    p.log += _log_line(log_text)
    p.save(update_fields=["state", "finished_at", "log", "updated_at"])


def _locked(promotion: Promotion) -> Promotion:
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
) -> Promotion:
    """Request moving `artifact` into `to_env` along its workflow step.

    Refused with PolicyViolation naming every unmet condition (the refusal is audited). With no approvals required
    the promotion is queued at once.
    """
    return _request(
        artifact=artifact,
        to_env=to_env,
        actor=actor,
        tag=tag,
        reason=reason,
        freeze_override_reason=freeze_override_reason,
        rollback=False,
    )


def _request(*, artifact, to_env, actor, tag, reason, freeze_override_reason, rollback) -> Promotion:
    if tag is not None and not is_valid_tag(tag):
        raise InvalidInput(
            f"invalid tag {tag!r}: up to 128 letters, digits, '_', '.' or '-'", details={"tag": "invalid"}
        )
    if actor.token is not None and actor.token.kind == "ci" and freeze_override_reason:
        raise NotAllowed("CI tokens cannot override freeze windows")
    refused: list[str] | None = None
    with transaction.atomic():
        # One request at a time per artifact, so "no other open promotion" cannot be raced.
        artifact = artifact_locked(artifact.pk)
        ev = promotion_evaluate(
            artifact=artifact,
            to_env=to_env,
            actor=actor,
            rollback=rollback,
            tag=tag,
            freeze_override_reason=freeze_override_reason,
        )
        if not ev.ok:
            audit_record(
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
            refused = ev.unmet
        else:
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
                required_approvals=ev.required_approvals,
                requested_by=actor.user,
                requested_by_label=actor.label,
                reason=reason or "",
                freeze_override_reason=freeze_override_reason.strip() if ev.freeze_overridden else "",
                log=_log_line(f"requested by {actor.label}"),
            )
            audit_record(
                actor=actor,
                action="promotion.rollback_requested" if rollback else "promotion.requested",
                obj=p,
                after={
                    **_snapshot(p),
                    "required_approvals": p.required_approvals,
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
            webhooks_notify(promotion=p, event="requested", actor=actor)
            if p.required_approvals == 0:
                _queue(p)
                p.save(update_fields=["state", "queued_at", "job_id"])
                audit_record(
                    actor=actor,
                    action="promotion.queued",
                    obj=p,
                    before={"state": State.PENDING_APPROVAL},
                    after={"state": p.state, "job_id": p.job_id},
                    reason="no approvals required",
                )
    if refused is not None:
        # Raised after the commit so the refusal's audit entry stays.
        raise PolicyViolation(refused)
    return p


def promotions_auto_request(*, artifact: Artifact, from_bucket: Bucket) -> list[Promotion]:
    """Steps marked auto_promote request themselves once the artifact is in their source bucket and passes policy."""
    integration = artifact.integration
    if not integration.workflow_id:
        return []
    made = []
    steps = WorkflowStep.objects.filter(
        workflow_id=integration.workflow_id, from_env=from_bucket.env, auto_promote=True
    )
    for step in steps:
        if Arrival.objects.filter(bucket__integration=integration, bucket__env=step.to_env, artifact=artifact).exists():
            continue  # already there once; auto-promotion never repeats itself
        ev = promotion_evaluate(artifact=artifact, to_env=step.to_env, actor=AUTO)
        if not ev.ok:
            continue
        try:
            with transaction.atomic():
                made.append(
                    _request(
                        artifact=artifact,
                        to_env=step.to_env,
                        actor=AUTO,
                        tag=None,
                        reason=f"auto-promotion after arrival in {from_bucket.env}",
                        freeze_override_reason="",
                        rollback=False,
                    )
                )
        except ServiceError as exc:
            logger.info("auto-promotion of %s into %s skipped: %s", artifact, step.to_env, exc.message)
    return made


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


# ---- deciding --------------------------------------------------------------------------------------------------


def _block(p: Promotion, actor: Actor, decision: str) -> tuple[str, str] | None:
    """Why `actor` may not decide on `p`: ("forbidden" | "state", message), or None."""
    verb = "approve" if decision == Approval.Decision.APPROVE else "reject"
    if actor.token is not None and actor.token.kind == "ci":
        return "forbidden", f"CI tokens cannot {verb} promotions"
    user = actor.user
    if user is None or not user.is_active:
        return "forbidden", f"only signed-in people can {verb} promotions"
    if p.state != State.PENDING_APPROVAL:
        done = "approved" if decision == Approval.Decision.APPROVE else "rejected"
        return "state", f"promotion #{p.pk} is {p.state}; only promotions pending approval can be {done}"
    group = p.step.approver_group if p.step_id else None
    if group is not None:
        if not user.groups.filter(pk=group.pk).exists():
            return "forbidden", f"only members of {group.name!r} may {verb} promotions into {p.to_bucket.env}"
    elif not user.has_perm("ci_integrations.approve_promotion"):
        return "forbidden", f"{user.get_username()} may not {verb} promotions (needs the approve_promotion permission)"
    if (
        decision == Approval.Decision.APPROVE
        and p.requested_by_id == user.pk
        and not (p.step_id and p.step.self_approval)
    ):
        return "forbidden", "four-eyes: you requested this promotion, so someone else must approve it"
    if Approval.objects.filter(promotion=p, user=user).exists():
        return "state", f"{user.get_username()} has already decided on promotion #{p.pk}"
    return None


def _frozen(p: Promotion) -> list[str]:
    """Why `p` may not be queued now: its target is frozen and its request did not override the freeze."""
    if p.freeze_override_reason:
        return []
    windows = freeze_windows_active(env=p.to_bucket.env)
    if not windows:
        return []
    names = ", ".join(repr(w.name) for w in windows)
    return [f"freeze window: {p.to_bucket.env} is frozen ({names}); a platform admin may override with a reason"]


def _freeze_holds_approval(p: Promotion) -> list[str]:
    """The unmet freeze condition when the next approval would complete the quorum (and so queue the copy)."""
    unmet = _frozen(p)
    if not unmet or p.approvals_given + 1 < p.required_approvals:
        return []
    return unmet


class FreezeHold(str):
    """A block that is only the freeze window holding the approval that would queue the copy: rejecting is still
    possible."""


def promotion_approval_block(*, promotion: Promotion, user) -> str | None:
    """Why `user` cannot approve `promotion` now, or None if they can (for the UI to show or hide the button).

    Includes the freeze hold promotion_approve would refuse with (as a FreezeHold), so the button is not offered.
    """
    blocked = _block(promotion, Actor.for_user(user), Approval.Decision.APPROVE)
    if blocked:
        return blocked[1]
    unmet = _freeze_holds_approval(promotion)
    return FreezeHold(unmet[0]) if unmet else None


def promotion_approve(*, promotion: Promotion, actor: Actor, comment: str = "") -> Promotion:
    """Approve for the promotion's digest. The approval that completes the quorum queues the copy job.

    Refusals (CI token, approver group, four-eyes) raise NotAllowed and are audited as promotion.approve_refused.
    """
    return _decide(promotion, actor, comment, Approval.Decision.APPROVE)


def promotion_reject(*, promotion: Promotion, actor: Actor, comment: str = "") -> Promotion:
    """Reject: the request ends. Same rights as approving (four-eyes does not apply to saying no)."""
    return _decide(promotion, actor, comment, Approval.Decision.REJECT)


def _decide(promotion: Promotion, actor: Actor, comment: str, decision: str) -> Promotion:
    verb = "approve" if decision == Approval.Decision.APPROVE else "reject"
    comment = (comment or "").strip()
    refusal = None
    refusal_error: ServiceError | None = None
    with transaction.atomic():
        # The row lock serialises decisions: concurrent clicks give one state change, one job, one audit entry.
        p = _locked(promotion)
        blocked = _block(p, actor, decision)
        if blocked and blocked[0] == "state":
            raise StateConflict(blocked[1])
        if not blocked and decision == Approval.Decision.APPROVE and (unmet := _freeze_holds_approval(p)):
            # A freeze that began after the request holds the approval that would queue the copy.
            blocked, refusal_error = ("policy", unmet[0]), PolicyViolation(unmet)
        if blocked:
            refusal = blocked[1]
            audit_record(
                actor=actor,
                action=f"promotion.{verb}_refused",
                obj=p,
                reason=refusal,
                after={"state": p.state, "digest": p.digest, "comment": comment},
            )
        else:
            Approval.objects.create(promotion=p, user=actor.user, decision=decision, digest=p.digest, comment=comment)
            before = {"state": p.state}
            if decision == Approval.Decision.REJECT:
                _end(p, State.REJECTED, f"rejected by {actor.label}")
                audit_record(
                    actor=actor,
                    action="promotion.rejected",
                    obj=p,
                    before=before,
                    after={"state": p.state, "digest": p.digest},
                    reason=comment,
                )
                webhooks_notify(promotion=p, event="rejected", actor=actor, comment=comment)
            else:
                given = p.approvals_given
                progress = {"approvals": given, "required": p.required_approvals, "digest": p.digest}
                if given >= p.required_approvals:
                    _queue(p)
                    p.log += _log_line(f"approved by {actor.label} ({given}/{p.required_approvals}); queued")
                    p.save(update_fields=["state", "queued_at", "job_id", "log", "updated_at"])
                    audit_record(
                        actor=actor,
                        action="promotion.approved",
                        obj=p,
                        before=before,
                        after={"state": p.state, "job_id": p.job_id, **progress},
                        reason=comment,
                    )
                    webhooks_notify(promotion=p, event="approved", actor=actor, comment=comment)
                else:
                    p.log += _log_line(f"approved by {actor.label} ({given}/{p.required_approvals})")
                    p.save(update_fields=["log", "updated_at"])
                    audit_record(
                        actor=actor,
                        action="promotion.approval_recorded",
                        obj=p,
                        after={"state": p.state, **progress},
                        reason=comment,
                    )
    if refusal is not None:
        # Raised after the commit so the refusal's audit entry stays.
        raise refusal_error or NotAllowed(refusal)
    return p


def _may_manage(p: Promotion, actor: Actor) -> bool:
    """The requester, approvers and admins may cancel; requesters and approvers may retry."""
    token = actor.token
    if token is not None and token.kind == "ci":
        from ci_integrations.services.policy import REQUEST_SCOPE

        return REQUEST_SCOPE in (token.scopes or []) and token.integrations.filter(pk=p.integration_id).exists()
    user = actor.user
    if user is None:
        return token is None  # the system itself
    return user.is_active and (
        p.requested_by_id == user.pk
        or user.is_staff
        or user.has_perm("ci_integrations.approve_promotion")
        or user.has_perm("ci_integrations.request_promotion")
    )


def promotion_cancel(*, promotion: Promotion, actor: Actor, reason: str = "") -> Promotion:
    """Cancel a promotion that has not started copying (pending approval, approved or queued). Audited."""
    with transaction.atomic():
        p = _locked(promotion)
        if not _may_manage(p, actor):
            raise NotAllowed(f"{actor.label} may not cancel promotion #{p.pk}")
        if p.state not in (State.PENDING_APPROVAL, State.APPROVED, State.QUEUED):
            raise StateConflict(f"promotion #{p.pk} is {p.state}; only promotions not yet running can be cancelled")
        before = {"state": p.state}
        _end(p, State.CANCELLED, f"cancelled by {actor.label}")
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
        p = _locked(promotion)
        if not _may_manage(p, actor):
            raise NotAllowed(f"{actor.label} may not retry promotion #{p.pk}")
        if p.state != State.FAILED:
            raise StateConflict(f"promotion #{p.pk} is {p.state}; only failed promotions can be retried")
        # The lock promotion_request holds for its own check: a request or another retry of this artifact either
        # sees this one open or is seen by it, never neither.
        artifact_locked(p.artifact_id)
        unmet = _frozen(p)
        other = (
            Promotion.objects.filter(artifact=p.artifact, to_bucket=p.to_bucket, state__in=Promotion.OPEN_STATES)
            .exclude(pk=p.pk)
            .first()
        )
        if other:
            unmet.append(f"open promotion: promotion #{other.pk} of this artifact into {p.to_bucket.env} is open")
        if unmet:
            raise PolicyViolation(unmet)
        before = {"state": p.state, "error": p.error}
        _queue(p)
        p.error = ""
        p.finished_at = None
        p.blobs_done = p.bytes_done = 0
        p.log += _log_line(f"retried by {actor.label}")
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
        audit_record(
            actor=actor, action="promotion.retried", obj=p, before=before, after={"state": p.state, "job_id": p.job_id}
        )
    return p


# ---- preflight -------------------------------------------------------------------------------------------------


def promotion_preflight(*, artifact: Artifact, to_env: str) -> dict:
    """What a copy would meet: source readable, target writable, tag conflict, bytes to move. Never raises for
    registry trouble; each problem becomes an entry in `errors`."""
    from ci_integrations.registry import check_access, plan_copy

    ev = promotion_evaluate(artifact=artifact, to_env=to_env, actor=Actor.system("preflight"))
    result = {
        "source_readable": None,
        "target_writable": None,
        "tag_conflict": None,
        "tag": ev.tag,
        "blobs_total": None,
        "bytes_total": None,
        "bytes_to_move": None,
        "errors": [],
    }
    if ev.from_bucket is None or ev.to_bucket is None:
        result["errors"].append("no workflow step with both buckets leads into " + to_env)
        return result
    locations = {}
    for key, bucket, reference, push in (
        ("source_readable", ev.from_bucket, artifact.digest, False),
        ("target_writable", ev.to_bucket, ev.tag or artifact.digest, True),
    ):
        side = "source" if key == "source_readable" else "target"
        try:
            # Building the location reads the registry's stored credentials, which fails when they were encrypted
            # under a key no longer in P2P_FERNET_KEYS.
            locations[key] = bucket.location(reference)
            check_access(locations[key], push=push)
            result[key] = True
        except CredentialsUnreadable as exc:
            result[key] = False
            result["errors"].append(f"{side}: registry {bucket.registry.name!r}: {exc}")
        except registry_errors.RegistryError as exc:
            result[key] = False
            result["errors"].append(f"{side}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - a preflight reports, it never fails the page
            result[key] = False
            result["errors"].append(registry_errors.redact(f"{key}: {exc}"))
    if len(locations) < 2:
        return result
    try:
        plan = plan_copy(locations["source_readable"], locations["target_writable"])
        result.update(
            tag_conflict=plan.tag_conflict_digest,
            blobs_total=plan.blobs_total,
            bytes_total=plan.bytes_total,
            bytes_to_move=plan.bytes_to_move,
        )
    except registry_errors.RegistryError as exc:
        result["errors"].append(f"plan: {exc.message}")
    except Exception as exc:  # noqa: BLE001
        result["errors"].append(registry_errors.redact(f"plan: {exc}"))
    return result


# ---- execution -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _bucket_lock(bucket_id: int):
    """Hold a session advisory lock on the target bucket: two copies into one bucket never interleave.

    A session lock (not a transaction lock) so no transaction stays open during a long copy; if the worker dies,
    PostgreSQL drops the lock with its connection.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [BUCKET_LOCK_NAMESPACE, bucket_id])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [BUCKET_LOCK_NAMESPACE, bucket_id])
        except Exception:  # noqa: BLE001 - a broken connection has released it already
            logger.warning("could not release the advisory lock of bucket %s", bucket_id, exc_info=True)


def _bucket_lock_free(bucket_id: int) -> bool:
    """Whether no copy into the bucket holds its lock now; if so, it is held until the caller's transaction ends,
    so no copy starts meanwhile."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [BUCKET_LOCK_NAMESPACE, bucket_id])
        return bool(cursor.fetchone()[0])


def promotion_execute(*, promotion_id: int) -> None:
    """The copy job: claim the promotion, copy the image by digest into the target bucket, record the outcome.

    Safe to run twice, even at once: the claim is a conditional update, copies into one bucket are serialised, and
    an image already there with the same digest counts as copied.
    """
    p = Promotion.objects.filter(pk=promotion_id).only("state", "to_bucket_id").first()
    if p is None or p.state not in (State.APPROVED, State.QUEUED):
        return
    with _bucket_lock(p.to_bucket_id):
        now = timezone.now()
        with transaction.atomic():
            claimed = Promotion.objects.filter(pk=promotion_id, state__in=(State.APPROVED, State.QUEUED)).update(
                state=State.RUNNING,
                attempts=F("attempts") + 1,
                started_at=now,
                heartbeat_at=now,
                finished_at=None,
                log=Concat(F("log"), Value(_log_line("copy started"))),
            )
            if not claimed:
                return  # another worker, a cancel or the reconciler got there first
            p = Promotion.objects.select_related(
                "to_bucket__registry", "from_bucket__registry", "artifact", "integration"
            ).get(pk=promotion_id)
            audit_record(
                actor=WORKER,
                action="promotion.started",
                obj=p,
                before={"state": State.QUEUED},
                after={"state": State.RUNNING, "attempt": p.attempts, "job_id": p.job_id},
            )
        _run(p)


def _source(p: Promotion):
    """Copy by digest; a rollback copies from the target's own repository, or from the source bucket when the
    digest is no longer there."""
    if p.kind == Promotion.Kind.ROLLBACK:
        from ci_integrations.registry import resolve_manifest

        own = p.to_bucket.location(p.digest)
        try:
            resolve_manifest(own)
            return own
        except registry_errors.NotFound:
            if p.from_bucket_id:
                return p.from_bucket.location(p.digest)
            return own
    return p.from_bucket.location(p.digest)


def _run(p: Promotion) -> None:
    # Checked again under the bucket lock: another promotion may have taken the tag since this one was requested.
    holder = immutable_tag_holder(p.to_bucket, p.tag, p.artifact)
    if holder is not None:
        _finish_failed(p, f"tag {p.tag!r} is immutable in {p.to_bucket.env} and already holds {holder.artifact.digest}")
        return
    delays = _copy_retry_delays()
    summary = None
    for attempt in range(len(delays) + 1):
        try:
            summary = _copy_with_progress(p, _source(p), p.to_bucket.location(p.tag))
            break
        except registry_errors.RegistryError as exc:
            if exc.retryable and attempt < len(delays):
                _append_log(
                    p.pk,
                    f"transient registry error, retrying in {delays[attempt]:g}s: {exc.message}",
                    heartbeat_at=timezone.now(),
                )
                time.sleep(delays[attempt])
                continue
            _finish_failed(p, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - whatever broke, the promotion must not stay running
            trace = "".join(traceback.format_exception(exc))
            logger.error("promotion %s: copy crashed\n%s", p.pk, registry_errors.redact(trace))
            _finish_failed(p, f"unexpected error: {exc.__class__.__name__}: {exc}")
            return
    if summary.digest != p.digest:
        _finish_failed(p, f"the destination holds {summary.digest}, not {p.digest}")
        return
    _finish_succeeded(p, summary)


def _copy_with_progress(p: Promotion, src, dst):
    """Run copy_image in a helper thread; this thread writes progress and the heartbeat about once a second.

    The progress callback may be called from several copy threads, so it only stores the latest numbers.
    """
    from ci_integrations.registry import copy_image

    latest = {}
    lock = threading.Lock()

    def progress(snapshot) -> None:
        with lock:
            latest["p"] = snapshot

    def write() -> None:
        with lock:
            snap = latest.get("p")
        fields = {"heartbeat_at": timezone.now()}
        if snap is not None:
            fields.update(
                blobs_total=snap.blobs_total,
                blobs_done=snap.blobs_done,
                bytes_total=snap.bytes_total,
                bytes_done=snap.bytes_done,
            )
        Promotion.objects.filter(pk=p.pk, state=State.RUNNING).update(**fields)

    _append_log(p.pk, f"copying {src} → {dst}")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"promotion-{p.pk}") as pool:
        future = pool.submit(
            copy_image, src, dst, progress=progress, parallelism=settings.P2P_COPY_PARALLELISM, expected_digest=p.digest
        )
        while True:
            try:
                summary = future.result(timeout=PROGRESS_EVERY)
                break
            except FutureTimeout:
                write()
    write()  # the final numbers, however short the copy was
    return summary


def _finish_succeeded(p: Promotion, summary) -> None:
    with transaction.atomic():
        current = Promotion.objects.select_for_update().filter(pk=p.pk, state=State.RUNNING).first()
        if current is None:
            return  # recorded by a concurrent run already
        # The artifact before the bucket and the audit chain, as promotion_request takes them: the auto-promotion
        # below requests with this lock, and taking it only after the audit lock deadlocks against a request of
        # this artifact that holds it and waits for its own audit entry.
        artifact_locked(current.artifact_id)
        details = summary.as_dict()
        moved = f"{summary.blobs_copied} copied, {summary.blobs_mounted} mounted, {summary.blobs_skipped} present"
        Promotion.objects.filter(pk=p.pk).update(
            state=State.SUCCEEDED,
            finished_at=timezone.now(),
            heartbeat_at=timezone.now(),
            result_digest=summary.digest,
            error="",
            blobs_done=F("blobs_total"),
            bytes_done=F("bytes_total"),
            log=Concat(
                F("log"),
                Value(
                    _log_line(
                        f"copied {summary.digest} ({moved}, {summary.bytes_transferred} bytes, {summary.seconds:.2f}s)"
                    )
                ),
            ),
        )
        current.refresh_from_db()
        rollback = current.kind == Promotion.Kind.ROLLBACK
        arrival_record(
            bucket=current.to_bucket,
            artifact=current.artifact,
            tag=current.tag,
            how=Arrival.How.ROLLBACK if rollback else Arrival.How.PROMOTION,
            actor=WORKER,
            promotion=current,
        )
        audit_record(
            actor=WORKER,
            action="promotion.succeeded",
            obj=current,
            before={"state": State.RUNNING},
            after={"state": State.SUCCEEDED, "result_digest": summary.digest, "copy": details},
        )
        if rollback:
            audit_record(
                actor=WORKER,
                action="bucket.rolled_back",
                obj=current.to_bucket,
                after={"digest": current.digest, "tag": current.tag, "promotion": current.pk},
                reason=current.reason,
            )
        webhooks_notify(promotion=current, event="rolled_back" if rollback else "succeeded", actor=WORKER)
        if not rollback:
            promotions_auto_request(artifact=current.artifact, from_bucket=current.to_bucket)


def _finish_failed(p: Promotion, message: str) -> None:
    # The error and log are shown on the promotion page and sent to webhooks: no credential may reach them.
    message = registry_errors.redact(message)
    with transaction.atomic():
        current = Promotion.objects.select_for_update().filter(pk=p.pk, state=State.RUNNING).first()
        if current is None:
            return
        Promotion.objects.filter(pk=p.pk).update(
            state=State.FAILED,
            finished_at=timezone.now(),
            error=message,
            log=Concat(F("log"), Value(_log_line(f"failed: {message}"))),
        )
        current.refresh_from_db()
        audit_record(
            actor=WORKER,
            action="promotion.failed",
            obj=current,
            before={"state": State.RUNNING},
            after={"state": State.FAILED, "error": message, "attempt": current.attempts},
        )
        webhooks_notify(promotion=current, event="failed", actor=WORKER)


# ---- reconciler ------------------------------------------------------------------------------------------------


def _job_is_live(job_id: str, queue: str = PROMOTIONS_QUEUE) -> bool:
    """Whether Redis still holds a job that will run or is running. A started job may be waiting for the bucket
    lock; if its worker died before claiming the row, RQ marks the job abandoned (failed) and we re-enqueue then."""
    return job_status(job_id, queue=queue) in LIVE_JOB_STATUSES


def promotions_reconcile() -> int:
    """Re-enqueue what Redis lost: approved/queued promotions with no live job, running promotions whose heartbeat
    went stale (their worker died), queued or running imports with no live job, and undelivered webhook deliveries
    with no live job. Returns how many were re-enqueued."""
    from ci_integrations import jobs

    now = timezone.now()
    stale_before = now - settings.P2P_HEARTBEAT_STALE_AFTER
    count = 0
    for p in Promotion.objects.filter(state__in=(State.APPROVED, State.QUEUED)).only(
        "pk", "state", "job_id", "queued_at"
    ):
        if _job_is_live(p.job_id):
            continue
        job_id = new_job_id("promotion", p.pk)
        with transaction.atomic():
            won = Promotion.objects.filter(pk=p.pk, state=p.state, job_id=p.job_id).update(
                state=State.QUEUED,
                job_id=job_id,
                queued_at=now,
                log=Concat(F("log"), Value(_log_line("re-enqueued by the reconciler (no live job)"))),
            )
            if won:
                enqueue_on_commit(jobs.run_promotion, p.pk, queue=PROMOTIONS_QUEUE, job_id=job_id)
                count += 1
    running = Promotion.objects.filter(state=State.RUNNING, heartbeat_at__lt=stale_before)
    for p in running.select_related("to_bucket", "integration"):
        with transaction.atomic():
            if not _bucket_lock_free(p.to_bucket_id):
                # A worker still holds the copy lock of the bucket: its connection, and so the worker, is alive (a
                # dead one's lock went with its connection). Requeuing would let the promotion be cancelled or
                # failed while that copy still writes the tag; wait until it lets go.
                continue
            if p.attempts >= MAX_ATTEMPTS:
                message = f"gave up after {p.attempts} attempts whose workers stopped answering"
                won = Promotion.objects.filter(pk=p.pk, state=State.RUNNING, heartbeat_at=p.heartbeat_at).update(
                    state=State.FAILED,
                    finished_at=now,
                    error=message,
                    log=Concat(F("log"), Value(_log_line(message))),
                )
                if won:
                    audit_record(
                        actor=RECONCILER,
                        action="promotion.failed",
                        obj=p,
                        before={"state": State.RUNNING},
                        after={"state": State.FAILED, "error": message},
                    )
                    webhooks_notify(promotion=p, event="failed", actor=RECONCILER)
                continue
            job_id = new_job_id("promotion", p.pk)
            won = Promotion.objects.filter(pk=p.pk, state=State.RUNNING, heartbeat_at=p.heartbeat_at).update(
                state=State.QUEUED,
                job_id=job_id,
                queued_at=now,
                log=Concat(F("log"), Value(_log_line("worker stopped answering; re-enqueued by the reconciler"))),
            )
            if won:
                audit_record(
                    actor=RECONCILER,
                    action="promotion.requeued",
                    obj=p,
                    before={"state": State.RUNNING, "heartbeat_at": p.heartbeat_at},
                    after={"state": State.QUEUED, "job_id": job_id},
                    reason=f"no heartbeat for over {int(settings.P2P_HEARTBEAT_STALE_AFTER.total_seconds())}s",
                )
                enqueue_on_commit(jobs.run_promotion, p.pk, queue=PROMOTIONS_QUEUE, job_id=job_id)
                count += 1
    # Imports have no heartbeat: a running one whose RQ job is gone (worker killed, Redis flushed) runs again, which
    # is harmless because the copy and the registration are both idempotent.
    imports = Job.objects.filter(kind="import", state__in=(Job.State.QUEUED, Job.State.RUNNING))
    for job in imports.only("pk", "kind", "state", "rq_job_id", "integration_id"):
        if _job_is_live(job.rq_job_id, queue=DEFAULT_QUEUE):
            continue
        job_id = new_job_id("import", job.pk)
        with transaction.atomic():
            if Job.objects.filter(pk=job.pk, state=job.state, rq_job_id=job.rq_job_id).update(
                state=Job.State.QUEUED, rq_job_id=job_id
            ):
                if job.state == Job.State.RUNNING:
                    audit_record(
                        actor=RECONCILER,
                        action="artifact.import_requeued",
                        obj=job,
                        before={"state": Job.State.RUNNING, "job_id": job.rq_job_id},
                        after={"state": Job.State.QUEUED, "job_id": job_id},
                        reason="its job is no longer known to the queue",
                    )
                enqueue_on_commit(jobs.run_import, job.pk, queue=DEFAULT_QUEUE, job_id=job_id)
                count += 1
    return count + webhooks_reconcile()


__all__ = [
    "Condition",
    "FreezeHold",
    "PolicyEvaluation",
    "bucket_rollback",
    "promotion_approval_block",
    "promotion_approve",
    "promotion_cancel",
    "promotion_evaluate",
    "promotion_execute",
    "promotion_preflight",
    "promotion_reject",
    "promotion_request",
    "promotion_retry",
    "promotions_auto_request",
    "promotions_reconcile",
]
