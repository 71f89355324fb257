"""Delivery metrics: the four DORA keys, computed from the arrival rows of one environment.

What counts (one environment, prod by default, over the last N calendar days in UTC, today included):

- **deployment**: an arrival into the environment by promotion or by rollback (pushes and imports are how images
  enter the first environment, not deployments into this one);
- **deployment frequency**: deployments ÷ days;
- **lead time for changes**: for each arrival by promotion, from the artifact's commit time (`commit_time`, given by
  CI with the metadata) or, without one, from its registration (`Artifact.created_at`) to the arrival; median and
  90th percentile (continuous, as PostgreSQL's `percentile_cont`). Rollbacks are left out: they bring back an old
  image, and its age says nothing about how long a change takes;
- **change failure rate**: the share of deployments whose next arrival in the same bucket is a rollback;
- **time to restore**: for each such rolled-back deployment, from its arrival to the rollback's arrival; median.

Change failure is "followed by a rollback", not "or a failed promotion of a fix within a window". A rollback is the
one event the portal records that says, without guessing, that what ran in the environment was bad. A failed
promotion never changed the environment (the copy goes last), and a fix promoted forward looks exactly like any
other release, so a window rule would count ordinary quick releases as failures and miss slow fixes.

Bands follow DORA's software delivery performance clusters, *Accelerate State of DevOps Report 2023* (Google
Cloud / DORA), which the 2024 report kept for throughput: deployment frequency on demand (elite, here at least once
a day), daily to weekly (high), weekly to monthly (medium), less often (low); lead time under a day, under a week,
under a month, longer; time to restore (failed deployment recovery time) under an hour, under a day, under a week,
longer. Change failure rate uses the 2023 cluster values, 5 % (elite), 10 % (high), 15 % (medium), above that low:
the 2024 clusters put medium (10 %) below high (20 %), which cannot be read as ordered thresholds.

Cost: on PostgreSQL one query, whatever the history's size. A window function pairs each arrival with the next one
in its bucket, and `GROUPING SETS` gives the totals, the per-integration rows and the per-period series in one pass
over the period's arrivals (found through the arrival_bucket_recent_idx index). SQLite (development only) has no
percentile aggregate, so there the same figures are computed in Python from the period's arrivals (one query too).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from django.db import connection
from django.utils import timezone

from ci_integrations.models import Arrival, Artifact, Bucket, Integration
from ci_integrations.services.artifacts import COMMIT_TIME_LABEL
from ci_integrations.services.rows import table

DAY = 86400
WEEK = 7 * DAY
PERIOD_CHOICES = (7, 30, 90)
DEPLOYING = (Arrival.How.PROMOTION, Arrival.How.ROLLBACK)
# The commit time CI gave, as the metadata service stores it: UTC, `YYYY-MM-DDTHH:MM:SSZ`. Anything else is ignored,
# and the SQL builds the timestamp by arithmetic instead of a cast, so one odd label (February 31) can never make the
# whole query fail (PostgreSQL before 16 has no way to test a cast).
COMMIT_TIME_PATTERN = r"^[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\dZ$"

# The four keys, with the two halves of lead time, as the API names them.
KEYS = (
    "deployment_frequency_per_day",
    "lead_time_median_seconds",
    "lead_time_p90_seconds",
    "change_failure_rate",
    "time_to_restore_median_seconds",
)
ELITE, HIGH, MEDIUM, LOW = "elite", "high", "medium", "low"
# (limit, band) from best to worst: the first limit the value is within gives the band; past every limit is low.
BAND_LIMITS = {
    "deployment_frequency_per_day": [(1.0, ELITE), (1 / 7, HIGH), (1 / 30, MEDIUM)],  # at least
    "lead_time": [(DAY, ELITE), (WEEK, HIGH), (30 * DAY, MEDIUM)],  # under
    "change_failure_rate": [(0.05, ELITE), (0.10, HIGH), (0.15, MEDIUM)],  # at most
    "time_to_restore": [(3600, ELITE), (DAY, HIGH), (WEEK, MEDIUM)],  # under
}


def band(metric: str, value: float | None) -> str | None:
    """The DORA band of `value` for `metric` (a key of BAND_LIMITS), or None when there is no value."""
    if value is None:
        return None
    for limit, name in BAND_LIMITS[metric]:
        if metric == "deployment_frequency_per_day" and value >= limit:
            return name
        if metric == "change_failure_rate" and value <= limit:
            return name
        if metric in ("lead_time", "time_to_restore") and value < limit:
            return name
    return LOW


@dataclass(frozen=True)
class Figure:
    """One measured value with its DORA band (both None when nothing was measured)."""

    value: float | None
    band: str | None


@dataclass
class DoraFigures:
    """The four keys for one scope (everything, one integration or one period), with the counts behind them."""

    deployments: int
    rollbacks: int
    failed_deployments: int
    days: int
    lead_time_median: float | None
    lead_time_p90: float | None
    time_to_restore_median: float | None

    def as_dict(self) -> dict:
        """The counts, and each key as {"value", "band"}: the API's JSON, the CSV's columns and the page's table."""
        figures = {name: getattr(self, name) for name in KEYS}
        return {
            "deployments": self.deployments,
            "rollbacks": self.rollbacks,
            "failed_deployments": self.failed_deployments,
            **{name: {"value": figure.value, "band": figure.band} for name, figure in figures.items()},
        }

    @property
    def deployment_frequency_per_day(self) -> Figure:
        """Deployments per day over the period."""
        value = self.deployments / self.days
        return Figure(value, band("deployment_frequency_per_day", value))

    @property
    def lead_time_median_seconds(self) -> Figure:
        """The median lead time for changes, in seconds."""
        return Figure(self.lead_time_median, band("lead_time", self.lead_time_median))

    @property
    def lead_time_p90_seconds(self) -> Figure:
        """The 90th percentile lead time for changes, in seconds."""
        return Figure(self.lead_time_p90, band("lead_time", self.lead_time_p90))

    @property
    def change_failure_rate(self) -> Figure:
        """The share of deployments followed by a rollback (0 to 1)."""
        value = self.failed_deployments / self.deployments if self.deployments else None
        return Figure(value, band("change_failure_rate", value))

    @property
    def time_to_restore_median_seconds(self) -> Figure:
        """The median time from a rolled-back deployment to its rollback, in seconds."""
        return Figure(self.time_to_restore_median, band("time_to_restore", self.time_to_restore_median))


@dataclass
class IntegrationFigures:
    """The four keys of one integration."""

    name: str
    figures: DoraFigures


@dataclass
class Period:
    """One day (or week) of the chart: when it starts and what happened in it."""

    start: datetime
    deployments: int = 0
    rollbacks: int = 0
    lead_time_median: float | None = None


@dataclass
class DoraReport:
    """The four keys of one environment and period: overall, per integration and as a series for the charts."""

    env: str
    days: int
    since: datetime
    until: datetime
    period_seconds: int
    overall: DoraFigures
    integrations: list[IntegrationFigures] = field(default_factory=list)
    periods: list[Period] = field(default_factory=list)

    @property
    def period_name(self) -> str:
        """What one entry of `periods` spans: "day" or "week"."""
        return "day" if self.period_seconds == DAY else "week"


def dora_window(days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[since, until): the last `days` calendar days in UTC, today included, so chart days are whole dates."""
    now = now or timezone.now()
    until = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)
    return until - timedelta(days=days), until


def dora_report(
    *, env: str = "prod", days: int = 30, integration_ids: list[int] | None = None, now: datetime | None = None
) -> DoraReport:
    """The four keys for `env` over the last `days` days, overall, per integration and per day (per week beyond a
    month), for the integrations in `integration_ids` (None: all). One query."""
    since, until = dora_window(days, now)
    period = DAY if days <= 31 else WEEK
    if connection.vendor == "postgresql":
        rows = _aggregated_rows(env=env, since=since, until=until, period=period, integration_ids=integration_ids)
    else:
        rows = _rows_computed_here(env=env, since=since, until=until, period=period, integration_ids=integration_ids)
    return _report(rows, env=env, days=days, since=since, until=until, period=period)


# One row per grouping set: (is_total_or_period, is_total_or_integration) flags, the group's key, then the figures.
_GROUPED_SQL = """
WITH scoped AS (
    SELECT ar.arrived_at, ar.how, b.integration_id,
           LEAD(ar.how) OVER next_in_bucket AS next_how,
           LEAD(ar.arrived_at) OVER next_in_bucket AS next_at,
           CASE WHEN ar.how = 'promotion' THEN GREATEST(0, EXTRACT(EPOCH FROM ar.arrived_at - COALESCE(
               -- a day that rolled over into the next month (February 31) was not a date: no commit time
               CASE WHEN EXTRACT(DAY FROM c.local_time) = substr(c.text, 9, 2)::int
                    THEN c.local_time AT TIME ZONE 'UTC' END,
               a.created_at))) END AS lead_seconds
    FROM {bucket} b
    -- per bucket, so that each is a range scan of arrival_bucket_recent_idx: joined the other way round, the
    -- planner reads the whole arrival table to find one environment's few weeks
    CROSS JOIN LATERAL (
        SELECT x.id, x.arrived_at, x.how, x.artifact_id, x.bucket_id FROM {arrival} x
        WHERE x.bucket_id = b.id AND x.arrived_at >= %(since)s AND x.arrived_at < %(until)s
        OFFSET 0  -- keeps the subquery per bucket (PostgreSQL would otherwise flatten it into a plain join)
    ) ar
    JOIN {artifact} a ON a.id = ar.artifact_id
    LEFT JOIN LATERAL (
        SELECT t.text, CASE WHEN t.text ~ %(pattern)s THEN
            make_timestamp(substr(t.text, 1, 4)::int, 1, 1, 0, 0, 0) + make_interval(
                months => substr(t.text, 6, 2)::int - 1, days => substr(t.text, 9, 2)::int - 1,
                hours => substr(t.text, 12, 2)::int, mins => substr(t.text, 15, 2)::int,
                secs => substr(t.text, 18, 2)::int)
        END AS local_time
        FROM (SELECT a.labels ->> %(label)s AS text) t
    ) c ON true
    WHERE b.env = %(env)s {scope}
    WINDOW next_in_bucket AS (PARTITION BY ar.bucket_id ORDER BY ar.arrived_at, ar.id)
), deployments AS (
    SELECT s.*, i.name AS integration_name,
           CASE WHEN s.next_how = 'rollback' THEN EXTRACT(EPOCH FROM s.next_at - s.arrived_at) END AS restore_seconds,
           FLOOR(EXTRACT(EPOCH FROM s.arrived_at - %(since)s) / %(period)s)::int AS period
    FROM scoped s JOIN {integration} i ON i.id = s.integration_id
    WHERE s.how IN ('promotion', 'rollback')
)
SELECT GROUPING(integration_id, integration_name), GROUPING(period), integration_name, period,
       COUNT(*), COUNT(*) FILTER (WHERE how = 'rollback'), COUNT(restore_seconds),
       PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY lead_seconds),
       PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY lead_seconds),
       PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY restore_seconds)
FROM deployments
GROUP BY GROUPING SETS ((), (integration_id, integration_name), (period))
"""


@dataclass
class _Group:
    """The figures of one grouping set: overall (both keys None), one integration, or one period."""

    integration: str | None
    period: int | None
    deployments: int
    rollbacks: int
    failed: int
    lead_median: float | None
    lead_p90: float | None
    restore_median: float | None


def _aggregated_rows(*, env, since, until, period, integration_ids) -> list[_Group]:
    """PostgreSQL: everything aggregated in the database, in one statement."""
    scope = "AND b.integration_id = ANY(%(ids)s)" if integration_ids is not None else ""
    sql = _GROUPED_SQL.format(
        arrival=table(Arrival), bucket=table(Bucket), artifact=table(Artifact), integration=table(Integration),
        scope=scope,
    )  # fmt: skip
    params = {
        "env": env,
        "since": since,
        "until": until,
        "period": period,
        "pattern": COMMIT_TIME_PATTERN,
        "label": COMMIT_TIME_LABEL,
        "ids": list(integration_ids or []),
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    groups = []
    for by_integration_off, by_period_off, name, index, deployments, rollbacks, failed, p50, p90, restore in found:
        groups.append(
            _Group(
                integration=None if by_integration_off else name,
                period=None if by_period_off else index,
                deployments=deployments,
                rollbacks=rollbacks,
                failed=failed,
                lead_median=_number(p50),
                lead_p90=_number(p90),
                restore_median=_number(restore),
            )
        )
    return groups


def _number(value) -> float | None:
    """A database number (Decimal or float) as a float, keeping None."""
    return None if value is None else float(value)


def percentile(values: list[float], fraction: float) -> float | None:
    """The continuous percentile, interpolated between the two nearest ranks as PostgreSQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def commit_time_of(labels: dict | None) -> datetime | None:
    """The commit time CI gave for an artifact, or None when it gave none (or one that is not a timestamp)."""
    text = (labels or {}).get(COMMIT_TIME_LABEL)
    if not isinstance(text, str) or not re.match(COMMIT_TIME_PATTERN, text):
        return None
    try:
        return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)
    except ValueError:
        return None


def _rows_computed_here(*, env, since, until, period, integration_ids) -> list[_Group]:
    """The same groups as _aggregated_rows, computed in Python from the period's arrivals (SQLite, development).

    Also the reference the PostgreSQL query is tested against."""
    arrivals = Arrival.objects.filter(bucket__env=env, arrived_at__gte=since, arrived_at__lt=until)
    if integration_ids is not None:
        arrivals = arrivals.filter(bucket__integration_id__in=integration_ids)
    rows = list(
        arrivals.order_by("bucket_id", "arrived_at", "id").values_list(
            "bucket_id", "arrived_at", "how", "bucket__integration__name", "artifact__created_at", "artifact__labels"
        )
    )
    samples: list[tuple[str, int, str, float | None, float | None]] = []
    for index, (bucket_id, arrived_at, how, name, created_at, labels) in enumerate(rows):
        if how not in DEPLOYING:
            continue
        following = rows[index + 1] if index + 1 < len(rows) and rows[index + 1][0] == bucket_id else None
        restore = None
        if following is not None and following[2] == Arrival.How.ROLLBACK:
            restore = (following[1] - arrived_at).total_seconds()
        lead = None
        if how == Arrival.How.PROMOTION:
            lead = max(0.0, (arrived_at - (commit_time_of(labels) or created_at)).total_seconds())
        samples.append((name, int((arrived_at - since).total_seconds() // period), how, lead, restore))

    def group(integration: str | None, period_index: int | None, chosen) -> _Group:
        """The figures of the samples `chosen` for one grouping set."""
        leads = [s[3] for s in chosen if s[3] is not None]
        restores = [s[4] for s in chosen if s[4] is not None]
        return _Group(
            integration=integration,
            period=period_index,
            deployments=len(chosen),
            rollbacks=sum(1 for s in chosen if s[2] == Arrival.How.ROLLBACK),
            failed=len(restores),
            lead_median=percentile(leads, 0.5),
            lead_p90=percentile(leads, 0.9),
            restore_median=percentile(restores, 0.5),
        )

    groups = [group(None, None, samples)]
    for name in sorted({s[0] for s in samples}):
        groups.append(group(name, None, [s for s in samples if s[0] == name]))
    for index in sorted({s[1] for s in samples}):
        groups.append(group(None, index, [s for s in samples if s[1] == index]))
    return groups


def _report(groups: list[_Group], *, env, days, since, until, period) -> DoraReport:
    """The report from the grouping sets, with a series entry for every period (empty ones included)."""

    def figures(found: _Group | None, span_days: int) -> DoraFigures:
        """A group's figures as DoraFigures (zeros when the group had no deployments)."""
        if found is None:
            return DoraFigures(0, 0, 0, span_days, None, None, None)
        return DoraFigures(
            deployments=found.deployments,
            rollbacks=found.rollbacks,
            failed_deployments=found.failed,
            days=span_days,
            lead_time_median=found.lead_median,
            lead_time_p90=found.lead_p90,
            time_to_restore_median=found.restore_median,
        )

    overall = next((g for g in groups if g.integration is None and g.period is None), None)
    by_period = {g.period: g for g in groups if g.period is not None}
    periods = []
    for index in range(math.ceil(days * DAY / period)):
        found = by_period.get(index)
        start = since + timedelta(seconds=index * period)
        periods.append(
            Period(
                start=start,
                deployments=found.deployments if found else 0,
                rollbacks=found.rollbacks if found else 0,
                lead_time_median=found.lead_median if found else None,
            )
        )
    integrations = sorted(
        (IntegrationFigures(g.integration, figures(g, days)) for g in groups if g.integration is not None),
        key=lambda row: row.name,
    )
    return DoraReport(
        env=env,
        days=days,
        since=since,
        until=until,
        period_seconds=period,
        overall=figures(overall, days),
        integrations=integrations,
        periods=periods,
    )
