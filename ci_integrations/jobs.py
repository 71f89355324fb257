"""RQ entry points: ids in, one service call, nothing else.

Services enqueue these by dotted path (services/background.py names each one), so this module imports services and
nothing imports it.
"""

from __future__ import annotations

from ci_integrations.services.audit_verification import audit_verification_run
from ci_integrations.services.copying import promotion_execute
from ci_integrations.services.emails import email_send
from ci_integrations.services.imports import artifact_import_execute
from ci_integrations.services.webhooks import webhook_deliver
from p2p_portal.logging_json import log_context


def run_promotion(promotion_id: int) -> None:
    with log_context(promotion=promotion_id):  # every line the copy logs names its promotion
        promotion_execute(promotion_id=promotion_id)


def run_import(job_id: int) -> None:
    with log_context(import_job=job_id):
        artifact_import_execute(job_id=job_id)


def deliver_webhook(delivery_id: int) -> None:
    with log_context(webhook_delivery=delivery_id):
        webhook_deliver(delivery_id=delivery_id)


def verify_audit() -> dict:
    return audit_verification_run()


def send_email(email_id: int) -> None:
    with log_context(email=email_id):
        email_send(email_id=email_id)
