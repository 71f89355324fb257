"""The /insights/ page over a known week: the figures in words, two SVG charts with their data, a table alternative,
and a per-integration table that sorts."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def person() -> Client:
    """A signed-in person with no particular role: everyone who sees integrations sees insights."""
    client = Client()
    client.force_login(User.objects.create_user("viewer"))
    return client


def test_it_states_the_figures_in_words_with_their_bands(person, known_week):
    page = person.get("/insights/", {"days": 7}).content.decode()
    summary = re.search(r'<p class="insights-summary"[^>]*>(.*?)</p>', page, re.S).group(1)
    assert "6 deployments, 0.86 per day (high)" in summary
    assert "Median lead time 13.0 h (elite), 90th percentile 45.0 h (high)" in summary
    assert "2 of 6 deployments were rolled back: change failure rate 33% (low)" in summary
    assert "Median time to restore 1.2 h (high)" in summary


def test_the_charts_are_svg_drawn_from_the_data_with_titles_and_descriptions(person, known_week):
    page = person.get("/insights/", {"days": 7}).content.decode()
    deployments = re.search(r'<svg[^>]*data-chart="deployments-chart".*?</svg>', page, re.S).group(0)
    # Days 10, 11, 12 and 14 had deployments; 11 and 14 each had a rollback stacked on a promotion.
    assert len(re.findall(r'<rect class="bar promotions"', deployments)) == 4
    assert len(re.findall(r'<rect class="bar rollbacks"', deployments)) == 2
    assert 'role="img"' in deployments and "<title id=" in deployments and "<desc id=" in deployments
    lead = re.search(r'<svg[^>]*data-chart="lead-time-chart".*?</svg>', page, re.S).group(0)
    assert len(re.findall(r"<circle class=\"series-point\"", lead)) == 4
    assert "<script" not in page.split("</head>", 1)[1]  # nothing inline: the CSP allows no inline script


def test_the_table_alternative_lists_every_day(person, known_week):
    page = person.get("/insights/", {"days": 7}).content.decode()
    table = re.search(r'<table aria-label="Deployments and lead time per day">.*?</table>', page, re.S).group(0)
    assert len(re.findall(r"<tr><th scope=\"row\">", table)) == 7


def test_the_integration_table_sorts_by_a_column_and_back(person, known_week):
    def names(query):
        page = person.get("/insights/", {"days": 7, **query}).content.decode()
        table = re.search(r'<table class="insights-table".*?</table>', page, re.S).group(0)
        return re.findall(r'<th scope="row"><a href="/integrations/([\w-]+)/">', table), table

    assert names({})[0] == ["cart", "shop"]
    ordered, table = names({"sort": "-deployments"})
    assert ordered == ["shop", "cart"] and 'aria-sort="descending"' in table
    assert names({"sort": "failure"})[0] == ["shop", "cart"]  # 25 % before 50 %
    assert names({"sort": "nonsense"})[0] == ["cart", "shop"]


def test_one_integration_and_another_environment(person, known_week):
    page = person.get("/insights/", {"days": 7, "integration": "cart"}).content.decode()
    assert "2 deployments" in page
    page = person.get("/insights/", {"days": 7, "env": "staging"}).content.decode()
    assert "Insights: delivery into staging" in page and "1 deployments" in page


def test_an_empty_period_says_so_instead_of_drawing_nothing(person, history):
    page = person.get("/insights/").content.decode()
    assert "Nothing to show for this period" in page and "No deployments into prod in this period." in page


def test_a_constant_number_of_queries(person, known_week, django_assert_max_num_queries):
    # Ten: the report's own, plus the person's roles and teams and the teams they may filter by.
    with django_assert_max_num_queries(10) as small:
        person.get("/insights/", {"days": 90})
    artifact = known_week.artifact("shop", created_at=known_week.integrations["shop"].created_at)
    for n in range(3):
        known_week.integration(f"more-{n}")
    from tests.insights.conftest import at

    for hour in range(20):
        known_week.arrive(artifact, "prod", at(12, hour))
    with django_assert_max_num_queries(10) as large:
        person.get("/insights/", {"days": 90})
    assert len(small.captured_queries) == len(large.captured_queries)


def test_signed_out_people_are_sent_to_sign_in(known_week):
    response = Client().get("/insights/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
