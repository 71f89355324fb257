"""The config file's `freeze_windows:` section: reading it, applying it, exporting it.

Windows from the file are kept in step with it by name: applying creates and updates them, and removes those the
file no longer lists (only when the file has a `freeze_windows:` key at all). Windows made in the UI are left alone.

May import: models, freeze, audit, actors, input_rules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ci_integrations.input_rules import NAME
from ci_integrations.models import FreezeWindow
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.freeze import freeze_rule_problem, freeze_window_state

FREEZE_WINDOW_KEYS = {
    "name",
    "kind",
    "rrule",
    "duration",
    "timezone",
    "start",
    "end",
    "environments",
    "integrations",
    "teams",
    "reason",
}
FIELDS = ("kind", "environments", "integrations", "teams", "starts_at", "ends_at", "rrule", "duration", "time_zone")


def _moment(reader, path: str, value: Any) -> datetime | None:
    """An ISO 8601 time with its offset (YAML may have parsed it into a datetime already)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            reader.problem(path, f"{value!r} is not a time like 2026-12-20T00:00:00Z")
            return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        reader.problem(path, "give the time with its offset, like 2026-12-20T00:00:00Z")
        return None
    return value


def _names(reader, path: str, value: Any, word: str) -> list[str]:
    names = reader.listed(path, value)
    for index, name in enumerate(names):
        if not NAME.is_valid(name):
            reader.problem(f"{path}[{index}]", NAME.problem(name, word=word))
    return sorted({name for name in names if NAME.is_valid(name)})


def freeze_windows_read(reader, data: dict) -> dict[str, dict] | None:
    """The file's windows by name, or None when the file has no `freeze_windows:` key (then none is touched)."""
    if "freeze_windows" not in data:
        return None
    found: dict[str, dict] = {}
    for path, item in reader.items("freeze_windows"):
        reader.known_keys(path, item, FREEZE_WINDOW_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 120:
            reader.problem(f"{path}.name", "give a name of 1 to 120 characters")
            name = None
        elif name in found:
            reader.problem(f"{path}.name", f"freeze window {name!r} is listed twice")
        kind = reader.choice(f"{path}.kind", item.get("kind", "deny"), FreezeWindow.Kind.values)
        start = _moment(reader, f"{path}.start", item.get("start"))
        end = _moment(reader, f"{path}.end", item.get("end"))
        rrule = str(item.get("rrule") or "").strip()
        duration = reader.duration(f"{path}.duration", item.get("duration"))
        time_zone = str(item.get("timezone") or "UTC")
        if rrule:
            if problem := freeze_rule_problem(
                rrule=rrule, duration=duration, time_zone=time_zone, has_start=start is not None
            ):
                reader.problem(f"{path}.rrule", problem)
            if "end" in item:
                reader.problem(f"{path}.end", "a recurring window has a duration, not an end")
        elif start is None or end is None:
            reader.problem(path, "give start and end, or rrule and duration")
        elif end <= start:
            reader.problem(f"{path}.end", "the window must end after it starts")
        spec = {
            "kind": kind or FreezeWindow.Kind.DENY,
            "environments": _names(reader, f"{path}.environments", item.get("environments"), "environment"),
            "integrations": _names(reader, f"{path}.integrations", item.get("integrations"), "integration"),
            "teams": _names(reader, f"{path}.teams", item.get("teams"), "team"),
            "starts_at": start,
            "ends_at": None if rrule else end,
            "rrule": rrule,
            "duration": duration if rrule else None,
            "time_zone": time_zone,
            "reason": str(item.get("reason") or ""),
        }
        if name:
            found[name] = spec
    return found


def freeze_windows_apply(*, specs: dict[str, dict] | None, actor: Actor, source: str) -> list[str]:
    """Create, update and remove the file's windows; one change line and one audit entry per window changed."""
    if specs is None:
        return []
    changes = []
    existing = {window.name: window for window in FreezeWindow.objects.filter(from_config=True)}
    for name, spec in specs.items():
        window = existing.get(name)
        if window is not None and all(getattr(window, key) == spec[key] for key in (*FIELDS, "reason")):
            continue
        before = freeze_window_state(window) if window is not None else None
        window = window or FreezeWindow(name=name, from_config=True, created_by=actor.label)
        for key, value in spec.items():
            setattr(window, key, value)
        window.save()
        changes.append(f"{'~' if before else '+'} freeze window {name}")
        audit_record(
            actor=actor,
            action="config.update" if before else "config.create",
            obj=window,
            before=before,
            after=freeze_window_state(window),
            reason=f"apply_config {source}",
        )
    for name, window in existing.items():
        if name not in specs:
            audit_record(
                actor=actor,
                action="config.delete",
                obj=window,
                before=freeze_window_state(window),
                reason=f"apply_config {source}",
            )
            window.delete()
            changes.append(f"- freeze window {name}")
    return changes


def freeze_windows_export(format_duration) -> list[dict]:
    """The config file's windows in the file's format."""
    exported = []
    for window in FreezeWindow.objects.filter(from_config=True).order_by("name"):
        item: dict[str, Any] = {"name": window.name, "kind": window.kind}
        if window.rrule:
            item.update(
                rrule=window.rrule, duration=format_duration(window.duration or timedelta(0)), timezone=window.time_zone
            )
        if window.starts_at is not None:
            item["start"] = window.starts_at.isoformat()
        if window.ends_at is not None:
            item["end"] = window.ends_at.isoformat()
        for key in ("environments", "integrations", "teams"):
            if getattr(window, key):
                item[key] = list(getattr(window, key))
        if window.reason:
            item["reason"] = window.reason
        exported.append(item)
    return exported
