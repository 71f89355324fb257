"""The emergency stop: one switch that blocks every new promotion and holds the queued ones.

While it is pulled, the policy refuses requests (services/policy.py), an approval completing its quorum leaves the
promotion approved and waiting, queued promotions are held (moved back to approved, waiting) and no copy job starts
(the claim in services/copying.py is conditional on no stop). Copies already running finish. Releasing it lets the
scheduler (services/scheduler.py) queue whatever waits, on its next pass. Pulling and releasing are audited.

May import: models, audit, actors, errors, background.
"""

from __future__ import annotations

import logging

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Exists
from django.utils import timezone

from ci_integrations.models import EmergencyStop, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import transition
from ci_integrations.services.errors import InvalidInput, NotAllowed, StateConflict

logger = logging.getLogger(__name__)

PERMISSION = "ci_integrations.use_emergency_stop"
# The banner every page shows reads the stop through the cache (Redis), so pages pay no query for it; pulling and
# releasing clear it on commit, and it expires soon anyway. The policy and the copy claim always ask PostgreSQL.
BANNER_KEY = "emergency-stop-banner"
BANNER_SECONDS = 10


def emergency_stop_active() -> EmergencyStop | None:
    """The stop in force now, or None."""
    return EmergencyStop.objects.filter(active=True).first()


def emergency_stop_banner() -> dict | None:
    """What the banner shows of the stop in force ({reason, started_by, started_at}), or None; from the cache when
    it holds the answer, else from the database (and then cached)."""
    try:
        cached = cache.get(BANNER_KEY)
    except Exception:  # noqa: BLE001 - Redis down: ask the database
        logger.warning("the cache is unreachable; the emergency stop banner reads the database")
        cached = None
    if cached is not None:
        return cached or None
    stop = emergency_stop_active()
    banner = {"reason": stop.reason, "started_by": stop.started_by, "started_at": stop.started_at} if stop else {}
    try:
        cache.set(BANNER_KEY, banner, BANNER_SECONDS)
    except Exception:  # noqa: BLE001
        pass
    return banner or None


def _banner_changed() -> None:
    def forget() -> None:
        try:
            cache.delete(BANNER_KEY)
        except Exception:  # noqa: BLE001 - it expires within BANNER_SECONDS anyway
            logger.warning("could not clear the emergency stop banner from the cache")

    transaction.on_commit(forget)


def no_emergency_stop() -> Exists:
    """A condition for conditional updates: true while no stop is in force (so a claim and a stop never both win)."""
    return ~Exists(EmergencyStop.objects.filter(active=True))


def emergency_stop_waiting_text(stop: EmergencyStop) -> str:
    """Why a promotion waits while `stop` is in force, in the words pages and the API show."""
    return f"emergency stop by {stop.started_by} since {stop.started_at.isoformat(timespec='minutes')}: {stop.reason}"


def may_use_emergency_stop(actor: Actor) -> bool:
    """Platform admins and release managers (the use_emergency_stop permission), and whoever runs manage.py on the
    server (no user, no token); never a CI token."""
    if actor.user is None and actor.token is None:
        return True
    person = actor.person
    return bool(not actor.is_ci_token and person and person.is_active and person.has_perm(PERMISSION))


def emergency_stop_pull(*, reason: str, actor: Actor) -> EmergencyStop:
    """Stop every promotion: block new ones and hold the queued ones. Audited with the promotions it held."""
    if not may_use_emergency_stop(actor):
        raise NotAllowed(f"{actor.label} may not use the emergency stop (platform admins and release managers may)")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("the emergency stop needs a reason", details={"reason": "required"})
    if len(reason) > 1000:
        raise InvalidInput("the reason must be at most 1000 characters", details={"reason": "too long"})
    try:
        with transaction.atomic():
            stop = EmergencyStop.objects.create(reason=reason, started_by=actor.label)
            held = list(Promotion.objects.filter(state=Promotion.State.QUEUED).values_list("pk", flat=True))
            if held:
                transition(
                    Promotion.objects.filter(pk__in=held, state=Promotion.State.QUEUED),
                    state=Promotion.State.APPROVED,
                    waiting_for=emergency_stop_waiting_text(stop),
                )
            _banner_changed()
            audit_record(
                actor=actor,
                action="emergency_stop.pulled",
                obj=stop,
                after={"reason": reason, "held_promotions": held},
                reason=reason,
            )
    except IntegrityError:
        current = emergency_stop_active()
        by = f" (by {current.started_by}: {current.reason})" if current else ""
        raise StateConflict(f"the emergency stop is already pulled{by}") from None
    return stop


def emergency_stop_release(*, actor: Actor) -> EmergencyStop:
    """Let promotions go again; the scheduler queues those that waited, if their policy still allows. Audited."""
    if not may_use_emergency_stop(actor):
        raise NotAllowed(f"{actor.label} may not use the emergency stop (platform admins and release managers may)")
    with transaction.atomic():
        stop = EmergencyStop.objects.select_for_update().filter(active=True).first()
        if stop is None:
            raise StateConflict("the emergency stop is not pulled")
        stop.active = False
        stop.ended_at = timezone.now()
        stop.ended_by = actor.label
        stop.save(update_fields=["active", "ended_at", "ended_by"])
        _banner_changed()
        audit_record(
            actor=actor,
            action="emergency_stop.released",
            obj=stop,
            before={"reason": stop.reason, "started_by": stop.started_by},
            after={"ended_by": stop.ended_by},
        )
    return stop
