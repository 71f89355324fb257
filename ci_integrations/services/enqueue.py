"""Putting work on the RQ queues: only after the transaction that made the work commits, and with ids only.

PostgreSQL is the source of truth; Redis only carries work. If the process dies between commit and enqueue, the
reconciler (promotions_reconcile) finds the row and enqueues it again, so nothing here needs to be durable.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from django.db import transaction

logger = logging.getLogger(__name__)

PROMOTIONS_QUEUE = "promotions"
DEFAULT_QUEUE = "default"
# RQ statuses of a job that will still run, or is running.
LIVE_JOB_STATUSES = {"created", "queued", "scheduled", "deferred", "started", "rate_limited"}


def new_job_id(kind: str, pk: int) -> str:
    """Ids like "promotion-42-3f9c…": the prefix makes Redis keys readable, the suffix keeps re-enqueues apart."""
    return f"{kind}-{pk}-{uuid.uuid4().hex[:12]}"


def get_queue(name: str):
    import django_rq

    return django_rq.get_queue(name)


def enqueue_now(func: Callable, *args, queue: str, job_id: str, retry=None, **kwargs) -> None:
    """Enqueue immediately; a Redis outage is logged, not raised, because the reconciler repairs it."""
    try:
        get_queue(queue).enqueue(func, *args, job_id=job_id, retry=retry, **kwargs)
    except Exception:  # noqa: BLE001 - Redis down must not undo a committed decision
        logger.exception(
            "could not enqueue %s (job %s); the reconciler will retry", getattr(func, "__name__", func), job_id
        )


def enqueue_on_commit(func: Callable, *args, queue: str, job_id: str, retry=None, **kwargs) -> None:
    """Enqueue `func(*args)` once the current transaction commits; a rollback enqueues nothing."""
    transaction.on_commit(lambda: enqueue_now(func, *args, queue=queue, job_id=job_id, retry=retry, **kwargs))


def job_status(job_id: str, *, queue: str = PROMOTIONS_QUEUE) -> str | None:
    """The RQ status of a job, or None when Redis no longer knows it (finished and expired, flushed, never made)."""
    if not job_id:
        return None
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(job_id, connection=get_queue(queue).connection)
        status = job.get_status(refresh=False)
    except NoSuchJobError:
        return None
    return str(getattr(status, "value", status)) if status else None
