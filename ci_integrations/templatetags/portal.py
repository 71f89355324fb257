"""Small template filters for the portal's pages."""

from django import template

register = template.Library()


@register.filter
def web_link(url: str) -> str:
    """The URL when it is http(s), else an empty string: metadata links must never run script (javascript:…)."""
    return url if isinstance(url, str) and url.lower().startswith(("https://", "http://")) else ""


@register.filter
def percent(done: int, total: int) -> int:
    return int(100 * done / total) if total else 0


@register.filter
def as_json(value) -> str:
    """Plain JSON text (autoescaped by the template like any other string)."""
    import json

    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


@register.filter
def short_digest(digest: str):
    """A digest as 12 hex characters with the full value in a tooltip (cheaper than an include in long loops)."""
    from django.utils.html import format_html

    return format_html('<code class="digest" title="{}">{}</code>', digest, digest.removeprefix("sha256:")[:12])
