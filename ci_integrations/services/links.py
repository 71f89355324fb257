"""Links to the portal's pages from outside it (emails, chat messages), on P2P_BASE_URL.

May import: Django only.
"""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse


def portal_url(name: str, *args) -> str:
    """The absolute address of the page named `name` (a path alone when P2P_BASE_URL is unset)."""
    return f"{settings.P2P_BASE_URL}{reverse(name, args=args)}"
