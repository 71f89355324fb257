"""RQ entry points: ids in, one service call, nothing else."""

from __future__ import annotations


def run_promotion(promotion_id: int) -> None:
    from ci_integrations.services.promotions import promotion_execute

    promotion_execute(promotion_id=promotion_id)


def run_import(job_id: int) -> None:
    from ci_integrations.services.artifacts import artifact_import_execute

    artifact_import_execute(job_id=job_id)


def deliver_webhook(delivery_id: int) -> None:
    from ci_integrations.services.webhooks import webhook_deliver

    webhook_deliver(delivery_id=delivery_id)


def reconcile() -> int:
    from ci_integrations.services.promotions import promotions_reconcile

    return promotions_reconcile()
