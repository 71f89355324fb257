"""API v1 insights: the four DORA keys of one environment as JSON or CSV (see ci_integrations/insights.py for what
each figure means and how its band is chosen)."""

from __future__ import annotations

import csv
import io

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response

from ci_integrations import selectors
from ci_integrations.api.schema import READ_ERRORS, api_operation
from ci_integrations.api.serializers import Line, QueryIn, valid_environment, valid_name
from ci_integrations.api.views import ApiView
from ci_integrations.insights import KEYS, DoraFigures, DoraReport, dora_report

ALL_INTEGRATIONS = "(all)"  # the CSV's total row: never an integration name, which is a slug


class DoraQueryIn(QueryIn):
    team = Line(max_length=63, required=False, allow_blank=True, default="", validators=[valid_name])
    integration = Line(max_length=63, required=False, allow_blank=True, default="", validators=[valid_name])
    env = Line(max_length=63, required=False, default="prod", validators=[valid_environment])
    days = serializers.IntegerField(min_value=1, max_value=366, required=False, default=30)
    format = serializers.ChoiceField(choices=["json", "csv"], required=False, default="json")


class FigureOut(serializers.Serializer):
    value = serializers.FloatField(allow_null=True)
    band = serializers.ChoiceField(choices=["elite", "high", "medium", "low"], allow_null=True)


class DoraFiguresOut(serializers.Serializer):
    deployments = serializers.IntegerField()
    rollbacks = serializers.IntegerField()
    failed_deployments = serializers.IntegerField()
    deployment_frequency_per_day = FigureOut()
    lead_time_median_seconds = FigureOut()
    lead_time_p90_seconds = FigureOut()
    change_failure_rate = FigureOut()
    time_to_restore_median_seconds = FigureOut()


class DoraIntegrationOut(DoraFiguresOut):
    name = serializers.CharField()


class DoraPeriodOut(serializers.Serializer):
    start = serializers.DateTimeField()
    deployments = serializers.IntegerField()
    rollbacks = serializers.IntegerField()
    lead_time_median_seconds = serializers.FloatField(allow_null=True)


class DoraOut(DoraFiguresOut):
    env = serializers.CharField()
    days = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    integration = serializers.CharField(allow_null=True)
    team = serializers.CharField(
        allow_null=True, help_text="the team whose integrations were measured, if one was chosen"
    )
    period = serializers.ChoiceField(choices=["day", "week"])
    integrations = DoraIntegrationOut(many=True)
    series = DoraPeriodOut(many=True)


class JsonOnly(DefaultContentNegotiation):
    """Always JSON: `?format=csv` is this view's own parameter, not DRF's renderer override."""

    def select_renderer(self, request, renderers, format_suffix=None):
        """The first (JSON) renderer, whatever `format` says."""
        return renderers[0], renderers[0].media_type


def dora_as_json(report: DoraReport, *, integration: str | None, team: str) -> dict:
    """The report as the API's JSON answer."""
    return {
        "env": report.env,
        "days": report.days,
        "since": report.since,
        "until": report.until,
        "integration": integration,
        "team": team or None,
        "period": report.period_name,
        **report.overall.as_dict(),
        "integrations": [{"name": row.name, **row.figures.as_dict()} for row in report.integrations],
        "series": [
            {
                "start": p.start,
                "deployments": p.deployments,
                "rollbacks": p.rollbacks,
                "lead_time_median_seconds": p.lead_time_median,
            }
            for p in report.periods
        ],
    }


def dora_as_csv(report: DoraReport) -> str:
    """One row for all integrations together, then one per integration; each key as a value and a band column."""
    header = ["integration", "env", "days", "deployments", "rollbacks", "failed_deployments"]
    for name in KEYS:
        header += [name, f"{name}_band"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)

    def row(name: str, figures: DoraFigures) -> list:
        """One CSV row: the counts, then each key's value and band (empty when nothing was measured)."""
        shown = figures.as_dict()
        cells = [name, report.env, report.days, figures.deployments, figures.rollbacks, figures.failed_deployments]
        for key in KEYS:
            value = shown[key]["value"]
            cells += ["" if value is None else round(value, 6), shown[key]["band"] or ""]
        return cells

    writer.writerow(row(ALL_INTEGRATIONS, report.overall))
    for integration in report.integrations:
        writer.writerow(row(integration.name, integration.figures))
    return out.getvalue()


class DoraView(ApiView):
    content_negotiation_class = JsonOnly

    @api_operation(
        operation_id="insights_dora",
        parameters=[DoraQueryIn],
        responses={(200, "application/json"): DoraOut, (200, "text/csv"): OpenApiTypes.STR},
        errors=READ_ERRORS,
    )
    def get(self, request):
        """The four DORA keys of one environment (prod by default) over the last `days` days (UTC, today included),
        overall, per integration and per day (per week beyond a month), each with its DORA 2023 band.
        `format=csv` answers the table as CSV. `team` measures that team's integrations. Everyone sees the figures
        of the integrations they see: a CI token its own, a person their teams' (all for auditors and platform
        admins)."""
        query = self.parse(DoraQueryIn, request.query_params)
        integration_ids = selectors.insight_integration_ids(
            self.actor(), team=query["team"], integration=query["integration"]
        )
        report = dora_report(env=query["env"], days=query["days"], integration_ids=integration_ids)
        if query["format"] == "csv":
            response = HttpResponse(dora_as_csv(report), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="dora-{report.env}-{report.days}d.csv"'
            return response
        body = dora_as_json(report, integration=query["integration"] or None, team=query["team"])
        return Response(DoraOut(body).data)
