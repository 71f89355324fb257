"""No registry, endpoint or crash can fill a row: Promotion.error and each log line, ImportJob.error,
WebhookDelivery.error and the audit entries that repeat them stay within 2,000 characters, ending " (cut)" when cut.

Registries are real; the 5 MB answers come from the fault proxy in front of one.
"""

import json
import re

import pytest
import requests

from ci_integrations.models import AuditEntry, ImportJob, Promotion, Registry, WebhookDelivery
from ci_integrations.registry.errors import MAX_MESSAGE_LENGTH
from ci_integrations.services import copying, imports, webhooks
from ci_integrations.services.copying import promotion_execute
from ci_integrations.services.deliveries import DeliveryFailed
from ci_integrations.services.imports import artifact_import, artifact_import_execute
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.webhooks import webhook_create, webhook_deliver
from tests.registry.fault_proxy import FaultProxy
from tests.support.images import push_random_image

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
FIVE_MB = 5 * 1024 * 1024
TIMESTAMP = re.compile(r"^\S+ ")


def assert_fits(*texts: str) -> None:
    for text in texts:
        assert len(text) <= MAX_MESSAGE_LENGTH, f"{len(text)} characters: {text[:100]}…"


def assert_log_lines_fit(log: str) -> None:
    """Every line of a promotion's log, after its timestamp, within the limit."""
    lines = log.splitlines()
    assert lines
    assert_fits(*(TIMESTAMP.sub("", line, count=1) for line in lines))


def test_a_registry_whose_error_message_is_5_mb_leaves_promotion_and_import_rows_under_the_limit(
    world, rq_queues, run_worker
):
    huge = json.dumps({"errors": [{"code": "UNKNOWN", "message": "x" * FIVE_MB}]}).encode()
    proxy = FaultProxy(world.build_url)
    try:
        registry = Registry.objects.create(name="loud", url=proxy.url, options={"retry_attempts": 1})
        world.qa.registry = registry
        world.qa.save()
        artifact = world.register("qa", "v1")
        push_random_image(world.build_url, "outside/app", "e-1", layers=1)
        json_type = {"Content-Type": "application/json"}
        # The promotion streams qa's blobs to another registry; the import reads its source's manifest.
        for path in ("/blobs/", "/v2/outside/app/manifests/"):
            proxy.add("status", method="GET", path=path, status=500, body=huge, headers=json_type, times=None)
        promotion = promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
        job = artifact_import(
            integration=world.integration,
            source=f"{proxy.host}/outside/app:e-1",
            actor=world.actor(world.alice),
        )
        run_worker()
    finally:
        proxy.stop()

    promotion.refresh_from_db()
    job.refresh_from_db()
    assert promotion.state == Promotion.State.FAILED and "HTTP 500" in promotion.error
    assert job.state == ImportJob.State.FAILED and "HTTP 500" in job.error
    assert_fits(promotion.error, job.error)
    assert_log_lines_fit(promotion.log)
    for entry in AuditEntry.objects.filter(action__in=["promotion.failed", "artifact.import_failed"]):
        assert_fits(entry.reason, entry.after.get("error", ""))


def test_a_crash_quoting_a_5_mb_registry_answer_is_cut_in_every_row(world, rq_queues, monkeypatch):
    answer = "the registry said: " + "y" * FIVE_MB

    def crash(*args, **kwargs):
        raise RuntimeError(answer)

    monkeypatch.setattr(copying, "copy_image", crash)
    monkeypatch.setattr(imports, "copy_image", crash)
    webhook_create(
        integration=world.integration,
        url="https://hooks.example.com/p2p",
        secret="a-webhook-secret-of-length",
        actor=world.actor(world.admin),
    )
    monkeypatch.setattr(
        webhooks.requests, "post", lambda *a, **k: (_ for _ in ()).throw(requests.ConnectionError(answer))
    )

    promotion = promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    promotion_execute(promotion_id=promotion.pk)
    push_random_image(world.build_url, "outside/app", "c-1", layers=1)
    job = artifact_import(
        integration=world.integration,
        source=f"{world.build_url.split('://')[1]}/outside/app:c-1",
        actor=world.actor(world.alice),
    )
    artifact_import_execute(job_id=job.pk)
    deliveries = list(WebhookDelivery.objects.all())
    for delivery in deliveries:
        with pytest.raises(DeliveryFailed):
            webhook_deliver(delivery_id=delivery.pk)

    promotion.refresh_from_db()
    job.refresh_from_db()
    errors = [promotion.error, job.error] + [d.error for d in WebhookDelivery.objects.all()]
    assert deliveries and all(error.endswith(" (cut)") for error in errors), [e[-40:] for e in errors]
    assert_fits(*errors)
    assert_log_lines_fit(promotion.log)
    for entry in AuditEntry.objects.filter(action__in=["promotion.failed", "artifact.import_failed"]):
        assert_fits(entry.reason, entry.after.get("error", ""))
