"""The four DORA keys from arrival rows with known timestamps: exact figures, bands and a constant query count."""

from __future__ import annotations

import pytest

from ci_integrations import insights
from ci_integrations.insights import dora_report
from ci_integrations.models import Arrival
from tests.insights.conftest import at

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_it_counts_deployments_rollbacks_and_failures_in_the_environment_and_period(known_week):
    report = dora_report(env="prod", days=7)
    overall = report.overall
    assert (overall.deployments, overall.rollbacks, overall.failed_deployments) == (6, 2, 2)
    assert overall.deployment_frequency_per_day.value == pytest.approx(6 / 7)
    assert overall.deployment_frequency_per_day.band == "high"
    assert overall.change_failure_rate.value == pytest.approx(2 / 6)
    assert overall.change_failure_rate.band == "low"


def test_lead_time_starts_at_the_commit_time_when_ci_gave_one_else_at_registration(known_week):
    overall = dora_report(env="prod", days=7).overall
    # Lead times 1 h, 2 h, 24 h, 54 h: median halfway between 2 h and 24 h; p90 70 % of the way from 24 h to 54 h.
    assert overall.lead_time_median_seconds.value == pytest.approx((7200 + 86400) / 2)
    assert overall.lead_time_median_seconds.band == "elite"
    assert overall.lead_time_p90_seconds.value == pytest.approx(86400 + 0.7 * (194400 - 86400))
    assert overall.lead_time_p90_seconds.band == "high"


def test_time_to_restore_runs_from_the_rolled_back_arrival_to_the_rollback(known_week):
    overall = dora_report(env="prod", days=7).overall
    assert overall.time_to_restore_median_seconds.value == pytest.approx((1800 + 7200) / 2)
    assert overall.time_to_restore_median_seconds.band == "high"


def test_each_integration_has_its_own_figures(known_week):
    rows = {row.name: row.figures for row in dora_report(env="prod", days=7).integrations}
    assert sorted(rows) == ["cart", "shop"]
    shop, cart = rows["shop"], rows["cart"]
    assert (shop.deployments, shop.rollbacks, shop.failed_deployments) == (4, 1, 1)
    assert shop.change_failure_rate.value == pytest.approx(0.25)
    assert shop.lead_time_median_seconds.value == pytest.approx(7200)
    assert shop.time_to_restore_median_seconds.value == pytest.approx(1800)
    assert shop.time_to_restore_median_seconds.band == "elite"
    assert (cart.deployments, cart.rollbacks, cart.failed_deployments) == (2, 1, 1)
    assert cart.lead_time_median_seconds.value == pytest.approx(86400)
    assert cart.lead_time_median_seconds.band == "high"  # a day is not "under a day"


def test_the_series_has_one_entry_per_day_with_that_days_deployments(known_week):
    report = dora_report(env="prod", days=7)
    assert report.period_name == "day"
    assert [p.start for p in report.periods] == [at(day, 0) for day in range(9, 16)]
    assert [p.deployments for p in report.periods] == [0, 1, 2, 1, 0, 2, 0]
    assert [p.rollbacks for p in report.periods] == [0, 0, 1, 0, 0, 1, 0]
    assert report.periods[2].lead_time_median == pytest.approx(194400)


def test_ninety_days_are_drawn_by_week(known_week):
    report = dora_report(env="prod", days=90)
    assert report.period_name == "week"
    assert len(report.periods) == 13  # 12 whole weeks and 6 days
    assert sum(p.deployments for p in report.periods) == 7  # the arrival of day 1 is inside 90 days


def test_the_integration_scope_limits_every_figure(known_week):
    cart = known_week.integrations["cart"]
    report = dora_report(env="prod", days=7, integration_ids=[cart.pk])
    assert report.overall.deployments == 2
    assert [row.name for row in report.integrations] == ["cart"]
    assert dora_report(env="prod", days=7, integration_ids=[]).overall.deployments == 0


def test_nothing_measured_gives_no_value_and_no_band_except_a_low_frequency(history):
    overall = dora_report(env="prod", days=30).overall
    assert overall.deployments == 0
    assert overall.deployment_frequency_per_day == insights.Figure(0.0, "low")
    assert overall.lead_time_median_seconds == insights.Figure(None, None)
    assert overall.change_failure_rate == insights.Figure(None, None)


def test_a_malformed_commit_time_label_falls_back_to_registration_rather_than_failing(history):
    artifact = history.artifact("shop", created_at=at(14, 9), commit_time="2026-02-31T00:00:00Z")  # no such day
    history.arrive(artifact, "prod", at(14, 10))
    assert dora_report(env="prod", days=7).overall.lead_time_median_seconds.value == pytest.approx(3600)


def test_postgresql_and_the_python_reference_agree(known_week):
    since, until = insights.dora_window(7)
    args = {"env": "prod", "since": since, "until": until, "period": insights.DAY, "integration_ids": None}

    def key(group):
        return (group.integration or "", -1 if group.period is None else group.period)

    in_sql = sorted(insights._aggregated_rows(**args), key=key)
    in_python = sorted(insights._rows_computed_here(**args), key=key)
    assert [key(g) for g in in_sql] == [key(g) for g in in_python]
    for mine, theirs in zip(in_sql, in_python, strict=True):
        assert (mine.deployments, mine.rollbacks, mine.failed) == (theirs.deployments, theirs.rollbacks, theirs.failed)
        for a, b in [(mine.lead_median, theirs.lead_median), (mine.lead_p90, theirs.lead_p90)]:
            assert a == pytest.approx(b)
        assert mine.restore_median == pytest.approx(theirs.restore_median)


def test_one_query_whatever_the_size_of_the_history(known_week, django_assert_num_queries):
    with django_assert_num_queries(1):
        dora_report(env="prod", days=30)
    artifact = known_week.artifact("shop", created_at=at(13, 1))
    for hour in range(24):
        known_week.arrive(artifact, "prod", at(13, hour), Arrival.How.PROMOTION)
    with django_assert_num_queries(1):
        report = dora_report(env="prod", days=30)
    assert report.overall.deployments == 7 + 24  # 30 days reach back to the arrival of day 1


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("deployment_frequency_per_day", 1.0, "elite"),
        ("deployment_frequency_per_day", 1 / 7, "high"),
        ("deployment_frequency_per_day", 1 / 30, "medium"),
        ("deployment_frequency_per_day", 1 / 31, "low"),
        ("lead_time", 86399, "elite"),
        ("lead_time", 86400, "high"),
        ("lead_time", 30 * 86400, "low"),
        ("change_failure_rate", 0.05, "elite"),
        ("change_failure_rate", 0.15, "medium"),
        ("change_failure_rate", 0.151, "low"),
        ("time_to_restore", 3599, "elite"),
        ("time_to_restore", 7 * 86400 - 1, "medium"),
        ("time_to_restore", 7 * 86400, "low"),
    ],
)
def test_bands_follow_the_dora_2023_thresholds(metric, value, expected):
    assert insights.band(metric, value) == expected
