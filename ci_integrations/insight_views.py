"""The insights page: the four DORA keys of one environment, as figures, SVG charts and a per-integration table.

Thin like views.py: it reads the filter, calls the insights selector once and hands chart geometry to the
templates. Everyone who is signed in may read it, as they may read the overview.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from ci_integrations import charts, selectors
from ci_integrations.insights import PERIOD_CHOICES, DoraReport, IntegrationFigures, dora_report
from ci_integrations.services.actors import Actor
from ci_integrations.services.errors import NotFound

BAND_WORDS = {"elite": "elite", "high": "high", "medium": "medium", "low": "low", None: "no band"}
# Table columns that sort: query value → (header, key of a row); None sorts last whichever the direction.
SORTS = {
    "name": ("Integration", lambda row: row.name),
    "deployments": ("Deployments", lambda row: row.figures.deployments),
    "frequency": ("Per day", lambda row: row.figures.deployment_frequency_per_day.value),
    "lead": ("Lead time (median)", lambda row: row.figures.lead_time_median_seconds.value),
    "lead90": ("Lead time (p90)", lambda row: row.figures.lead_time_p90_seconds.value),
    "failure": ("Change failure rate", lambda row: row.figures.change_failure_rate.value),
    "restore": ("Time to restore (median)", lambda row: row.figures.time_to_restore_median_seconds.value),
}


class InsightsFilterForm(forms.Form):
    """Which environment, integration and period the page measures; anything unknown falls back to the default."""

    env = forms.ChoiceField(label="Environment", required=False)
    team = forms.ChoiceField(label="Team", required=False)
    integration = forms.ChoiceField(label="Integration", required=False)
    days = forms.TypedChoiceField(
        label="Period", required=False, coerce=int, choices=[(d, f"last {d} days") for d in PERIOD_CHOICES]
    )

    def __init__(self, data, *, environments: list[str], integrations: list[str], teams: list[str]):
        super().__init__(data)
        self.fields["env"].choices = [(env, env) for env in environments]
        self.fields["team"].choices = [("", "all teams")] + [(n, n) for n in teams]
        self.fields["integration"].choices = [("", "all integrations")] + [(n, n) for n in integrations]

    def chosen(self, default_env: str) -> dict:
        """The valid choices, with defaults (prod, all integrations, 30 days) for what is missing or wrong."""
        data = self.cleaned_data if self.is_valid() else {}
        return {
            "env": data.get("env") or default_env,
            "team": data.get("team") or "",
            "integration": data.get("integration") or "",
            "days": data.get("days") or 30,
        }


def _sorted_rows(rows: list[IntegrationFigures], sort: str) -> tuple[list[IntegrationFigures], str, bool]:
    """Rows sorted by `sort` (a SORTS key, `-` first for descending); unmeasured values always go last."""
    descending = sort.startswith("-")
    key = sort.lstrip("-")
    if key not in SORTS:
        key, descending = "name", False
    pick = SORTS[key][1]
    measured = [row for row in rows if pick(row) is not None]
    missing = [row for row in rows if pick(row) is None]
    return sorted(measured, key=pick, reverse=descending) + missing, key, descending


def _chart_labels(report: DoraReport) -> list[str]:
    """One label per period: the day ("Nov 3"), or the week's first day ("from Nov 3")."""
    return [f"{p.start:%b} {p.start.day}" for p in report.periods]


def _summary(report: DoraReport) -> str:
    """The figures in one paragraph, as a person would read them out."""
    o = report.overall
    f = o.deployment_frequency_per_day
    last_day = report.until - timedelta(days=1)  # `until` is the midnight after today
    parts = [
        f"{report.env}, last {report.days} days ({report.since:%Y-%m-%d} to {last_day:%Y-%m-%d}, UTC): "
        f"{o.deployments} deployments, {f.value:.2f} per day ({BAND_WORDS[f.band]})."
    ]
    if o.lead_time_median is not None:
        parts.append(
            f"Median lead time {charts.human_duration(o.lead_time_median)} "
            f"({BAND_WORDS[o.lead_time_median_seconds.band]}), 90th percentile "
            f"{charts.human_duration(o.lead_time_p90)} ({BAND_WORDS[o.lead_time_p90_seconds.band]})."
        )
    if o.deployments:
        parts.append(
            f"{o.failed_deployments} of {o.deployments} deployments were rolled back: change failure rate "
            f"{o.change_failure_rate.value:.0%} ({BAND_WORDS[o.change_failure_rate.band]})."
        )
    if o.time_to_restore_median is not None:
        parts.append(
            f"Median time to restore {charts.human_duration(o.time_to_restore_median)} "
            f"({BAND_WORDS[o.time_to_restore_median_seconds.band]})."
        )
    return " ".join(parts)


def _deployment_chart(report: DoraReport, labels: list[str]) -> charts.Chart:
    """Deployments per period, the rollbacks among them stacked on top of the promotions."""
    promotions = [p.deployments - p.rollbacks for p in report.periods]
    rollbacks = [p.rollbacks for p in report.periods]
    busiest = max(report.periods, key=lambda p: p.deployments, default=None)
    summary = (
        f"{report.overall.deployments} deployments into {report.env}, {report.overall.rollbacks} of them rollbacks."
    )
    if busiest is not None and busiest.deployments:
        summary += (
            f" The busiest {report.period_name} was {busiest.start:%b} {busiest.start.day}, with {busiest.deployments}."
        )
    return charts.stacked_bars(
        key="deployments-chart",
        title=f"Deployments per {report.period_name}",
        summary=summary,
        labels=labels,
        series=[("promotions", "promotions", promotions), ("rollbacks", "rollbacks", rollbacks)],
        y_title="deployments",
        x_title=f"{report.period_name} (UTC)",
    )


def _lead_time_chart(report: DoraReport, labels: list[str]) -> charts.Chart:
    """The median lead time of each period's promotions, in a unit that keeps the numbers small."""
    seconds = [p.lead_time_median for p in report.periods]
    unit, per_unit = charts.duration_unit([s for s in seconds if s is not None])
    values = [None if s is None else s / per_unit for s in seconds]
    measured = [p for p in report.periods if p.lead_time_median is not None]
    if measured:
        slowest = max(measured, key=lambda p: p.lead_time_median)
        summary = (
            f"Median lead time per {report.period_name}, in {unit}, over {len(measured)} {report.period_name}s with "
            f"promotions. Slowest: {slowest.start:%b} {slowest.start.day}, "
            f"{charts.human_duration(slowest.lead_time_median)}."
        )
    else:
        summary = "No promotions in this period, so no lead times."
    return charts.line(
        key="lead-time-chart",
        title=f"Lead time for changes (median per {report.period_name})",
        summary=summary,
        labels=labels,
        values=values,
        unit=unit,
        y_title=unit,
        x_title=f"{report.period_name} (UTC)",
    )


@require_GET
@login_required
def insights(request: HttpRequest) -> HttpResponse:
    """The DORA keys of one environment (prod by default) over 7, 30 or 90 days, for all or one integration."""
    actor = Actor.from_request(request)
    environments = sorted(selectors.environment_names())
    integrations = list(selectors.integrations_visible_to(actor).order_by("name").values_list("name", flat=True))
    form = InsightsFilterForm(
        request.GET or None,
        environments=environments,
        integrations=integrations,
        teams=selectors.team_names_visible_to(actor),
    )
    chosen = form.chosen("prod" if "prod" in environments or not environments else environments[-1])
    try:
        ids = selectors.insight_integration_ids(actor, team=chosen["team"], integration=chosen["integration"])
    except NotFound as exc:
        raise Http404(exc.message) from None
    report = dora_report(env=chosen["env"], days=chosen["days"], integration_ids=ids)
    rows, sort_key, descending = _sorted_rows(report.integrations, request.GET.get("sort", "name"))
    labels = _chart_labels(report)
    filters = {k: v for k, v in chosen.items() if v}
    headers = []
    for key, (title, _) in SORTS.items():
        # A header sorts by its column; clicking the current one again turns the order round.
        next_sort = key if key != sort_key or descending else f"-{key}"
        state = ("descending" if descending else "ascending") if key == sort_key else None
        headers.append({"title": title, "href": "?" + urlencode({**filters, "sort": next_sort}), "sort": state})
    context = {
        "form": form,
        "report": report,
        "chosen": chosen,
        "summary": _summary(report),
        "charts": [_deployment_chart(report, labels), _lead_time_chart(report, labels)],
        "periods": list(zip(labels, report.periods, strict=True)),
        "rows": rows,
        "headers": headers,
        "api_query": urlencode(filters),
    }
    return render(request, "ci_integrations/insights.html", context)
