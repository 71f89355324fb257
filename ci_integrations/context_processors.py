"""What every page shows: the emergency stop's banner while it is pulled."""

from __future__ import annotations

from ci_integrations.services.emergency_stop import emergency_stop_active


def emergency_stop(request) -> dict:
    """`emergency_stop`: the stop in force, or None (one query per page)."""
    return {"emergency_stop": emergency_stop_active()}
