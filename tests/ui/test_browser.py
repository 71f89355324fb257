"""The dashboard in a real Chromium against a live server, a real RQ worker process and real registries."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from playwright.sync_api import expect

from ci_integrations.models import Arrival, Promotion
from tests.support.images import get_manifest_digest

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

SCRIPT = "<script>window.__pwned = 1</script>"


def promote_from_integration_page(session, world, candidate_tag: str, reason: str):
    page = session.goto(f"/integrations/{world.integration.name}/")
    session.screenshot("integration")
    page.get_by_role("link", name=f"Promote {candidate_tag} to staging").click()
    expect(page.get_by_role("heading", name="Promote to staging")).to_be_visible()
    expect(page.get_by_role("list", name="Policy")).to_contain_text("1 needed from release-managers")
    expect(page.get_by_role("list", name="Preflight")).to_contain_text("source readable: yes")
    # The diff comes after the page, from the registry, by htmx (no inline script: the CSP holds).
    expect(page.locator(".diff")).to_contain_text("Layers")
    expect(page.locator(".diff")).to_contain_text("nothing yet")
    session.screenshot("promote-preview")
    page.get_by_label("Reason").fill(reason)
    page.get_by_role("button", name="Request promotion").click()
    expect(page.locator("[data-state]")).to_have_text("Pending approval")
    return Promotion.objects.order_by("-id").first()


def test_promote_approve_and_watch_the_copy_reach_the_target_registry(live_world, worker, browse):
    world = live_world
    world.push_and_register("qa", "1.0.0", git_sha="a" * 40, branch="main", build_url="https://ci.example.com/1")
    artifact = world.push_and_register("qa", "1.1.0", git_sha="b" * 40, branch="main")

    requester = browse("release1")
    session_page = requester.goto("/")
    expect(session_page.locator("table.matrix")).to_contain_text("1.1.0")
    requester.screenshot("overview")
    promotion = promote_from_integration_page(requester, world, "1.1.0", "weekly release")
    requester.screenshot("promotion-pending")
    expect(requester.page.locator("#decision")).to_contain_text("four-eyes")
    expect(requester.page.get_by_role("button", name="Approve")).to_have_count(0)

    approver = browse("release2")
    page = approver.goto("/approvals/")
    expect(page.get_by_role("button", name="Approve")).to_be_visible()
    expect(page.locator(".diff")).to_contain_text("Checks and metadata")
    approver.screenshot("approvals-inbox")
    page.get_by_label("Comment", exact=True).fill("checked the changelog")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".message.success")).to_contain_text(f"Approved #{promotion.pk}")

    page = approver.goto(f"/promotions/{promotion.pk}/")
    # htmx polls the same URL; the live part moves through the states and stops polling at the end.
    expect(page.locator("[data-state]")).to_have_text("Succeeded", timeout=30_000)
    expect(page.locator(".progress-text")).to_contain_text("blobs")
    expect(page.locator("blockquote")).to_have_text("checked the changelog")
    approver.screenshot("promotion-succeeded")
    staging_digest = get_manifest_digest(world.url_a, world.staging.repository, "1.1.0")
    assert staging_digest == artifact.digest

    page = approver.goto(f"/artifacts/{artifact.pk}/")
    expect(page.locator(".timeline")).to_contain_text("staging")
    approver.screenshot("artifact")
    assert not requester.console_errors and not approver.console_errors


def test_rolling_back_returns_the_environment_to_an_earlier_arrival(live_world, worker, browse):
    world = live_world
    old = world.push_and_register("staging", "2.0.0")
    world.push_and_register("staging", "2.1.0")
    session = browse("release1")
    page = session.goto(f"/integrations/{world.integration.name}/")
    staging = page.locator("section", has=page.get_by_role("heading", name="staging", exact=True))
    staging.get_by_role("link", name="Roll back to this").click()
    expect(page.get_by_role("heading", name="Roll back staging")).to_be_visible()
    session.screenshot("rollback-preview")
    page.get_by_label("Reason").fill("2.1.0 breaks checkout")
    page.get_by_role("button", name="Request rollback").click()
    expect(page.locator("[data-state]")).to_have_text("Succeeded", timeout=30_000)
    session.screenshot("rollback-succeeded")
    world.staging.refresh_from_db()
    assert world.staging.current_arrival.artifact_id == old.pk
    assert world.staging.current_arrival.how == Arrival.How.ROLLBACK
    assert get_manifest_digest(world.url_a, world.staging.repository, "2.0.0") == old.digest


def test_a_rejected_promotion_ends_without_a_copy(live_world, worker, browse):
    world = live_world
    world.push_and_register("qa", "3.0.0")
    requester = browse("release1")
    promotion = promote_from_integration_page(requester, world, "3.0.0", "try it")
    approver = browse("release2")
    page = approver.goto(f"/promotions/{promotion.pk}/")
    page.get_by_label("Comment", exact=True).fill("not during the sale")
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("[data-state]")).to_have_text("Rejected")
    expect(page.locator(".decision.reject")).to_be_visible()
    expect(page.locator("blockquote")).to_have_text("not during the sale")
    approver.screenshot("promotion-rejected")
    assert get_manifest_digest(world.url_a, world.staging.repository, "3.0.0") is None


def test_an_auditor_reads_and_exports_the_log_and_is_never_offered_approve(live_world, worker, browse):
    world = live_world
    artifact = world.push_and_register("qa", "4.0.0", branch=SCRIPT, labels={"note": SCRIPT})
    requester = browse("release1")
    promotion = promote_from_integration_page(requester, world, "4.0.0", SCRIPT)

    auditor = browse("auditor")
    page = auditor.goto("/audit/")
    expect(page.locator("table.audit")).to_contain_text("promotion.requested")
    expect(page.locator("table.audit")).to_contain_text("artifact.registered")
    page.get_by_label("Action").fill("promotion.")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.audit tbody tr")).to_have_count(1)
    page.get_by_role("button", name="Verify the chain now").click()
    expect(page.locator("#chain-badge")).to_contain_text("Chain verified", timeout=15_000)
    auditor.screenshot("audit-log")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    rows = list(csv.reader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert [row[3] for row in rows[1:-1]] == ["promotion.requested"] and rows[-1][0] == "# chain_head"
    assert SCRIPT in rows[1][11]  # the reason, as plain text
    with page.expect_download() as download:
        page.get_by_role("link", name="Export JSON Lines").click()
    lines = open(download.value.path(), encoding="utf-8").read().splitlines()
    assert json.loads(lines[0])["reason"] == SCRIPT and "chain_head" in json.loads(lines[-1])

    for path in (f"/promotions/{promotion.pk}/", "/approvals/", f"/artifacts/{artifact.pk}/"):
        page = auditor.goto(path)
        page.wait_for_load_state("networkidle")
        expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(auditor.goto(f"/promotions/{promotion.pk}/").locator("#decision")).to_contain_text("Why can't I approve?")
    auditor.screenshot("promotion-as-auditor")


def test_markup_in_metadata_and_reasons_shows_as_text_on_every_page(live_world, browse):
    world = live_world
    artifact = world.push_and_register("qa", "5.0.0", branch=SCRIPT, labels={"note": SCRIPT})
    requester = browse("release1")
    promotion = promote_from_integration_page(requester, world, "5.0.0", SCRIPT)
    for who in ("release2", "auditor"):
        session = browse(who)
        for path in (
            "/",
            f"/integrations/{world.integration.name}/",
            f"/artifacts/{artifact.pk}/",
            f"/promotions/{promotion.pk}/",
            "/approvals/",
            *(["/audit/"] if who == "auditor" else []),
        ):
            page = session.goto(path)
            page.wait_for_load_state("networkidle")
            assert page.evaluate("window.__pwned") is None, f"{path} ran injected script as {who}"
        page = session.goto(f"/artifacts/{artifact.pk}/")
        expect(page.locator("main")).to_contain_text(SCRIPT)
    session.screenshot("escaped-markup")


def test_forms_have_labels_and_approve_is_reachable_by_keyboard(live_world, browse):
    world = live_world
    world.push_and_register("qa", "6.0.0")
    requester = browse("release1")
    promotion = promote_from_integration_page(requester, world, "6.0.0", "keyboard")
    approver = browse("release2")
    auditor = browse("auditor")
    for session, path in (
        (browse(), "/login/"),
        (approver, "/tokens/"),
        (auditor, "/audit/"),
        (approver, f"/promotions/{promotion.pk}/"),
        (approver, "/approvals/"),
    ):
        page = session.goto(path)
        page.wait_for_load_state("networkidle")
        unlabeled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), textarea, select')]
                 .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                 .map(el => el.name || el.id)"""
        )
        assert unlabeled == [], f"{path}: {unlabeled}"
    page = approver.goto("/approvals/")
    expect(page.get_by_role("button", name="Approve")).to_be_visible()
    approver.screenshot("approvals-keyboard")
    page.locator("body").focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Approve":
            break
    else:
        pytest.fail("Tab never reached the Approve button")
    page.keyboard.press("Enter")
    expect(page.locator(".message.success")).to_contain_text(f"Approved #{promotion.pk}")


def test_every_other_page_renders_for_review(live_world, browse):
    world = live_world
    world.push_and_register("qa", "7.0.0")
    browse().goto("/login/")
    admin = browse("admin")
    for path, name in (
        ("/tokens/", "tokens"),
        ("/freeze-windows/", "freeze-windows"),
    ):
        admin.goto(path)
        admin.screenshot(name)
    page = admin.goto("/tokens/")
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    value = page.locator("#new-token").input_value()
    assert re.match(r"^p2p_", value)
    page.get_by_role("button", name="Copy").click()
    expect(page.locator(".copied")).not_to_be_empty()
    admin.screenshot("token-created")
    login = browse()
    login.goto("/login/")
    login.screenshot("sign-in")


def test_the_api_docs_render_from_the_portal_alone_under_its_csp(live_world, browse):
    session = browse()
    elsewhere = []
    session.page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(session.base_url)
            else (elsewhere.append(route.request.url), route.abort())
        ),
    )
    page = session.goto("/api/docs/")
    expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=15000)
    expect(page.locator("#swagger-ui")).to_contain_text("/api/v1/integrations/{name}/artifacts/")
    assert elsewhere == []  # no CDN: the bundle, styles and icons all come from the portal
    session.screenshot("api-docs")
