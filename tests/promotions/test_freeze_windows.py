"""Recurring and allow freeze windows: rrule occurrences in their own time zone, across daylight-saving changes."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from ci_integrations.models import FreezeWindow
from ci_integrations.services.errors import InvalidInput
from ci_integrations.services.freeze import freeze_blocks, freeze_window_create
from ci_integrations.services.policy import promotion_evaluate
from tests.promotions.conftest import place

pytestmark = [pytest.mark.django_db]
WEEKEND = "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def weekend(**fields) -> FreezeWindow:
    defaults = dict(
        name="weekend",
        rrule=WEEKEND,
        duration=timedelta(hours=64),
        time_zone="Europe/London",
        environments=["prod"],
    )
    return FreezeWindow.objects.create(**{**defaults, **fields})


def blocked(env: str, at: datetime, integration=None) -> list[str]:
    return [block.message for block in freeze_blocks(integration=integration, env=env, at=at)]


def test_a_weekend_window_covers_friday_afternoon_to_monday_morning_london_time():
    weekend()
    # 2027-01-08 is a Friday; London is on GMT in January.
    assert blocked("prod", utc(2027, 1, 8, 15, 59)) == []
    assert blocked("prod", utc(2027, 1, 8, 16, 0)) == ["'weekend' until 2027-01-11T08:00+00:00"]
    assert blocked("prod", utc(2027, 1, 11, 7, 59))
    assert blocked("prod", utc(2027, 1, 11, 8, 0)) == []
    assert blocked("staging", utc(2027, 1, 9, 12, 0)) == []


def test_a_window_over_the_spring_clock_change_ends_at_eight_local_time_an_hour_earlier_in_utc():
    weekend()
    # Clocks go forward on Sunday 2027-03-28: Friday 16:00 is GMT, Monday 08:00 is BST (07:00 UTC), 63 real hours.
    assert blocked("prod", utc(2027, 3, 26, 16, 0))
    assert blocked("prod", utc(2027, 3, 29, 6, 59))
    assert blocked("prod", utc(2027, 3, 29, 7, 0)) == []


def test_a_window_over_the_autumn_clock_change_starts_at_four_local_time_and_lasts_sixty_five_real_hours():
    weekend()
    # Clocks go back on Sunday 2026-10-25: Friday 16:00 is BST (15:00 UTC), Monday 08:00 is GMT.
    assert blocked("prod", utc(2026, 10, 23, 14, 59)) == []
    assert blocked("prod", utc(2026, 10, 23, 15, 0))
    assert blocked("prod", utc(2026, 10, 26, 7, 59))
    assert blocked("prod", utc(2026, 10, 26, 8, 0)) == []


def test_a_rule_without_a_start_counts_the_occurrence_under_way_when_it_was_made():
    now = timezone.now()
    began = (now - timedelta(hours=1)).astimezone(UTC)
    FreezeWindow.objects.create(
        name="daily",
        rrule=f"FREQ=DAILY;BYHOUR={began.hour};BYMINUTE={began.minute}",
        duration=timedelta(hours=2),
        time_zone="UTC",
    )
    assert blocked("anything", now) != []


def test_an_allow_window_blocks_outside_itself_and_says_when_it_opens():
    FreezeWindow.objects.create(
        name="office-hours",
        kind=FreezeWindow.Kind.ALLOW,
        rrule="FREQ=WEEKLY;BYDAY=MO,TU,WE,TH;BYHOUR=9;BYMINUTE=0",
        duration=timedelta(hours=8),
        time_zone="Europe/Berlin",
        environments=["prod"],
    )
    assert blocked("prod", utc(2027, 1, 5, 10, 0)) == []  # Tuesday 11:00 in Berlin
    # Friday 10:00 in Berlin: no promotions until Monday 09:00 Berlin time.
    assert blocked("prod", utc(2027, 1, 8, 9, 0)) == [
        "outside the allow window 'office-hours' (opens 2027-01-11T08:00+00:00)"
    ]
    assert blocked("qa", utc(2027, 1, 8, 9, 0)) == []


def test_windows_match_every_selector_they_name(world):
    weekend(environments=[], integrations=["someone-else"])
    friday = utc(2027, 1, 8, 17, 0)
    assert blocked("prod", friday, world.integration) == []
    weekend(name="ours", environments=["prod"], integrations=[world.integration.name])
    assert blocked("prod", friday, world.integration) == ["'ours' until 2027-01-11T08:00+00:00"]
    assert blocked("qa", friday, world.integration) == []


def test_a_window_for_a_team_blocks_its_integrations_only(world):
    from ci_integrations.models import Team

    team = Team.objects.create(name="payments")
    weekend(environments=[], teams=["payments"])
    friday = utc(2027, 1, 8, 17, 0)
    assert blocked("prod", friday, world.integration) == []
    world.integration.team = team
    world.integration.save()
    assert blocked("prod", friday, world.integration) != []


def test_a_scheduled_promotion_is_judged_by_the_windows_at_its_time(world):
    weekend()
    artifact = place(world, "staging", "v1")
    now = timezone.now()
    saturday = (now + timedelta(days=(5 - now.weekday()) % 7 or 7)).replace(hour=12, minute=0, tzinfo=UTC)
    assert promotion_evaluate(artifact=artifact, to_env="prod", actor=world.actor(world.alice)).ok is (
        blocked("prod", now) == []
    )
    ev = promotion_evaluate(artifact=artifact, to_env="prod", actor=world.actor(world.alice), at=saturday)
    assert any(reason.startswith("freeze window:") and "'weekend'" in reason for reason in ev.unmet)


@pytest.mark.parametrize(
    "rrule, duration, time_zone, problem",
    [
        ("FREQ=HOURLY", timedelta(hours=1), "UTC", "FREQ must be one of"),
        (WEEKEND, None, "UTC", "needs a duration"),
        (WEEKEND, timedelta(hours=1), "Mars/Olympus", "IANA"),
        ("FREQ=WEEKLY;BYDAY=XX", timedelta(hours=1), "UTC", "not a valid recurrence rule"),
        ("FREQ=DAILY;COUNT=3", timedelta(hours=1), "UTC", "COUNT needs a start"),
        ("DTSTART:20270101T000000\nRRULE:FREQ=DAILY", timedelta(hours=1), "UTC", "the rule alone"),
    ],
)
def test_a_bad_recurring_window_is_refused_naming_what_is_wrong(world, rrule, duration, time_zone, problem):
    with pytest.raises(InvalidInput, match=problem):
        freeze_window_create(
            name="bad",
            environments=["prod"],
            starts_at=None,
            ends_at=None,
            rrule=rrule,
            duration=duration,
            time_zone=time_zone,
            reason="",
            actor=world.actor(world.admin),
        )
    assert not FreezeWindow.objects.exists()
