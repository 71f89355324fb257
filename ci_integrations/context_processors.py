"""What every page shows: the emergency stop's banner while it is pulled."""

from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from ci_integrations.services.emergency_stop import emergency_stop_banner


def emergency_stop(request) -> dict:
    """`emergency_stop`: {reason, started_by, started_at} of the stop in force, or None; lazy, and read through the
    cache, so pages pay no query for it."""
    return {"emergency_stop": SimpleLazyObject(lambda: emergency_stop_banner() or {})}
