"""Background work: what each kind of job is, how it is put on a queue, claimed, and found again when Redis lost it.

PostgreSQL is the source of truth and Redis only carries work. Every job has a row that mirrors it (a Promotion, an
ImportJob, a WebhookDelivery, an EmailNotification) whose `job_id` names the RQ job carrying it now. Work is enqueued
only after the transaction that made it commits, by the dotted path of its entry point in jobs.py and with the row's
id only, so services never import jobs.py. If the process dies between commit and enqueue, or Redis is flushed, the
reconciler finds the row and calls requeue_if_lost, so nothing here needs to be durable.

May import: models and Django. Not jobs.py, not other services.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import django_rq
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from rq.exceptions import NoSuchJobError
from rq.job import Job

logger = logging.getLogger(__name__)

PROMOTIONS_QUEUE = "promotions"
DEFAULT_QUEUE = "default"
# Imports read from outside registries, which may be slow or hostile: their own queue and their own worker keep them
# from ever standing between a promotion and a worker.
IMPORTS_QUEUE = "imports"
# Seconds RQ gives an import beyond P2P_IMPORT_TIMEOUT: the job stops itself at that limit and records its failure,
# so RQ's kill (which would leave the row running) is only the backstop.
IMPORT_TIMEOUT_GRACE = 60
# RQ statuses of a job that will still run, or is running.
LIVE_JOB_STATUSES = {"created", "queued", "scheduled", "deferred", "started", "rate_limited"}


def get_queue(name: str):
    return django_rq.get_queue(name)


@dataclass(frozen=True)
class Task:
    """One kind of background work: the prefix of its job ids, its entry point in jobs.py, its queue and, when it has
    one of its own, a function giving its RQ job_timeout in seconds (read at each enqueue, from the settings)."""

    kind: str
    function: str
    queue: str
    job_timeout: Callable[[], int] | None = None

    def new_job_id(self, pk: int | str) -> str:
        """Ids like "promotion-42-3f9c…": the prefix makes Redis keys readable, the suffix keeps re-enqueues apart."""
        return f"{self.kind}-{pk}-{uuid.uuid4().hex[:12]}"

    def enqueue_now(self, *args, job_id: str, retry=None, **options) -> None:
        """Enqueue immediately; a Redis outage is logged, not raised, because the reconciler repairs it."""
        if self.job_timeout is not None:
            options.setdefault("job_timeout", self.job_timeout())
        try:
            get_queue(self.queue).enqueue(self.function, *args, job_id=job_id, retry=retry, **options)
        except Exception:  # noqa: BLE001 - Redis down must not undo a committed decision
            logger.exception("could not enqueue %s (job %s); the reconciler will retry", self.function, job_id)

    def enqueue_on_commit(self, *args, job_id: str, retry=None, **options) -> None:
        """Enqueue once the current transaction commits; a rollback enqueues nothing."""
        transaction.on_commit(lambda: self.enqueue_now(*args, job_id=job_id, retry=retry, **options))

    def job_status(self, job_id: str) -> str | None:
        """The RQ status of a job, or None when Redis no longer knows it (finished and expired, flushed, never
        made)."""
        if not job_id:
            return None
        try:
            job = Job.fetch(job_id, connection=get_queue(self.queue).connection)
            status = job.get_status(refresh=False)
        except NoSuchJobError:
            return None
        return str(getattr(status, "value", status)) if status else None

    def is_live(self, job_id: str) -> bool:
        """Whether Redis still holds a job that will run or is running. A started job may be waiting for a lock; if
        its worker died before claiming the row, RQ marks the job abandoned (failed), and it counts as lost."""
        return self.job_status(job_id) in LIVE_JOB_STATUSES


def import_job_timeout() -> int:
    """RQ's limit for one import job: P2P_IMPORT_TIMEOUT plus the grace in which the job records its own failure."""
    return settings.P2P_IMPORT_TIMEOUT + IMPORT_TIMEOUT_GRACE


RUN_PROMOTION = Task(kind="promotion", function="ci_integrations.jobs.run_promotion", queue=PROMOTIONS_QUEUE)
RUN_IMPORT = Task(
    kind="import", function="ci_integrations.jobs.run_import", queue=IMPORTS_QUEUE, job_timeout=import_job_timeout
)
DELIVER_WEBHOOK = Task(kind="webhook", function="ci_integrations.jobs.deliver_webhook", queue=DEFAULT_QUEUE)
SEND_EMAIL = Task(kind="email", function="ci_integrations.jobs.send_email", queue=DEFAULT_QUEUE)
VERIFY_AUDIT = Task(kind="audit-verification", function="ci_integrations.jobs.verify_audit", queue=DEFAULT_QUEUE)


def transition(rows: QuerySet, **changes) -> bool:
    """Claim or finish work with one conditional UPDATE of `rows` (a row filtered by the states it may leave).

    True for exactly one of any number of concurrent callers: two workers, two clicks or a worker and the reconciler
    can never both win.
    """
    return bool(rows.update(**changes))


def requeue_if_lost(task: Task, rows: QuerySet, *, pk: int, job_id: str, retry=None, **changes) -> str | None:
    """If Redis no longer carries `job_id`, give the row a new job id (and `changes`) and enqueue it after commit.

    `rows` filters the row by the states in which it should still be carried; the update is conditional on the old
    job id too, so a concurrent reconciler or worker that moved the row first wins. Returns the new job id, or None.
    Call it inside the transaction that also audits the requeue, when one is audited.
    """
    if task.is_live(job_id):
        return None
    new_job_id = task.new_job_id(pk)
    with transaction.atomic():
        if not transition(rows.filter(pk=pk, job_id=job_id), job_id=new_job_id, **changes):
            return None
        task.enqueue_on_commit(pk, job_id=new_job_id, retry=retry)
    return new_job_id
