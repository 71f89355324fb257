"""Small template filters for the portal's pages."""

import json

from django import template
from django.utils.html import format_html

from ci_integrations.input_rules import is_http_url

register = template.Library()


@register.filter
def web_link(url: str) -> str:
    """The URL when it is http(s), else an empty string: metadata links must never run script (javascript:…)."""
    return url if is_http_url(url) else ""


@register.filter
def percent(done: int, total: int) -> int:
    return int(100 * done / total) if total else 0


@register.filter
def as_json(value) -> str:
    """Plain JSON text (autoescaped by the template like any other string)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


@register.filter
def short_digest(digest: str):
    """A digest as 12 hex characters with the full value in a tooltip (cheaper than an include in long loops)."""
    return format_html('<code class="digest" title="{}">{}</code>', digest, digest.removeprefix("sha256:")[:12])
