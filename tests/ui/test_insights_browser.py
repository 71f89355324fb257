"""The insights page in a real Chromium under the site's CSP: the charts render, with data, and a screenshot is kept
for review."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from ci_integrations.models import Arrival, Registry
from tests.insights.conftest import History, at

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


def test_the_insights_page_draws_its_charts_with_data(live_world, browse):
    history = History(registry=Registry.objects.get(url=live_world.url_a))
    for day in range(9, 16):
        artifact = history.artifact("catalog", created_at=at(day, 1))
        history.arrive(artifact, "prod", at(day, 9))
        if day in (11, 14):
            history.arrive(artifact, "prod", at(day, 10), Arrival.How.ROLLBACK)

    session = browse("viewer")
    page = session.goto("/insights/?days=7")
    deployments = page.locator('svg[data-chart="deployments-chart"]')
    expect(deployments).to_have_attribute("data-has-data", "yes")
    expect(deployments.locator("rect.bar.promotions")).to_have_count(7)
    expect(deployments.locator("rect.bar.rollbacks")).to_have_count(2)
    lead = page.locator('svg[data-chart="lead-time-chart"]')
    expect(lead.locator("circle.series-point")).to_have_count(7)
    # Drawn, not only present: the bars have a real size on screen, and the styles (a static file) apply.
    box = deployments.locator("rect.bar.promotions").first.bounding_box()
    assert box and box["width"] > 10 and box["height"] > 10
    fill = deployments.locator("rect.bar.rollbacks").first.evaluate("el => getComputedStyle(el).fill")
    assert fill not in ("", "none", "rgb(0, 0, 0)")
    expect(page.get_by_role("img", name="Deployments per day")).to_be_visible()
    expect(page.locator("#insights-summary")).to_contain_text("9 deployments")
    page.get_by_role("link", name="Deployments").click()
    expect(page.locator("th[aria-sort]")).to_have_attribute("aria-sort", "ascending")
    session.screenshot("insights")
