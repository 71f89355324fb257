"""Outgoing webhooks: signed JSON notifications of promotion events, delivered by RQ jobs with retries.

Body: JSON with a Slack-compatible `text`. Header `X-P2P-Signature: sha256=<hex HMAC-SHA256 of the raw body>`
under the webhook's secret. Each delivery is a WebhookDelivery row counting its attempts and keeping the last
outcome; the job raises on failure so RQ retries it at the configured intervals. A delivery whose attempts are spent
is marked given up; the reconciler re-enqueues open deliveries whose job Redis lost.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from rq import Retry

from ci_integrations.input_rules import is_http_url
from ci_integrations.models import Integration, Promotion, Webhook, WebhookDelivery
from ci_integrations.registry.errors import cut, redact
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import DELIVER_WEBHOOK, requeue_if_lost, transition
from ci_integrations.services.errors import InvalidInput, NotAllowed

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-P2P-Signature"
EVENT_HEADER = "X-P2P-Event"
DELIVERY_HEADER = "X-P2P-Delivery"
TIMEOUT = (5, 10)


class DeliveryFailed(Exception):
    """Raised by the delivery job so RQ schedules the next attempt."""


def _retry_intervals() -> list[int]:
    return list(getattr(settings, "P2P_WEBHOOK_RETRY_INTERVALS", [10, 60, 300, 900]))


def _max_attempts() -> int:
    """One try plus one per retry interval."""
    return len(_retry_intervals()) + 1


def _retry_left(attempts_done: int) -> Retry | None:
    """RQ's retries for a delivery that has made `attempts_done` attempts."""
    intervals = _retry_intervals()[attempts_done:]
    return Retry(max=len(intervals), interval=intervals) if intervals else None


def webhook_sign(secret: str, body: bytes) -> str:
    """The signature header value for `body`: "sha256=<hex>"."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _check_url(url: str) -> str:
    if not is_http_url(url):
        raise InvalidInput("webhook URL must be an http(s) URL", details={"url": "invalid"})
    return url


def webhook_create(
    *, integration: Integration, url: str, secret: str, events: list[str] | None = None, actor: Actor
) -> Webhook:
    """Add a webhook to an integration (platform admins). Audited without the secret."""
    if not (actor.person and actor.person.is_staff):
        raise NotAllowed("only platform admins may add webhooks")
    _check_url(url)
    if not secret or len(secret) < 16:
        raise InvalidInput("the webhook secret must be at least 16 characters", details={"secret": "too short"})
    events = list(events or [])
    unknown = sorted(set(events) - set(Webhook.EVENTS))
    if unknown:
        raise InvalidInput(f"unknown webhook events {unknown}: use {Webhook.EVENTS}", details={"events": unknown})
    with transaction.atomic():
        hook = Webhook(integration=integration, url=url, events=events)
        hook.set_secret(secret)
        hook.save()
        audit_record(actor=actor, action="webhook.created", obj=hook, after={"url": url, "events": events})
    return hook


def _text(promotion: Promotion, event: str, actor: Actor, comment: str) -> str:
    what = f"{promotion.integration.name} {promotion.tag}@{promotion.digest[:19]}"
    route = f"{promotion.from_bucket.env if promotion.from_bucket_id else '?'} → {promotion.to_bucket.env}"
    sentences = {
        "requested": f"{actor.label} requested promoting {what} ({route})",
        "approved": f"{actor.label} approved promoting {what} ({route}); copying",
        "rejected": f"{actor.label} rejected promoting {what} ({route})",
        "succeeded": f"Promoted {what} ({route})",
        "failed": f"Promotion of {what} ({route}) failed: {promotion.error}",
        "rolled_back": f"Rolled {promotion.to_bucket.env} of {promotion.integration.name} back to {what}",
    }
    text = sentences.get(event, f"{event}: {what}")
    return f"{text}: {comment}" if comment else text


def webhooks_notify(*, promotion: Promotion, event: str, actor: Actor, comment: str = "") -> list[WebhookDelivery]:
    """Create one delivery per interested webhook and enqueue them after the caller's transaction commits."""
    hooks = [h for h in Webhook.objects.filter(integration_id=promotion.integration_id, active=True) if h.wants(event)]
    if not hooks:
        return []
    payload = {
        "event": event,
        "text": _text(promotion, event, actor, comment),
        "promotion": {
            "id": promotion.pk,
            "kind": promotion.kind,
            "state": promotion.state,
            "integration": promotion.integration.name,
            "from": promotion.from_bucket.env if promotion.from_bucket_id else None,
            "to": promotion.to_bucket.env,
            "digest": promotion.digest,
            "tag": promotion.tag,
            "image": f"{promotion.to_bucket.image_name}@{promotion.digest}",
            "error": promotion.error,
        },
        "actor": actor.label,
        "comment": comment,
        "at": timezone.now().isoformat(),
    }
    deliveries = []
    for hook in hooks:
        delivery = WebhookDelivery.objects.create(webhook=hook, event=event, payload=payload)
        delivery.job_id = DELIVER_WEBHOOK.new_job_id(delivery.pk)
        delivery.save(update_fields=["job_id"])
        DELIVER_WEBHOOK.enqueue_on_commit(delivery.pk, job_id=delivery.job_id, retry=_retry_left(0))
        deliveries.append(delivery)
    return deliveries


def _scrubbed(text: str, url: str) -> str:
    """`text` without the webhook URL's path and query, which are the secret of Slack-style incoming webhooks
    (HTTP libraries quote them in their errors), and without anything redact() recognises."""
    parts = urlsplit(url)
    text = text.replace(url, f"{parts.scheme}://{parts.netloc}/…")
    for secret in (parts.path + (f"?{parts.query}" if parts.query else ""), parts.path, parts.query):
        if len(secret) > 1:
            text = text.replace(secret, "/…")
    return redact(text)


def webhook_deliver(*, delivery_id: int) -> None:
    """One delivery attempt; raises DeliveryFailed (so RQ retries) unless the endpoint answered 2xx."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.delivered_at is not None or delivery.given_up_at is not None:
        return
    hook = delivery.webhook
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "p2p-portal-webhooks",
        SIGNATURE_HEADER: webhook_sign(hook.get_secret(), body),
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: str(delivery.pk),
    }
    status, error = None, ""
    try:
        _check_url(hook.url)
        response = requests.post(hook.url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False)
        status = response.status_code
        if not 200 <= status < 300:
            # The endpoint's own words, a little of them: its answer may be any size.
            error = _scrubbed(f"HTTP {status}: {cut(response.text, 200)}", hook.url)
    except (requests.RequestException, InvalidInput) as exc:
        error = _scrubbed(f"{exc.__class__.__name__}: {exc}", hook.url)
    # Scrubbed before it is cut, so no secret's prefix is left behind; cut so no endpoint can fill the row.
    error = cut(error)
    WebhookDelivery.objects.filter(pk=delivery_id).update(
        attempts=F("attempts") + 1,
        response_status=status,
        error=error,
        delivered_at=timezone.now() if not error else None,
    )
    if error:
        # The last retry failed: the delivery is finished, and the reconciler leaves it alone.
        WebhookDelivery.objects.filter(pk=delivery_id, delivered_at__isnull=True, attempts__gte=_max_attempts()).update(
            given_up_at=timezone.now()
        )
        raise DeliveryFailed(f"webhook {hook.pk} delivery {delivery_id}: {error}")


def webhooks_reconcile() -> int:
    """Re-enqueue open deliveries whose RQ job is gone (Redis flushed, worker killed); mark those whose attempts
    are spent as given up. Returns how many were re-enqueued. Called by the reconciler."""
    count = 0
    open_deliveries = WebhookDelivery.objects.filter(delivered_at__isnull=True, given_up_at__isnull=True)
    for delivery in open_deliveries.only("pk", "job_id", "attempts").order_by("created_at"):
        if delivery.attempts >= _max_attempts():
            if not DELIVER_WEBHOOK.is_live(delivery.job_id):
                transition(open_deliveries.filter(pk=delivery.pk, job_id=delivery.job_id), given_up_at=timezone.now())
            continue
        requeued = requeue_if_lost(
            DELIVER_WEBHOOK,
            open_deliveries,
            pk=delivery.pk,
            job_id=delivery.job_id,
            retry=_retry_left(delivery.attempts),
        )
        count += requeued is not None
    return count
