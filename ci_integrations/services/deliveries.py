"""Deliveries of notifications (webhook calls, emails): attempts with backoff, then visibly given up, and found again
when Redis lost their job.

A delivery is a row (WebhookDelivery, EmailNotification) with `attempts`, `error`, `job_id`, `delivered_at` and
`given_up_at`; open means neither delivered nor given up. Each attempt's job raises DeliveryFailed on failure so RQ
runs the next one after the next interval of the delivery's setting; once the last has failed the row is given up and
nothing retries it unless a platform admin asks for one more attempt. A notification never fails a promotion: its
rows are written beside the promotion's, and it is sent only by its job, after the commit.

May import: models, background.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import F, Model
from django.utils import timezone
from rq import Retry

from ci_integrations.models import EmailNotification, WebhookDelivery
from ci_integrations.services.background import DELIVER_WEBHOOK, SEND_EMAIL, Task, requeue_if_lost, transition

DEFAULT_INTERVALS = [10, 60, 300, 900]


class DeliveryFailed(Exception):
    """Raised by a delivery job so RQ schedules the next attempt."""


class Deliveries:
    """The retry rules of one kind of delivery: its rows, its task, and the setting listing its retry intervals."""

    def __init__(self, model: type[Model], task: Task, setting: str):
        self.model = model
        self.task = task
        self.setting = setting

    def intervals(self) -> list[int]:
        return list(getattr(settings, self.setting, DEFAULT_INTERVALS))

    def max_attempts(self) -> int:
        """One try plus one per retry interval."""
        return len(self.intervals()) + 1

    def retry_left(self, attempts_done: int) -> Retry | None:
        """RQ's retries for a delivery that has made `attempts_done` attempts."""
        intervals = self.intervals()[attempts_done:]
        return Retry(max=len(intervals), interval=intervals) if intervals else None

    def open(self):
        return self.model.objects.filter(delivered_at__isnull=True, given_up_at__isnull=True)

    def enqueue_on_commit(self, row) -> None:
        """Give a new row its job id and send it once the caller's transaction commits."""
        row.job_id = self.task.new_job_id(row.pk)
        row.save(update_fields=["job_id"])
        self.task.enqueue_on_commit(row.pk, job_id=row.job_id, retry=self.retry_left(row.attempts))

    def attempted(self, pk: int, *, error: str, **changes) -> None:
        """Record one attempt's outcome; after a failure, give the row up if it was the last attempt, then raise so RQ
        retries it."""
        self.model.objects.filter(pk=pk).update(
            attempts=F("attempts") + 1,
            error=error,
            delivered_at=None if error else timezone.now(),
            **changes,
        )
        if error:
            # The last retry failed: the delivery is finished, and the reconciler leaves it alone.
            self.open().filter(pk=pk, attempts__gte=self.max_attempts()).update(given_up_at=timezone.now())
            raise DeliveryFailed(f"{self.model._meta.verbose_name} {pk}: {error}")

    def retry_once(self, pk: int) -> bool:
        """One more attempt for a given-up delivery (a platform admin asked for it); False if it is not given up."""
        job_id = self.task.new_job_id(pk)
        rows = self.model.objects.filter(pk=pk, given_up_at__isnull=False, delivered_at__isnull=True)
        if not transition(rows, given_up_at=None, job_id=job_id):
            return False
        self.task.enqueue_on_commit(pk, job_id=job_id)
        return True

    def reconcile(self) -> int:
        """Re-enqueue open deliveries whose RQ job is gone (Redis flushed, worker killed); give up those whose attempts
        are spent. Returns how many were re-enqueued. Called by the reconciler."""
        count = 0
        open_rows = self.open()
        for row in open_rows.only("pk", "job_id", "attempts").order_by("created_at"):
            if row.attempts >= self.max_attempts():
                if not self.task.is_live(row.job_id):
                    transition(open_rows.filter(pk=row.pk, job_id=row.job_id), given_up_at=timezone.now())
                continue
            requeued = requeue_if_lost(
                self.task, open_rows, pk=row.pk, job_id=row.job_id, retry=self.retry_left(row.attempts)
            )
            count += requeued is not None
        return count


WEBHOOK_DELIVERIES = Deliveries(WebhookDelivery, DELIVER_WEBHOOK, "P2P_WEBHOOK_RETRY_INTERVALS")
EMAIL_DELIVERIES = Deliveries(EmailNotification, SEND_EMAIL, "P2P_EMAIL_RETRY_INTERVALS")
