"""Webhooks in the config file: each integration's `webhooks:`, and the system-wide ones of the `notifications:`
section, read, applied and exported the same way.

```yaml
notifications:
  webhooks:
    - name: releases-channel                 # system-wide webhooks are kept in step with the file by name
      url: https://hooks.slack.com/services/…
      secret: ${RELEASES_WEBHOOK_SECRET}
      format: slack                          # slack | teams | json (default)
      events: [approval_needed, succeeded, failed, stopped]   # none: every event
```

System-wide webhooks hear every integration's events and the emergency stop's `stopped`. Applying creates and updates
them, and removes those the file no longer lists (only when it has a `notifications:` key at all). Secrets are never
exported; a webhook already stored keeps its secret when the file names none.

May import: models, audit, actors, input_rules.
"""

from __future__ import annotations

from typing import Any

from ci_integrations.input_rules import NAME, is_http_url
from ci_integrations.models import Webhook
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record

WEBHOOK_KEYS = {"url", "secret", "events", "format"}
SYSTEM_WEBHOOK_KEYS = {"name", *WEBHOOK_KEYS}
NOTIFICATIONS_KEYS = {"webhooks"}


def webhook_read(reader, path: str, hook: dict, *, stored: Webhook | None, keys: set[str] = WEBHOOK_KEYS) -> dict:
    """One webhook's spec. Its secret may be left out only when the webhook is already stored (export never writes
    one); `secret` None then means "keep the stored one"."""
    reader.known_keys(path, hook, keys)
    url = hook.get("url")
    if not is_http_url(url):
        reader.problem(f"{path}.url", f"{url!r} is not an http(s) URL")
    events = reader.listed(f"{path}.events", hook.get("events"))
    unknown = [event for event in events if event not in Webhook.EVENTS]
    if unknown:
        reader.problem(f"{path}.events", f"unknown events {unknown}; known: {', '.join(Webhook.EVENTS)}")
    format_ = reader.choice(f"{path}.format", hook.get("format", Webhook.Format.JSON), Webhook.Format.values)
    secret = None
    if "secret" in hook:
        secret = reader.secret_text(f"{path}.secret", hook["secret"])
    elif stored is None:
        reader.problem(f"{path}.secret", "a new webhook needs a secret (${NAME} reads it from the env)")
    return {"url": url, "secret": secret, "events": [] if unknown else events, "format": format_ or "json"}


def webhook_apply(webhook: Webhook, spec: dict, *, actor: Actor, source: str, label: str) -> str | None:
    """Write one webhook as its spec says; returns the change line, or None when nothing changed. Audited."""
    existing = webhook.pk is not None
    same_secret = spec["secret"] is None or (existing and webhook.get_secret() == spec["secret"])
    if (
        existing
        and same_secret
        and (webhook.url, webhook.events, webhook.format)
        == (
            spec["url"],
            spec["events"],
            spec["format"],
        )
    ):
        return None
    webhook.url, webhook.events, webhook.format = spec["url"], spec["events"], spec["format"]
    if spec["secret"] is not None:
        webhook.set_secret(spec["secret"])
    webhook.save()
    audit_record(
        actor=actor,
        action="config.update" if existing else "config.create",
        obj=webhook,
        after={"url": spec["url"], "events": spec["events"], "format": spec["format"]},
        reason=f"apply_config {source}",
    )
    return f"{'~' if existing else '+'} webhook {label} → {spec['url']}"


def webhook_export(webhook: Webhook) -> dict[str, Any]:
    """A webhook as the file writes it (never its secret)."""
    return {
        **({"name": webhook.name} if webhook.integration_id is None else {}),
        "url": webhook.url,
        **({"format": webhook.format} if webhook.format != Webhook.Format.JSON else {}),
        **({"events": list(webhook.events)} if webhook.events else {}),
    }


def notifications_read(reader, data: dict) -> dict[str, dict] | None:
    """The file's system-wide webhooks by name, or None when the file has no `notifications:` key."""
    if "notifications" not in data:
        return None
    section = reader.mapping("notifications", data.get("notifications"))
    reader.known_keys("notifications", section, NOTIFICATIONS_KEYS)
    stored = {hook.name: hook for hook in Webhook.objects.filter(integration__isnull=True)}
    found: dict[str, dict] = {}
    for _, path, item in reader.mappings("notifications.webhooks", section.get("webhooks")):
        name = item.get("name")
        if not NAME.is_valid(name):
            reader.problem(f"{path}.name", NAME.problem(name, word="webhook"))
            name = None
        elif name in found:
            reader.problem(f"{path}.name", f"webhook {name!r} is listed twice")
        spec = webhook_read(reader, path, item, stored=stored.get(name), keys=SYSTEM_WEBHOOK_KEYS)
        if name:
            found[name] = spec
    return found


def notifications_apply(*, specs: dict[str, dict] | None, actor: Actor, source: str) -> list[str]:
    """Create, update and remove the system-wide webhooks; one change line and one audit entry per webhook changed."""
    if specs is None:
        return []
    changes = []
    existing = {hook.name: hook for hook in Webhook.objects.filter(integration__isnull=True)}
    for name, spec in specs.items():
        hook = existing.get(name) or Webhook(integration=None, name=name)
        if line := webhook_apply(hook, spec, actor=actor, source=source, label=f"(system) {name}"):
            changes.append(line)
    for name, hook in existing.items():
        if name not in specs:
            audit_record(
                actor=actor,
                action="config.delete",
                obj=hook,
                before={"name": name, "url": hook.url, "events": hook.events, "format": hook.format},
                reason=f"apply_config {source}",
            )
            hook.delete()
            changes.append(f"- webhook (system) {name}")
    return changes


def notifications_export() -> dict | None:
    """The `notifications:` section as the file writes it, or None when there is no system-wide webhook."""
    hooks = [webhook_export(hook) for hook in Webhook.objects.filter(integration__isnull=True).order_by("name", "id")]
    return {"webhooks": hooks} if hooks else None
