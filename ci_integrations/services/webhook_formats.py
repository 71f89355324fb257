"""What a webhook's receiver is sent, by the webhook's format: our own JSON, a Slack message, a Microsoft Teams card.

Every format is built from the same event payload (webhooks.py), so the delivery history shows one shape whatever
the receiver asked for; each carries the event's sentence and a link to the promotion's page, where it is approved.

May import: nothing of ours.
"""

from __future__ import annotations

JSON = "json"
SLACK = "slack"
TEAMS = "teams"
BUTTONS = {"approval_needed": "Review and approve", "stopped": "Open the emergency stop"}


def _button(payload: dict) -> str:
    return BUTTONS.get(payload.get("event", ""), "Open in P2P Portal")


def _facts(payload: dict) -> list[tuple[str, str]]:
    promotion = payload.get("promotion") or {}
    if not promotion:
        return []
    facts = [
        ("Integration", promotion.get("integration") or ""),
        ("Route", f"{promotion.get('from') or '?'} → {promotion.get('to') or '?'}"),
        ("Tag", promotion.get("tag") or ""),
        ("Digest", promotion.get("digest") or ""),
        ("State", promotion.get("state") or ""),
    ]
    return [(title, value) for title, value in facts if value]


def _slack_escaped(text: str) -> str:
    # Slack's mrkdwn reads &, < and > as control characters: https://api.slack.com/reference/surfaces/formatting#escaping
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(payload: dict) -> dict:
    """A Slack incoming-webhook message with Block Kit blocks and a plain `text` fallback for notifications.

    https://api.slack.com/messaging/webhooks (the incoming-webhook body),
    https://api.slack.com/reference/block-kit/blocks (section, context and actions blocks),
    https://api.slack.com/reference/block-kit/block-elements#button (a button with a url).
    """
    text = payload.get("text", "")
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": _slack_escaped(text)[:3000]}}]
    facts = _facts(payload)
    if facts:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{title}*\n{_slack_escaped(value)}"[:2000]} for title, value in facts
                ],
            }
        )
    if payload.get("url"):
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": _button(payload)},
                        "url": payload["url"],
                        **({"style": "primary"} if payload.get("event") == "approval_needed" else {}),
                    }
                ],
            }
        )
    return {"text": text, "blocks": blocks}


def teams_message(payload: dict) -> dict:
    """A Microsoft Teams incoming-webhook message carrying one Adaptive Card (schema 1.4) with an Open URL action.

    https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using#send-adaptive-cards-using-an-incoming-webhook
    (the message and attachment shape, also what Workflows' "post to a channel when a webhook request is received"
    accepts), https://adaptivecards.io/explorer/ (TextBlock, FactSet, Action.OpenUrl).
    """
    body: list[dict] = [
        {"type": "TextBlock", "text": "P2P Portal", "weight": "Bolder", "size": "Medium"},
        {"type": "TextBlock", "text": payload.get("text", ""), "wrap": True},
    ]
    facts = _facts(payload)
    if facts:
        body.append({"type": "FactSet", "facts": [{"title": title, "value": value} for title, value in facts]})
    card: dict = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if payload.get("url"):
        card["actions"] = [{"type": "Action.OpenUrl", "title": _button(payload), "url": payload["url"]}]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def webhook_body(format_: str, payload: dict) -> dict:
    """The body a webhook of `format_` is sent for `payload`."""
    if format_ == SLACK:
        return slack_message(payload)
    if format_ == TEAMS:
        return teams_message(payload)
    return payload
