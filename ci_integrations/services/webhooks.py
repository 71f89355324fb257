"""Outgoing webhooks: signed notifications of promotion events, delivered by RQ jobs with retries.

A webhook belongs to an integration, or is system-wide (no integration: the config file's `notifications:` section)
and then hears about every integration, and about the emergency stop. Its `format` shapes the body (our JSON, Slack
Block Kit, a Teams Adaptive Card: webhook_formats.py), built at each attempt from the payload the delivery keeps.

Signatures, both over the raw body: `X-P2P-Signature: sha256=<hex HMAC-SHA256>` under the webhook's secret, and the
Standard Webhooks headers (https://www.standardwebhooks.com/: `webhook-id`, stable across retries, `webhook-timestamp`
of the attempt and `webhook-signature: v1,<base64>`), made with the `standardwebhooks` package. Their key is the
secret's UTF-8 bytes, so a receiver's verifier takes `whsec_` + base64(secret); a secret that is itself `whsec_…`
is used as Standard Webhooks secrets are. Each delivery is a WebhookDelivery row (deliveries.py keeps its retries).

May import: models, deliveries, webhook_formats, links, audit, background.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit

import requests
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook as StandardWebhook

from ci_integrations.input_rules import is_http_url
from ci_integrations.models import EmergencyStop, Integration, Promotion, Webhook, WebhookDelivery
from ci_integrations.registry.errors import cut, redact
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.deliveries import WEBHOOK_DELIVERIES
from ci_integrations.services.errors import InvalidInput, NotAllowed, StateConflict
from ci_integrations.services.links import portal_url
from ci_integrations.services.webhook_formats import webhook_body

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-P2P-Signature"
EVENT_HEADER = "X-P2P-Event"
DELIVERY_HEADER = "X-P2P-Delivery"
TIMEOUT = (5, 10)


def webhook_sign(secret: str, body: bytes) -> str:
    """The signature header value for `body`: "sha256=<hex>"."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_webhook_headers(secret: str, *, message_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers signing `body` as message `message_id` sent `at` (UTC)."""
    signer = StandardWebhook(secret if secret.startswith("whsec_") else secret.encode())
    at = at.astimezone(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signer.sign(msg_id=message_id, timestamp=at, data=body.decode()),
    }


def _check_url(url: str) -> str:
    if not is_http_url(url):
        raise InvalidInput("webhook URL must be an http(s) URL", details={"url": "invalid"})
    return url


def _is_platform_admin(actor: Actor) -> bool:
    return bool(actor.person and actor.person.is_staff)


def webhook_create(
    *,
    integration: Integration,
    url: str,
    secret: str,
    events: list[str] | None = None,
    format: str = Webhook.Format.JSON,  # noqa: A002 - the config file's word
    actor: Actor,
) -> Webhook:
    """Add a webhook to an integration (platform admins). Audited without the secret."""
    if not _is_platform_admin(actor):
        raise NotAllowed("only platform admins may add webhooks")
    _check_url(url)
    if not secret or len(secret) < 16:
        raise InvalidInput("the webhook secret must be at least 16 characters", details={"secret": "too short"})
    if format not in Webhook.Format.values:
        raise InvalidInput(
            f"unknown webhook format {format!r}: use {Webhook.Format.values}", details={"format": format}
        )
    events = list(events or [])
    unknown = sorted(set(events) - set(Webhook.EVENTS))
    if unknown:
        raise InvalidInput(f"unknown webhook events {unknown}: use {Webhook.EVENTS}", details={"events": unknown})
    with transaction.atomic():
        hook = Webhook(integration=integration, url=url, events=events, format=format)
        hook.set_secret(secret)
        hook.save()
        audit_record(
            actor=actor, action="webhook.created", obj=hook, after={"url": url, "events": events, "format": format}
        )
    return hook


def _text(promotion: Promotion, event: str, actor: Actor, comment: str) -> str:
    what = f"{promotion.integration.name} {promotion.tag}@{promotion.digest[:19]}"
    route = f"{promotion.from_bucket.env if promotion.from_bucket_id else '?'} → {promotion.to_bucket.env}"
    sentences = {
        "requested": f"{actor.label} requested promoting {what} ({route})",
        "approval_needed": f"Promoting {what} ({route}) waits for {promotion.required_approvals} approval(s)",
        "approved": f"{actor.label} approved promoting {what} ({route}); copying",
        "rejected": f"{actor.label} rejected promoting {what} ({route})",
        "succeeded": f"Promoted {what} ({route})",
        "failed": f"Promotion of {what} ({route}) failed: {promotion.error}",
        "rolled_back": f"Rolled {promotion.to_bucket.env} of {promotion.integration.name} back to {what}",
        "expired": f"The request to promote {what} ({route}) expired: {promotion.error}",
    }
    text = sentences.get(event, f"{event}: {what}")
    return f"{text}: {comment}" if comment else text


def _listening(event: str, integration_id: int | None) -> list[Webhook]:
    """Active webhooks that want `event`: the integration's own and the system-wide ones (only those for events that
    concern no integration)."""
    scope = Q(integration__isnull=True)
    if integration_id is not None:
        scope |= Q(integration_id=integration_id)
    return [hook for hook in Webhook.objects.filter(scope, active=True) if hook.wants(event)]


def _deliver_on_commit(hooks: list[Webhook], event: str, payload: dict) -> list[WebhookDelivery]:
    deliveries = []
    for hook in hooks:
        delivery = WebhookDelivery.objects.create(webhook=hook, event=event, payload=payload)
        WEBHOOK_DELIVERIES.enqueue_on_commit(delivery)
        deliveries.append(delivery)
    return deliveries


def webhooks_notify(*, promotion: Promotion, event: str, actor: Actor, comment: str = "") -> list[WebhookDelivery]:
    """Create one delivery per interested webhook and enqueue them after the caller's transaction commits."""
    hooks = _listening(event, promotion.integration_id)
    if not hooks:
        return []
    payload = {
        "event": event,
        "text": _text(promotion, event, actor, comment),
        "url": portal_url("promotion", promotion.pk),
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
            "required_approvals": promotion.required_approvals,
        },
        "actor": actor.label,
        "comment": comment,
        "at": timezone.now().isoformat(),
    }
    return _deliver_on_commit(hooks, event, payload)


def webhooks_notify_stop(*, stop: EmergencyStop, actor: Actor) -> list[WebhookDelivery]:
    """Tell the system-wide webhooks that want `stopped` that the emergency stop was pulled."""
    hooks = _listening("stopped", None)
    if not hooks:
        return []
    payload = {
        "event": "stopped",
        "text": f"Emergency stop pulled by {actor.label}: no promotion starts until it is released ({stop.reason})",
        "url": portal_url("emergency_stop"),
        "stop": {"reason": stop.reason, "started_by": stop.started_by, "started_at": stop.started_at.isoformat()},
        "actor": actor.label,
        "comment": stop.reason,
        "at": timezone.now().isoformat(),
    }
    return _deliver_on_commit(hooks, "stopped", payload)


def _scrubbed(text: str, url: str) -> str:
    """`text` without the webhook URL's path and query, which are the secret of Slack-style incoming webhooks
    (HTTP libraries quote them in their errors), and without anything redact() recognises."""
    parts = urlsplit(url)
    text = text.replace(url, f"{parts.scheme}://{parts.netloc}/…")
    for secret in (parts.path + (f"?{parts.query}" if parts.query else ""), parts.path, parts.query):
        if len(secret) > 1:
            text = text.replace(secret, "/…")
    return redact(text)


def webhook_message_id(delivery: WebhookDelivery) -> str:
    """The Standard Webhooks message id of a delivery: the same for every attempt, so receivers can drop repeats."""
    return f"msg_p2p_{delivery.pk}"


def webhook_deliver(*, delivery_id: int) -> None:
    """One delivery attempt; raises DeliveryFailed (so RQ retries) unless the endpoint answered 2xx."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.delivered_at is not None or delivery.given_up_at is not None:
        return
    hook = delivery.webhook
    body = json.dumps(
        webhook_body(hook.format, delivery.payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    secret = hook.get_secret()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "p2p-portal-webhooks",
        SIGNATURE_HEADER: webhook_sign(secret, body),
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: str(delivery.pk),
        **standard_webhook_headers(secret, message_id=webhook_message_id(delivery), body=body, at=timezone.now()),
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
    WEBHOOK_DELIVERIES.attempted(delivery_id, error=cut(error), response_status=status)


def webhook_delivery_retry(*, delivery: WebhookDelivery, actor: Actor) -> WebhookDelivery:
    """One more attempt at a delivery that was given up (platform admins). Audited."""
    if not _is_platform_admin(actor):
        raise NotAllowed("only platform admins may retry webhook deliveries")
    with transaction.atomic():
        if not WEBHOOK_DELIVERIES.retry_once(delivery.pk):
            raise StateConflict(f"delivery {delivery.pk} is not given up: it was delivered or is still being tried")
        audit_record(
            actor=actor,
            action="webhook.delivery_retried",
            obj=delivery.webhook,
            after={"delivery": delivery.pk, "event": delivery.event, "attempts": delivery.attempts},
        )
    delivery.refresh_from_db()
    return delivery


def webhooks_reconcile() -> int:
    """Re-enqueue open deliveries whose RQ job is gone (Redis flushed, worker killed); mark those whose attempts
    are spent as given up. Returns how many were re-enqueued. Called by the reconciler."""
    return WEBHOOK_DELIVERIES.reconcile()
