"""GET /api/v1/insights/dora/: the same figures as the selector, as JSON and CSV, within the caller's integrations."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import User
from django.test import Client

from ci_integrations.services.actors import Actor
from ci_integrations.services.tokens import token_create
from tests.insights.conftest import at

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]
URL = "/api/v1/insights/dora/"


@pytest.fixture(autouse=True)
def generous_rate(settings):
    settings.P2P_API_TOKEN_RATE = "100000/minute"


@pytest.fixture
def reader() -> Client:
    """A client with a personal token of a person with no particular role (everyone may read insights)."""
    user = User.objects.create_user("reader")
    _, plain = token_create(name="laptop", kind="personal", user=user, actor=Actor.for_user(user))
    return Client(HTTP_AUTHORIZATION=f"Bearer {plain}")


def ci_client(integration) -> Client:
    _, plain = token_create(name="ci", kind="ci", system=True, integrations=[integration], actor=Actor.system("tests"))
    return Client(HTTP_AUTHORIZATION=f"Bearer {plain}")


def test_it_answers_the_four_keys_with_their_bands(reader, known_week):
    body = reader.get(URL, {"env": "prod", "days": 7}).json()
    assert (body["deployments"], body["rollbacks"], body["failed_deployments"]) == (6, 2, 2)
    assert body["deployment_frequency_per_day"] == {"value": pytest.approx(6 / 7), "band": "high"}
    assert body["lead_time_median_seconds"] == {"value": pytest.approx(46800), "band": "elite"}
    assert body["lead_time_p90_seconds"] == {"value": pytest.approx(162000), "band": "high"}
    assert body["change_failure_rate"] == {"value": pytest.approx(1 / 3), "band": "low"}
    assert body["time_to_restore_median_seconds"] == {"value": pytest.approx(4500), "band": "high"}
    assert [row["name"] for row in body["integrations"]] == ["cart", "shop"]
    assert [p["deployments"] for p in body["series"]] == [0, 1, 2, 1, 0, 2, 0]
    assert body["period"] == "day" and body["team"] is None


def test_prod_and_thirty_days_are_the_defaults(reader, known_week):
    body = reader.get(URL).json()
    assert (body["env"], body["days"], body["deployments"]) == ("prod", 30, 7)
    staging = reader.get(URL, {"env": "staging", "days": 7}).json()
    assert staging["deployments"] == 1  # shop's one promotion into staging
    assert [row["name"] for row in staging["integrations"]] == ["shop"]


def test_a_team_filter_measures_the_teams_integrations(reader, known_week):
    from ci_integrations.models import Team

    payments = Team.objects.create(name="payments")
    payments.members.add(User.objects.get(username="reader"))
    known_week.integrations["cart"].team = payments
    known_week.integrations["cart"].save(update_fields=["team"])
    body = reader.get(URL, {"days": 7, "team": "payments"}).json()
    assert body["deployments"] == 2 and body["team"] == "payments"
    assert [row["name"] for row in body["integrations"]] == ["cart"]
    body = reader.get(URL, {"integration": "cart", "days": 7, "team": "payments"}).json()
    assert body["integration"] == "cart" and body["deployments"] == 2
    refused = reader.get(URL, {"integration": "shop", "team": "payments"})
    assert refused.status_code == 404 and "in team 'payments'" in refused.json()["error"]["message"]
    assert reader.get(URL, {"team": "nobody"}).status_code == 404


def test_a_person_outside_a_team_measures_only_what_they_see(known_week):
    from ci_integrations.models import Team
    from ci_integrations.services.tokens import token_create
    from tests.api.conftest import SYSTEM, Caller

    payments = Team.objects.create(name="payments")
    known_week.integrations["cart"].team = payments
    known_week.integrations["cart"].save(update_fields=["team"])
    outsider = User.objects.create_user("outsider")
    _, plain = token_create(name="t", kind="personal", user=outsider, actor=SYSTEM)
    body = Caller("outsider", plain).get(URL + "?days=7").json()
    assert [row["name"] for row in body["integrations"]] == ["shop"]
    assert Caller("outsider", plain).get(URL + "?integration=cart").status_code == 404


def test_a_ci_token_measures_only_its_own_integrations(reader, known_week):
    client = ci_client(known_week.integrations["cart"])
    assert client.get(URL, {"days": 7}).json()["deployments"] == 2
    refused = client.get(URL, {"integration": "shop"})
    assert refused.status_code == 404 and refused.json()["error"]["message"] == "no integration named 'shop'"


def test_csv_has_a_total_row_then_one_row_per_integration(reader, known_week):
    response = reader.get(URL, {"days": 7, "format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["integration"] for row in rows] == ["(all)", "cart", "shop"]
    total = rows[0]
    assert (total["deployments"], total["rollbacks"], total["failed_deployments"]) == ("6", "2", "2")
    assert float(total["change_failure_rate"]) == pytest.approx(1 / 3, abs=1e-6)
    assert total["change_failure_rate_band"] == "low"
    assert float(rows[2]["time_to_restore_median_seconds"]) == 1800 and rows[2]["time_to_restore_median_seconds_band"]
    assert rows[1]["lead_time_median_seconds_band"] == "high"


@pytest.mark.parametrize(
    ("query", "field"),
    [({"days": "0"}, "days"), ({"days": "many"}, "days"), ({"env": "PROD!"}, "env"), ({"format": "xml"}, "format")],
)
def test_bad_parameters_get_a_400_naming_the_field(reader, known_week, query, field):
    response = reader.get(URL, query)
    assert response.status_code == 400
    assert field in response.json()["error"]["details"]


def test_anonymous_callers_are_refused(known_week):
    assert Client().get(URL).status_code == 401


def test_a_constant_number_of_queries_however_long_the_history(reader, known_week, django_assert_max_num_queries):
    client = reader
    client.get(URL)  # the token's first use writes last_used_at
    with django_assert_max_num_queries(4) as small:
        client.get(URL, {"days": 90})
    artifact = known_week.artifact("shop", created_at=at(12, 1))
    for hour in range(20):
        known_week.arrive(artifact, "prod", at(12, hour))
    with django_assert_max_num_queries(4) as large:
        assert client.get(URL, {"days": 90}).json()["deployments"] == 27
    assert len(small.captured_queries) == len(large.captured_queries)
