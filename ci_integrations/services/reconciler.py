"""The reconciler: the one owner of putting back on a queue whatever Redis lost.

PostgreSQL says what must happen; this finds the rows whose job is gone and enqueues them again:
- queued promotions with no live job (Redis flushed, a process died between commit and enqueue);
- running promotions whose heartbeat went stale (their worker died), unless a worker still holds the bucket's
  copy lock; after MAX_ATTEMPTS such deaths the promotion is failed instead;
- queued or running imports with no live job; once P2P_IMPORT_MAX_ATTEMPTS runs of an import have died, it is
  failed instead;
- undelivered webhook deliveries with no live job.
Every requeue is a conditional update, so several reconcilers (one per worker) are harmless.

May import: models, locks, audit, webhooks, background.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from ci_integrations.models import ImportJob, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import RUN_IMPORT, RUN_PROMOTION, requeue_if_lost, transition
from ci_integrations.services.locks import bucket_copy_lock_free
from ci_integrations.services.notifications import notify_promotion
from ci_integrations.services.promotions import log_line
from ci_integrations.services.webhooks import webhooks_reconcile

State = Promotion.State
RECONCILER = Actor.system("reconciler")
MAX_ATTEMPTS = 5  # a promotion whose worker keeps dying is failed rather than re-run for ever


def reconcile() -> int:
    """Re-enqueue everything Redis lost. Returns how many jobs were enqueued again."""
    return _queued_promotions() + _stale_promotions() + _imports() + webhooks_reconcile()


def _queued_promotions() -> int:
    count = 0
    now = timezone.now()
    for p in Promotion.objects.filter(state__in=Promotion.RUNNABLE).only("pk", "job_id"):
        requeued = requeue_if_lost(
            RUN_PROMOTION,
            Promotion.objects.filter(state__in=Promotion.RUNNABLE),
            pk=p.pk,
            job_id=p.job_id,
            queued_at=now,
            log=Concat(F("log"), Value(log_line("re-enqueued by the reconciler (no live job)"))),
        )
        count += requeued is not None
    return count


def _stale_promotions() -> int:
    count = 0
    now = timezone.now()
    stale_before = now - settings.P2P_HEARTBEAT_STALE_AFTER
    running = Promotion.objects.filter(state=State.RUNNING, heartbeat_at__lt=stale_before)
    for p in running.select_related("to_bucket", "from_bucket", "integration"):
        with transaction.atomic():
            if not bucket_copy_lock_free(p.to_bucket_id):
                # A worker still holds the copy lock of the bucket: its connection, and so the worker, is alive (a
                # dead one's lock went with its connection). Requeuing would let the promotion be cancelled or
                # failed while that copy still writes the tag; wait until it lets go.
                continue
            still_stale = Promotion.objects.filter(pk=p.pk, state=State.RUNNING, heartbeat_at=p.heartbeat_at)
            if p.attempts >= MAX_ATTEMPTS:
                message = f"gave up after {p.attempts} attempts whose workers stopped answering"
                won = transition(
                    still_stale,
                    state=State.FAILED,
                    finished_at=now,
                    error=message,
                    log=Concat(F("log"), Value(log_line(message))),
                )
                if won:
                    audit_record(
                        actor=RECONCILER,
                        action="promotion.failed",
                        obj=p,
                        before={"state": State.RUNNING},
                        after={"state": State.FAILED, "error": message},
                    )
                    notify_promotion(promotion=p, event="failed", actor=RECONCILER)
                continue
            job_id = RUN_PROMOTION.new_job_id(p.pk)
            won = transition(
                still_stale,
                state=State.QUEUED,
                job_id=job_id,
                queued_at=now,
                log=Concat(F("log"), Value(log_line("worker stopped answering; re-enqueued by the reconciler"))),
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
                RUN_PROMOTION.enqueue_on_commit(p.pk, job_id=job_id)
                count += 1
    return count


def _imports() -> int:
    """Imports have no heartbeat: a running one whose RQ job is gone (worker killed, Redis flushed, RQ's timeout) runs
    again, which is harmless because the copy and the registration are both idempotent; but only until its attempts
    are spent, so a source that kills or outlasts every run cannot keep an import worker busy for ever."""
    count = 0
    open_imports = ImportJob.objects.filter(state__in=ImportJob.OPEN)
    for job in open_imports.only("pk", "state", "job_id", "attempts", "integration_id"):
        if job.attempts >= settings.P2P_IMPORT_MAX_ATTEMPTS:
            _import_give_up(job)
            continue
        with transaction.atomic():
            requeued = requeue_if_lost(
                RUN_IMPORT,
                ImportJob.objects.filter(state=job.state),
                pk=job.pk,
                job_id=job.job_id,
                state=ImportJob.State.QUEUED,
            )
            if requeued is not None and job.state == ImportJob.State.RUNNING:
                audit_record(
                    actor=RECONCILER,
                    action="artifact.import_requeued",
                    obj=job,
                    before={"state": ImportJob.State.RUNNING, "job_id": job.job_id, "attempts": job.attempts},
                    after={"state": ImportJob.State.QUEUED, "job_id": requeued},
                    reason="its job is no longer known to the queue",
                )
        count += requeued is not None
    return count


def _import_give_up(job: ImportJob) -> None:
    """Fail an import whose attempts are spent and whose job is gone, with an audit entry; never re-enqueue it."""
    if RUN_IMPORT.is_live(job.job_id):
        return  # its last run is still going (or waiting): it ends by itself, within P2P_IMPORT_TIMEOUT
    message = (
        f"gave up after {job.attempts} attempts (P2P_IMPORT_MAX_ATTEMPTS is {settings.P2P_IMPORT_MAX_ATTEMPTS}):"
        " each run's worker stopped or was killed before the import finished"
    )
    with transaction.atomic():
        current = ImportJob.objects.select_for_update().filter(pk=job.pk, state=job.state, job_id=job.job_id).first()
        if current is None:
            return  # a worker or another reconciler moved it first
        won = transition(
            ImportJob.objects.filter(pk=job.pk, state=job.state, job_id=job.job_id),
            state=ImportJob.State.FAILED,
            error=message,
            finished_at=timezone.now(),
            # Source credentials are kept only until the import has ended.
            arguments={**current.arguments, "credentials_encrypted": ""},
        )
        if won:
            audit_record(
                actor=RECONCILER,
                action="artifact.import_failed",
                obj=current,
                before={"state": job.state, "attempts": job.attempts},
                after={"source": current.arguments.get("source"), "state": ImportJob.State.FAILED, "error": message},
                reason=message,
            )
