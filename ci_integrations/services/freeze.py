"""Freeze windows: time ranges during which promotions into named environments are blocked."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from ci_integrations.input_rules import NAME
from ci_integrations.models import FreezeWindow
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.errors import InvalidInput, NotAllowed, StateConflict


def _may_manage_freezes(actor: Actor) -> bool:
    person = actor.person
    return bool(person and (person.is_staff or person.has_perm("ci_integrations.add_freezewindow")))


def _window_state(window: FreezeWindow) -> dict:
    return {
        "name": window.name,
        "environments": list(window.environments),
        "starts_at": window.starts_at.isoformat(),
        "ends_at": window.ends_at.isoformat(),
        "reason": window.reason,
    }


def freeze_window_create(
    *, name: str, environments: list[str], starts_at: datetime, ends_at: datetime, reason: str, actor: Actor
) -> FreezeWindow:
    """Block promotions into `environments` between starts_at and ends_at. Platform admins only; audited."""
    if not _may_manage_freezes(actor):
        raise NotAllowed("only platform admins may create freeze windows")
    errors = {}
    name = (name or "").strip()
    if not name or len(name) > 120:
        errors["name"] = "give a name of 1 to 120 characters"
    if not environments or not isinstance(environments, list | tuple):
        errors["environments"] = "name at least one environment"
    elif bad := [e for e in environments if not NAME.is_valid(e)]:
        errors["environments"] = NAME.problem(bad[0], word="environment")
    if not starts_at or not ends_at or timezone.is_naive(starts_at) or timezone.is_naive(ends_at):
        errors["starts_at"] = "give timezone-aware start and end times"
    elif ends_at <= starts_at:
        errors["ends_at"] = "the window must end after it starts"
    elif ends_at <= timezone.now():
        errors["ends_at"] = "the window has already ended, so it would block nothing"
    if errors:
        raise InvalidInput(
            "the freeze window is not valid: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), details=errors
        )
    with transaction.atomic():
        window = FreezeWindow.objects.create(
            name=name,
            environments=sorted(set(environments)),
            starts_at=starts_at,
            ends_at=ends_at,
            reason=reason or "",
            created_by=actor.label,
        )
        audit_record(
            actor=actor,
            action="freeze_window.created",
            obj=window,
            after=_window_state(window),
            reason=reason or "",
            environment=",".join(window.environments)[:63],
        )
    return window


def freeze_window_end(*, window: FreezeWindow, actor: Actor) -> FreezeWindow:
    """End a window now (or cancel one that has not started). Platform admins only; audited."""
    if not _may_manage_freezes(actor):
        raise NotAllowed("only platform admins may end freeze windows")
    with transaction.atomic():
        window = FreezeWindow.objects.select_for_update().get(pk=window.pk)
        now = timezone.now()
        if window.ends_at <= now:
            raise StateConflict(f"freeze window {window.name!r} has already ended")
        before = _window_state(window)
        if window.starts_at > now:
            # Not started yet: the check constraint needs ends_at > starts_at, so leave a one-microsecond window.
            window.ends_at = window.starts_at + timedelta(microseconds=1)
        else:
            window.ends_at = max(now, window.starts_at + timedelta(microseconds=1))
        window.save(update_fields=["ends_at"])
        audit_record(
            actor=actor,
            action="freeze_window.ended",
            obj=window,
            before=before,
            after=_window_state(window),
            environment=",".join(window.environments)[:63],
        )
    return window


def freeze_windows_active(*, env: str, at: datetime | None = None) -> list[FreezeWindow]:
    """Windows blocking promotions into `env` at `at` (now by default)."""
    at = at or timezone.now()
    candidates = FreezeWindow.objects.filter(starts_at__lte=at, ends_at__gt=at).order_by("ends_at")
    # Few windows are ever active at once; filtering the JSON list in Python works on SQLite and PostgreSQL alike.
    return [w for w in candidates if env in (w.environments or [])]
