"""Webhooks: signed JSON with a Slack-style text, delivered by RQ jobs that retry and keep a log."""

import hashlib
import hmac
import json

import pytest

from ci_integrations.models import WebhookDelivery
from ci_integrations.services.errors import InvalidInput, NotAllowed
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.reconciler import reconcile
from ci_integrations.services.webhooks import webhook_create

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
SECRET = "s3cret-s3cret-s3cret"


def test_the_signature_verifies_and_failed_deliveries_are_retried_and_logged(world, run_worker, receiver_factory):
    receiver = receiver_factory(500, 503, 200)
    webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["requested"],
        actor=world.actor(world.admin),
    )
    artifact = world.register("qa", "v1")
    promotion_request(artifact=artifact, to_env="staging", actor=world.actor(world.alice))
    run_worker()

    delivery = WebhookDelivery.objects.get()
    assert delivery.event == "requested" and delivery.attempts == 3
    assert delivery.response_status == 200 and delivery.delivered_at is not None and delivery.error == ""
    assert len(receiver.received) == 3
    for headers, body in receiver.received:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-P2P-Signature"], expected)
        assert headers["X-P2P-Event"] == "requested"
    payload = json.loads(receiver.received[-1][1])
    assert payload["event"] == "requested" and "alice requested promoting" in payload["text"]
    assert payload["promotion"]["digest"] == artifact.digest and payload["promotion"]["to"] == "staging"


def test_a_tampered_body_does_not_verify(world, run_worker, receiver_factory):
    receiver = receiver_factory(200)
    webhook_create(integration=world.integration, url=receiver.url, secret=SECRET, actor=world.actor(world.admin))
    promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    run_worker()
    events = sorted(json.loads(body)["event"] for _, body in receiver.received)
    assert events == ["requested", "succeeded"]
    headers, body = receiver.received[0]
    tampered = body.replace(b"staging", b"prod")
    assert headers["X-P2P-Signature"] != "sha256=" + hmac.new(SECRET.encode(), tampered, hashlib.sha256).hexdigest()


def test_a_delivery_that_keeps_failing_stops_after_its_retries_with_the_error_kept(world, run_worker, receiver_factory):
    receiver = receiver_factory(500)
    webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["requested"],
        actor=world.actor(world.admin),
    )
    promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    run_worker()
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 4 and delivery.delivered_at is None  # one try and three retries
    assert delivery.given_up_at is not None
    assert delivery.response_status == 500 and "HTTP 500" in delivery.error


def test_a_failed_delivery_keeps_no_part_of_the_secret_webhook_path_in_its_error(world, run_worker, receiver_factory):
    from tests.support.registry_server import free_port

    for url in (  # nothing listening, and an endpoint that answers 404 with the path it was asked for
        f"http://127.0.0.1:{free_port()}/services/T0001/B0002/XsecretPathPart?token=XsecretQueryPart",
        receiver_factory(404).url.replace("/hook", "/services/T0001/B0002/XsecretPathPart"),
    ):
        webhook_create(
            integration=world.integration, url=url, secret=SECRET, events=["requested"], actor=world.actor(world.admin)
        )
    promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    run_worker()
    errors = list(WebhookDelivery.objects.values_list("error", flat=True))
    assert len(errors) == 2 and all(errors)
    assert not [error for error in errors if "Xsecret" in error or "T0001" in error], errors
    assert any("ConnectionError" in error and "127.0.0.1" in error for error in errors), errors


def test_a_delivery_lost_with_redis_is_re_enqueued_by_the_reconciler_and_delivered(
    world, rq_queues, run_worker, receiver_factory
):
    receiver = receiver_factory(200)
    webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["requested"],
        actor=world.actor(world.admin),
    )
    promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    delivery = WebhookDelivery.objects.get()
    assert delivery.job_id.startswith(f"webhook-{delivery.pk}-")
    rq_queues["default"].connection.flushdb()  # our own test database only
    run_worker()
    assert receiver.received == [] and WebhookDelivery.objects.get().delivered_at is None
    assert reconcile() == 2  # the promotion's copy and the delivery
    assert reconcile() == 0  # both jobs are live again; no duplicates
    run_worker()
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None and delivery.attempts == 1 and len(receiver.received) == 1
    assert json.loads(receiver.received[0][1])["event"] == "requested"


def test_a_lost_delivery_gets_only_its_remaining_retries_and_is_then_given_up_for_good(
    world, rq_queues, run_worker, receiver_factory
):
    receiver = receiver_factory(500)
    webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["requested"],
        actor=world.actor(world.admin),
    )
    promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    rq_queues["default"].connection.flushdb()
    # Two of its four attempts were made before Redis lost the job.
    WebhookDelivery.objects.update(attempts=2)
    assert reconcile() == 2
    run_worker()
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 4 and len(receiver.received) == 2  # one try and the one retry left
    assert delivery.given_up_at is not None and delivery.delivered_at is None and "HTTP 500" in delivery.error
    rq_queues["default"].connection.flushdb()
    assert reconcile() == 0
    run_worker()
    assert WebhookDelivery.objects.get().attempts == 4 and len(receiver.received) == 2


def test_webhook_urls_must_be_http_and_only_admins_add_them(world):
    for url in ("ftp://example.com/x", "file:///etc/passwd", "javascript:alert(1)"):
        with pytest.raises(InvalidInput, match="http"):
            webhook_create(integration=world.integration, url=url, secret=SECRET, actor=world.actor(world.admin))
    with pytest.raises(NotAllowed):
        webhook_create(
            integration=world.integration,
            url="https://hooks.example.com/x",
            secret=SECRET,
            actor=world.actor(world.alice),
        )
