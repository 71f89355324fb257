"""The config file's freeze_windows section and a step's approval_timeout: applied, kept in step, exported."""

import io
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from django.core.management import call_command

from ci_integrations.models import AuditEntry, FreezeWindow, WorkflowStep
from ci_integrations.services.config import config_export
from ci_integrations.services.freeze import freeze_blocks
from tests.foundation.conftest import EXAMPLE_CONFIG
from tests.foundation.test_config import failing

WINDOWS = """
freeze_windows:
  - name: weekend
    kind: deny
    rrule: "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0"
    duration: 64h
    timezone: Europe/London
    environments: [prod]
  - name: year-end
    kind: deny
    start: 2026-12-20T00:00:00Z
    end: 2027-01-04T08:00:00Z
"""


def apply(path: str) -> str:
    out = io.StringIO()
    call_command("apply_config", path, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_file_s_windows_are_applied_once_and_block_as_they_say(db, config_file):
    path = config_file(EXAMPLE_CONFIG + WINDOWS)
    out = apply(path)
    assert "+ freeze window weekend" in out and "+ freeze window year-end" in out
    assert "freeze window" not in apply(path)
    weekend = FreezeWindow.objects.get(name="weekend")
    assert weekend.from_config and weekend.duration == timedelta(hours=64) and weekend.time_zone == "Europe/London"
    assert [b.window.name for b in freeze_blocks(integration=None, env="prod", at=datetime(2027, 1, 8, 17, tzinfo=UTC))]
    assert [
        b.window.name for b in freeze_blocks(integration=None, env="qa", at=datetime(2026, 12, 25, tzinfo=UTC))
    ] == ["year-end"]
    assert AuditEntry.objects.filter(action="config.create", object_type__icontains="freeze").count() == 2


def test_a_window_the_file_no_longer_lists_is_removed_and_ui_windows_stay(db, config_file):
    apply(config_file(EXAMPLE_CONFIG + WINDOWS))
    FreezeWindow.objects.create(
        name="from the ui",
        environments=["prod"],
        starts_at=datetime(2030, 1, 1, tzinfo=UTC),
        ends_at=datetime(2030, 1, 2, tzinfo=UTC),
    )
    out = apply(config_file(EXAMPLE_CONFIG + "\nfreeze_windows: []\n"))
    assert "- freeze window weekend" in out and "- freeze window year-end" in out
    assert list(FreezeWindow.objects.values_list("name", flat=True)) == ["from the ui"]


def test_export_writes_the_windows_and_applying_the_export_changes_nothing(db, config_file, tmp_path):
    apply(config_file(EXAMPLE_CONFIG + WINDOWS))
    exported = config_export()
    assert [w["name"] for w in exported["freeze_windows"]] == ["weekend", "year-end"]
    path = tmp_path / "exported.yaml"
    path.write_text(yaml.safe_dump(exported))
    assert "freeze window" not in apply(str(path))


@pytest.mark.parametrize(
    "window, problem",
    [
        ('{name: a, rrule: "FREQ=MINUTELY", duration: 1h}', "freeze_windows[0].rrule: the rule's FREQ must be one of"),
        ('{name: a, rrule: "FREQ=DAILY"}', "freeze_windows[0].rrule: a recurring window needs a duration"),
        ('{name: a, rrule: "FREQ=DAILY", duration: 1h, timezone: Nowhere/Land}', "IANA"),
        ("{name: a, start: 2026-12-20T00:00:00Z}", "freeze_windows[0]: give start and end, or rrule and duration"),
        ("{name: a, start: 2026-12-20T00:00:00, end: 2026-12-21T00:00:00Z}", "freeze_windows[0].start: give the time"),
        ("{name: a, kind: maybe, start: 2026-12-20T00:00:00Z, end: 2026-12-21T00:00:00Z}", "freeze_windows[0].kind"),
        ('{name: a, rrule: "FREQ=DAILY", duration: 1h, colour: red}', "freeze_windows[0].colour: unknown key"),
    ],
)
def test_a_bad_window_is_refused_with_its_path_and_nothing_is_applied(db, config_file, window, problem):
    err, _ = failing("apply_config", config_file(EXAMPLE_CONFIG + f"\nfreeze_windows:\n  - {window}\n"))
    assert problem in err
    assert not FreezeWindow.objects.exists()


def test_a_step_s_approval_timeout_is_applied_and_exported(db, config_file):
    text = EXAMPLE_CONFIG.replace("approvals: 2", "approvals: 2, approval_timeout: 2d", 1)
    assert text != EXAMPLE_CONFIG
    apply(config_file(text))
    step = WorkflowStep.objects.get(approval_timeout__isnull=False)
    assert step.approval_timeout == timedelta(days=2)
    exported_steps = [s for w in config_export()["workflows"] for s in w["steps"]]
    assert {"approval_timeout": "2d"}.items() <= next(s for s in exported_steps if "approval_timeout" in s).items()
