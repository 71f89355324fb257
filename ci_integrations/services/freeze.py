"""Freeze windows: when promotions are blocked (`deny` windows) or only allowed (`allow` windows).

A window is one-off (a start and an end) or recurring: an RFC 5545 recurrence rule read with python-dateutil's
rrule, each occurrence lasting `duration` in the wall-clock time of the window's time zone. A weekend window that
starts on Friday at 16:00 in Europe/London and lasts 64h ends on Monday at 08:00 London time, whether or not the
clocks changed over that weekend. A rule without a start counts from the beginning of time, so the occurrence under
way when the window is made (or the config applied) already counts.

A window applies to a promotion when the promotion matches every selector the window names: its environment, its
integration, its integration's team. A window naming none applies to every promotion. Deny windows block while one
of their occurrences lasts; where allow windows apply, a promotion may go only during one of their occurrences.

May import: models, input_rules, audit, actors, errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.relativedelta import relativedelta
from dateutil.rrule import DAILY, MONTHLY, WEEKLY, YEARLY, rrulestr
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ci_integrations.input_rules import NAME
from ci_integrations.models import FreezeWindow
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.errors import InvalidInput, NotAllowed, StateConflict

# "From the beginning of time" starts here: a Monday at midnight, so weekly rules without BYDAY fall on Mondays.
RULE_EPOCH = datetime(2000, 1, 3)
FREQUENCIES = {"YEARLY": YEARLY, "MONTHLY": MONTHLY, "WEEKLY": WEEKLY, "DAILY": DAILY}
# How far ahead "when does the next allow window open" looks.
LOOKAHEAD = timedelta(days=400)


@dataclass(frozen=True)
class Occurrence:
    """One stretch of time a window covers."""

    window: FreezeWindow
    starts_at: datetime
    ends_at: datetime

    def covers(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at


@dataclass(frozen=True)
class FreezeBlock:
    """A window holding promotions back now, and until when (None when no end is in sight)."""

    window: FreezeWindow
    until: datetime | None
    message: str


# ---- rules --------------------------------------------------------------------------------------------------------


def freeze_rule_problem(*, rrule: str, duration: timedelta | None, time_zone: str, has_start: bool) -> str | None:
    """What is wrong with a recurring window's rule, duration and time zone, or None. Shared by the config file and
    the UI, so both refuse the same things in the same words."""
    try:
        ZoneInfo(time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return f"time zone {time_zone!r} is not an IANA name such as Europe/London"
    if not duration or duration <= timedelta(0):
        return "a recurring window needs a duration such as 64h"
    text = (rrule or "").strip()
    if "DTSTART" in text.upper() or "\n" in text:
        return "give the rule alone (FREQ=…;BYDAY=…); its start is the window's `start`"
    parts = dict(part.partition("=")[::2] for part in text.upper().split(";") if part)
    if parts.get("FREQ") not in FREQUENCIES:
        return f"the rule's FREQ must be one of {', '.join(FREQUENCIES)} (got {parts.get('FREQ')!r})"
    if "COUNT" in parts and not has_start:
        return "COUNT needs a start: a rule without one repeats from the beginning of time"
    try:
        rrulestr(text, dtstart=RULE_EPOCH)
    except (ValueError, TypeError) as exc:
        return f"not a valid recurrence rule ({exc})"
    return None


def _zone(window: FreezeWindow) -> ZoneInfo:
    return ZoneInfo(window.time_zone or "UTC")


def _local(at: datetime, zone: ZoneInfo) -> datetime:
    return at.astimezone(zone).replace(tzinfo=None)


def _anchor(window: FreezeWindow, rule_text: str, earliest_local: datetime) -> datetime:
    """The rule's DTSTART in local wall-clock time: the window's start, else the epoch moved forward by whole periods
    of the rule (which keeps every occurrence where it was) to just before `earliest_local`, so that finding today's
    occurrence does not walk through every day since 2000."""
    if window.starts_at is not None:
        return _local(window.starts_at, _zone(window))
    parts = dict(part.partition("=")[::2] for part in rule_text.upper().split(";") if part)
    interval = int(parts.get("INTERVAL") or 1)
    step = {"DAILY": 1, "WEEKLY": 7}.get(parts.get("FREQ", ""))
    if step is None:
        return RULE_EPOCH  # months and years since 2000 are few
    period = timedelta(days=step * interval)
    periods = max(0, (earliest_local - RULE_EPOCH) // period - 1)
    return RULE_EPOCH + periods * period


def freeze_window_occurrences(window: FreezeWindow, *, start: datetime, end: datetime) -> list[Occurrence]:
    """The window's stretches of time that overlap [start, end), in order."""
    if not window.is_recurring:
        if window.starts_at < end and window.ends_at > start:
            return [Occurrence(window, window.starts_at, window.ends_at)]
        return []
    zone = _zone(window)
    duration = window.duration
    # A day of slack each side covers any offset change between local and absolute time.
    earliest = _local(start, zone) - duration - timedelta(days=1)
    latest = _local(end, zone) + timedelta(days=1)
    rule = rrulestr(window.rrule, dtstart=_anchor(window, window.rrule, earliest))
    found = []
    for local_start in rule.between(earliest, latest, inc=True):
        # Wall-clock arithmetic: the occurrence ends at its local end time, whatever the clocks did in between.
        begins = local_start.replace(tzinfo=zone)
        ends = (local_start + duration).replace(tzinfo=zone)
        if begins < end and ends > start:
            found.append(Occurrence(window, begins.astimezone(UTC), ends.astimezone(UTC)))
    return found


def _next_opening(window: FreezeWindow, at: datetime) -> datetime | None:
    """When an allow window next begins after `at` (None when it never does again)."""
    if not window.is_recurring:
        return window.starts_at if window.starts_at > at else None
    months = relativedelta(months=1)
    start = at
    while start < at + LOOKAHEAD:
        ahead = freeze_window_occurrences(window, start=start, end=start + months + months)
        later = [o.starts_at for o in ahead if o.starts_at > at]
        if later:
            return later[0]
        start = start + months
    return None


# ---- which windows hold a promotion back --------------------------------------------------------------------------


def freeze_window_applies(window: FreezeWindow, *, integration, env: str) -> bool:
    """Whether the window's selectors all match a promotion of `integration` into `env`."""
    if window.environments and env not in window.environments:
        return False
    if window.integrations and (integration is None or integration.name not in window.integrations):
        return False
    if window.teams:
        team = integration.team.name if integration is not None and integration.team_id else None
        if team not in window.teams:
            return False
    return True


def _candidates(at: datetime):
    """Windows that may cover `at` or later: every recurring one, and one-off ones not yet over."""
    return FreezeWindow.objects.filter(Q(rrule__gt="") | Q(ends_at__gt=at)).order_by("name", "pk")


def freeze_blocks(*, integration, env: str, at: datetime | None = None) -> list[FreezeBlock]:
    """Every window that holds a promotion of `integration` into `env` back at `at` (now by default): deny windows
    under way, and, where allow windows apply, all of them when none is under way."""
    at = at or timezone.now()
    blocks, allow_windows, allowed = [], [], False
    for window in _candidates(at):
        if not freeze_window_applies(window, integration=integration, env=env):
            continue
        covering = [o for o in freeze_window_occurrences(window, start=at, end=at + timedelta(microseconds=1))]
        if window.kind == FreezeWindow.Kind.DENY:
            if covering:
                until = max(o.ends_at for o in covering)
                blocks.append(
                    FreezeBlock(window, until, f"{window.name!r} until {until.isoformat(timespec='minutes')}")
                )
        else:
            allow_windows.append(window)
            allowed = allowed or bool(covering)
    if allow_windows and not allowed:
        for window in allow_windows:
            opens = _next_opening(window, at)
            when = f"opens {opens.isoformat(timespec='minutes')}" if opens else "does not open again"
            blocks.append(FreezeBlock(window, opens, f"outside the allow window {window.name!r} ({when})"))
    return blocks


def freeze_windows_active(*, env: str, at: datetime | None = None, integration=None) -> list[FreezeWindow]:
    """The windows holding promotions into `env` back at `at` (now by default)."""
    return [block.window for block in freeze_blocks(integration=integration, env=env, at=at)]


def freeze_windows_upcoming(*, env: str | None = None, days: int = 14, limit: int = 10) -> list[Occurrence]:
    """The stretches of time windows cover from now over the next `days`, soonest first (for the UI); with `env`,
    only windows that may apply to it (integration and team selectors are not narrowed)."""
    now = timezone.now()
    found = []
    for window in _candidates(now):
        if env and window.environments and env not in window.environments:
            continue
        found.extend(freeze_window_occurrences(window, start=now, end=now + timedelta(days=days)))
    return sorted(found, key=lambda o: (o.starts_at, o.window.name))[:limit]


# ---- windows made in the UI ---------------------------------------------------------------------------------------


def _may_manage_freezes(actor: Actor) -> bool:
    person = actor.person
    return bool(person and (person.is_staff or person.has_perm("ci_integrations.add_freezewindow")))


def freeze_window_state(window: FreezeWindow) -> dict:
    """What an audit entry (and the config export) records of a window."""
    state = {"name": window.name, "kind": window.kind, "environments": list(window.environments)}
    for key in ("integrations", "teams"):
        if getattr(window, key):
            state[key] = list(getattr(window, key))
    if window.starts_at is not None:
        state["starts_at"] = window.starts_at.isoformat()
    if window.ends_at is not None:
        state["ends_at"] = window.ends_at.isoformat()
    if window.is_recurring:
        state.update(rrule=window.rrule, duration=int(window.duration.total_seconds()), timezone=window.time_zone)
    if window.reason:
        state["reason"] = window.reason
    return state


def freeze_window_create(
    *,
    name: str,
    environments: list[str],
    starts_at: datetime | None,
    ends_at: datetime | None,
    reason: str,
    actor: Actor,
    kind: str = FreezeWindow.Kind.DENY,
    rrule: str = "",
    duration: timedelta | None = None,
    time_zone: str = "UTC",
) -> FreezeWindow:
    """A window over `environments`: one-off (starts_at to ends_at) or recurring (rrule, duration, time zone, and
    optionally starts_at). Platform admins only; audited."""
    if not _may_manage_freezes(actor):
        raise NotAllowed("only platform admins may create freeze windows")
    errors = {}
    name = (name or "").strip()
    rrule = (rrule or "").strip()
    if not name or len(name) > 120:
        errors["name"] = "give a name of 1 to 120 characters"
    if kind not in FreezeWindow.Kind.values:
        errors["kind"] = f"{kind!r} is not one of {', '.join(FreezeWindow.Kind.values)}"
    if not environments or not isinstance(environments, list | tuple):
        errors["environments"] = "name at least one environment"
    elif bad := [e for e in environments if not NAME.is_valid(e)]:
        errors["environments"] = NAME.problem(bad[0], word="environment")
    if rrule:
        if problem := freeze_rule_problem(
            rrule=rrule, duration=duration, time_zone=time_zone, has_start=starts_at is not None
        ):
            errors["rrule"] = problem
        if starts_at is not None and timezone.is_naive(starts_at):
            errors["starts_at"] = "give a timezone-aware start"
        ends_at = None
    elif not starts_at or not ends_at or timezone.is_naive(starts_at) or timezone.is_naive(ends_at):
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
            kind=kind,
            environments=sorted(set(environments)),
            starts_at=starts_at,
            ends_at=ends_at,
            rrule=rrule,
            duration=duration if rrule else None,
            time_zone=time_zone or "UTC",
            reason=reason or "",
            created_by=actor.label,
        )
        audit_record(
            actor=actor,
            action="freeze_window.created",
            obj=window,
            after=freeze_window_state(window),
            reason=reason or "",
            environment=",".join(window.environments)[:63],
        )
    return window


def freeze_window_end(*, window: FreezeWindow, actor: Actor) -> FreezeWindow:
    """End a one-off window now (or cancel one that has not started); a recurring window made in the UI is removed.
    Platform admins only; audited. Windows from the config file change with the file."""
    if not _may_manage_freezes(actor):
        raise NotAllowed("only platform admins may end freeze windows")
    with transaction.atomic():
        window = FreezeWindow.objects.select_for_update().get(pk=window.pk)
        if window.from_config:
            raise StateConflict(f"freeze window {window.name!r} comes from the config file; change it there")
        before = freeze_window_state(window)
        if window.is_recurring:
            audit_record(actor=actor, action="freeze_window.removed", obj=window, before=before)
            window.delete()
            return window
        now = timezone.now()
        if window.ends_at <= now:
            raise StateConflict(f"freeze window {window.name!r} has already ended")
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
            after=freeze_window_state(window),
            environment=",".join(window.environments)[:63],
        )
    return window
