"""Webhooks beyond the JSON body: Standard Webhooks signatures checked by the standardwebhooks package, Slack and
Teams formats, system-wide webhooks from the config file, and retrying a given-up delivery."""

import base64
import json

import pytest
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from ci_integrations.models import Webhook, WebhookDelivery
from ci_integrations.services import notifications
from ci_integrations.services.actors import Actor
from ci_integrations.services.config import config_apply, config_export
from ci_integrations.services.config_reader import config_read
from ci_integrations.services.emergency_stop import emergency_stop_pull
from ci_integrations.services.errors import NotAllowed, StateConflict
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.webhooks import webhook_create, webhook_delivery_retry
from tests.promotions.conftest import place

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
SECRET = "s3cret-s3cret-s3cret"
BASE = "https://p2p.example.com"
ADMIN = Actor.system("test")


@pytest.fixture(autouse=True)
def base_url(settings):
    settings.P2P_BASE_URL = BASE


def verifier(secret: str = SECRET) -> StandardWebhook:
    """What a receiver configures: the secret as a Standard Webhooks `whsec_` key."""
    return StandardWebhook("whsec_" + base64.b64encode(secret.encode()).decode())


def test_every_attempt_carries_standard_webhooks_headers_that_verify_under_one_message_id(
    world, run_worker, receiver_factory
):
    receiver = receiver_factory(500, 200)
    webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["requested"],
        actor=world.actor(world.admin),
    )
    promotion_request(artifact=place(world, "qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    run_worker()
    assert len(receiver.received) == 2
    ids = set()
    for headers, body in receiver.received:
        payload = verifier().verify(body, headers)
        assert payload["event"] == "requested"
        assert headers["X-P2P-Signature"].startswith("sha256=")  # today's header stays
        ids.add(headers["webhook-id"])
    assert len(ids) == 1  # a retry is the same message, so receivers can drop repeats
    headers, body = receiver.received[-1]
    with pytest.raises(WebhookVerificationError):
        verifier().verify(body.replace(b"staging", b"prod"), headers)
    with pytest.raises(WebhookVerificationError):
        verifier("another-secret-entirely").verify(body, headers)


def test_slack_webhooks_get_block_kit_with_a_button_to_the_approval_page(world, run_worker, receiver_factory):
    receiver = receiver_factory(200)
    webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["approval_needed"],
        format="slack",
        actor=world.actor(world.admin),
    )
    promotion = promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    run_worker()
    ((headers, body),) = receiver.received
    message = verifier().verify(body, headers)
    assert "waits for 2 approval(s)" in message["text"]
    assert [block["type"] for block in message["blocks"]] == ["section", "section", "actions"]
    assert message["blocks"][0]["text"]["type"] == "mrkdwn"
    (button,) = message["blocks"][2]["elements"]
    assert button["type"] == "button" and button["url"] == f"{BASE}/promotions/{promotion.pk}/"
    assert button["text"] == {"type": "plain_text", "text": "Review and approve"}
    fields = {field["text"].split("\n")[0]: field["text"].split("\n")[1] for field in message["blocks"][1]["fields"]}
    assert fields["*Route*"] == "staging → prod" and fields["*Integration*"] == world.integration.name


def test_teams_webhooks_get_an_adaptive_card_with_an_open_url_action(world, run_worker, receiver_factory):
    receiver = receiver_factory(200)
    webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["approval_needed"],
        format="teams",
        actor=world.actor(world.admin),
    )
    promotion = promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    run_worker()
    ((headers, body),) = receiver.received
    message = json.loads(body)
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert {element["type"] for element in card["body"]} == {"TextBlock", "FactSet"}
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Review and approve", "url": f"{BASE}/promotions/{promotion.pk}/"}
    ]


def _notifications_file(url: str, **hook) -> dict:
    return {"notifications": {"webhooks": [{"name": "releases", "url": url, **hook}]}}


def test_system_wide_webhooks_from_the_config_file_hear_every_integration_and_the_stop(
    world, run_worker, receiver_factory
):
    receiver = receiver_factory(200)
    file = _notifications_file(receiver.url, secret=SECRET, format="json", events=["approval_needed", "stopped"])
    result = config_apply(data=file, actor=ADMIN)
    assert result.changes == [f"+ webhook (system) releases → {receiver.url}"]
    assert config_apply(data=file, actor=ADMIN).changes == []  # idempotent
    promotion_request(artifact=place(world, "staging", "v1"), to_env="prod", actor=world.actor(world.carol))
    promotion_request(artifact=place(world, "qa", "v2"), to_env="staging", actor=world.actor(world.carol))
    emergency_stop_pull(reason="INC-7 bad base image", actor=world.actor(world.admin))
    run_worker()
    events = [verifier().verify(body, headers)["event"] for headers, body in receiver.received]
    assert sorted(events) == ["approval_needed", "stopped"]  # the filter holds: no "requested", no "succeeded"
    stopped = next(json.loads(body) for _, body in receiver.received if b'"stopped"' in body)
    assert "INC-7" in stopped["text"] and stopped["url"] == f"{BASE}/stop/"

    exported = config_export()["notifications"]
    assert exported == {
        "webhooks": [{"name": "releases", "url": receiver.url, "events": ["approval_needed", "stopped"]}]
    }
    assert config_apply(data={"notifications": exported}, actor=ADMIN).changes == []  # the stored secret is kept
    assert Webhook.objects.get(name="releases").get_secret() == SECRET
    assert config_apply(data={"notifications": {"webhooks": []}}, actor=ADMIN).changes == [
        "- webhook (system) releases"
    ]
    assert not Webhook.objects.filter(integration__isnull=True).exists()


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ({"url": "ftp://x", "secret": SECRET}, "notifications.webhooks[0].url: 'ftp://x' is not an http(s) URL"),
        ({"url": "https://x.example", "secret": SECRET, "format": "discord"}, "notifications.webhooks[0].format"),
        ({"url": "https://x.example", "secret": SECRET, "events": ["deployed"]}, "unknown events ['deployed']"),
        ({"url": "https://x.example"}, "notifications.webhooks[0].secret: a new webhook needs a secret"),
        ({"url": "https://x.example", "secret": SECRET, "colour": "red"}, "notifications.webhooks[0].colour: unknown"),
    ],
)
def test_the_notifications_section_names_what_is_wrong(db, hook, problem):
    problems = config_read({"notifications": {"webhooks": [{"name": "releases", **hook}]}}).problems
    assert any(problem in line for line in problems), problems


def test_a_platform_admin_can_retry_a_given_up_delivery_once(world, run_worker, receiver_factory):
    receiver = receiver_factory(500, 500, 500, 500, 200)
    hook = webhook_create(
        integration=world.integration,
        url=receiver.url,
        secret=SECRET,
        events=["requested"],
        actor=world.actor(world.admin),
    )
    promotion_request(artifact=place(world, "qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    run_worker()
    delivery = WebhookDelivery.objects.get(webhook=hook)
    assert delivery.given_up_at is not None and delivery.attempts == 4
    with pytest.raises(NotAllowed):
        webhook_delivery_retry(delivery=delivery, actor=world.actor(world.alice))
    webhook_delivery_retry(delivery=delivery, actor=world.actor(world.admin))
    with pytest.raises(StateConflict):
        webhook_delivery_retry(delivery=delivery, actor=world.actor(world.admin))  # it is being tried already
    run_worker()
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None and delivery.attempts == 5 and delivery.response_status == 200


def test_a_notification_that_cannot_be_recorded_never_fails_the_promotion(world, run_worker, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("the webhook table is on fire")

    monkeypatch.setattr(notifications, "webhooks_notify", broken)
    promotion = promotion_request(artifact=world.register("qa", "v1"), to_env="staging", actor=world.actor(world.alice))
    run_worker()
    promotion.refresh_from_db()
    assert promotion.state == "succeeded"


def test_the_webhooks_page_shows_a_given_up_delivery_with_its_retry_button(world, client):
    hook = webhook_create(
        integration=world.integration, url="https://hooks.example.com/x", secret=SECRET, actor=world.actor(world.admin)
    )
    delivery = WebhookDelivery.objects.create(
        webhook=hook,
        event="failed",
        payload={"event": "failed"},
        attempts=5,
        response_status=502,
        error="HTTP 502: <b>",
    )
    WebhookDelivery.objects.filter(pk=delivery.pk).update(given_up_at=timezone.now())
    client.force_login(world.admin)
    overview = client.get(reverse("webhooks")).content.decode()
    assert world.integration.name in overview and "JSON" in overview
    page = client.get(reverse("webhook_deliveries", args=[hook.pk])).content.decode()
    assert "given up" in page and "502" in page and "HTTP 502: &lt;b&gt;" in page
    assert reverse("webhook_delivery_retry", args=[delivery.pk]) in page
