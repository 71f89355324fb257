"""Keyboard and screen-reader use of the dashboard, in a real Chromium: the structure every page needs (labels, one
h1, landmarks, a skip link, named tables and buttons, errors tied to their fields), text contrast computed from the
stylesheet, a visible focus ring at every Tab stop, live updates that are announced without wiping what is typed,
and the main path (request a promotion, approve it) done with the keyboard alone."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect

from ci_integrations.models import FreezeWindow, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.promotions import promotion_request
from tests.support.sign_in import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

# WCAG 2.x relative luminance and contrast ratio, and the colour behind an element (its first opaque ancestor).
COLOUR_JS = """
const rgb = (value) => (value.match(/[\\d.]+/g) || []).map(Number);
const luminance = ([r, g, b]) => {
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
};
const ratio = (a, b) => {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
};
const backgroundOf = (el) => {
  for (; el; el = el.parentElement) {
    const c = rgb(getComputedStyle(el).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
  }
  return [255, 255, 255];
};
"""

# Every rule checked on every page; returns the problems found, empty when the page is fine.
STRUCTURE_JS = (
    "(signedIn) => {"
    + COLOUR_JS
    + """
  const problems = [];
  const describe = (el) => el.outerHTML.slice(0, 120);
  const nameOf = (el) => (el.getAttribute('aria-label') || '').trim() ||
    (el.getAttribute('aria-labelledby') || '').split(/\\s+/).map((id) => document.getElementById(id))
      .filter(Boolean).map((n) => n.textContent).join(' ').trim() ||
    (el.textContent || '').trim() || (el.getAttribute('title') || '').trim();
  if (!document.documentElement.lang) problems.push('no lang on <html>');
  if (!document.title.trim()) problems.push('no <title>');
  const h1s = document.querySelectorAll('h1');
  if (h1s.length !== 1) problems.push(`${h1s.length} h1 elements`);
  let level = 0;
  for (const h of document.querySelectorAll('h1, h2, h3, h4, h5, h6')) {
    const next = Number(h.tagName[1]);
    if (next > level + 1) problems.push(`heading skips from h${level} to h${next}: ${h.textContent.trim()}`);
    level = next;
  }
  for (const [selector, count] of [['header', 1], ['main', 1]]) {
    if (document.querySelectorAll(selector).length !== count) problems.push(`not exactly ${count} <${selector}>`);
  }
  if (signedIn && !document.querySelector('header nav[aria-label]')) problems.push('no labelled <nav> in the header');
  for (const nav of document.querySelectorAll('nav')) {
    if (!nameOf(nav) || !nav.getAttribute('aria-label')) problems.push(`unlabelled nav: ${describe(nav)}`);
  }
  const focusable = [...document.querySelectorAll(
    'a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]')];
  const skip = focusable[0];
  if (!skip || skip.tagName !== 'A' || !skip.hash || !document.querySelector('main' + skip.hash)) {
    problems.push('the first focusable element is not a skip link to <main>');
  }
  const ids = {};
  for (const el of document.querySelectorAll('[id]')) ids[el.id] = (ids[el.id] || 0) + 1;
  for (const [id, n] of Object.entries(ids)) if (n > 1) problems.push(`id ${id} used ${n} times`);
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    if (!(el.labels && el.labels.length) && !nameOf(el)) problems.push(`unlabelled control: ${describe(el)}`);
  }
  for (const el of document.querySelectorAll('[aria-describedby], [aria-labelledby]')) {
    const refs = `${el.getAttribute('aria-describedby') || ''} ${el.getAttribute('aria-labelledby') || ''}`;
    for (const id of refs.split(/\\s+/).filter(Boolean)) {
      if (!document.getElementById(id)) problems.push(`points at missing #${id}: ${describe(el)}`);
    }
  }
  for (const el of document.querySelectorAll('[aria-invalid=true]')) {
    const described = el.closest('[aria-describedby]');
    const said = ((described && described.getAttribute('aria-describedby')) || '').split(/\\s+/)
      .map((id) => document.getElementById(id));
    if (!said.some((n) => n && n.matches('.error, [role=alert]'))) {
      problems.push(`invalid without its error: ${describe(el)}`);
    }
  }
  // A field's error is read with the field: some control (or fieldset) of that field points at it.
  for (const error of document.querySelectorAll('.field .error')) {
    const field = error.closest('.field');
    const pointers = [...field.querySelectorAll('[aria-describedby]')];
    const tied = error.id &&
      pointers.some((el) => el.getAttribute('aria-describedby').split(/\\s+/).includes(error.id));
    if (!tied) problems.push(`error not tied to its field: ${error.textContent.trim()}`);
    if (!error.closest('[role=alert], [aria-live]')) problems.push(`error not announced: ${error.textContent.trim()}`);
  }
  for (const el of document.querySelectorAll('[tabindex]')) {
    if (el.tabIndex > 0) problems.push(`positive tabindex: ${describe(el)}`);
  }
  for (const img of document.querySelectorAll('img, [role=img]')) {
    if (!img.hasAttribute('alt') && !img.getAttribute('aria-label')) {
      problems.push(`image without alt: ${describe(img)}`);
    }
  }
  for (const el of document.querySelectorAll('button, a[href], summary, [role=button]')) {
    if (!nameOf(el)) problems.push(`no accessible name: ${describe(el)}`);
  }
  for (const a of document.querySelectorAll('a:not([href])')) problems.push(`link without href: ${describe(a)}`);
  for (const table of document.querySelectorAll('table')) {
    const named = table.getAttribute('aria-label') || table.getAttribute('aria-labelledby');
    if (!table.querySelector('caption') && !named) {
      problems.push(`table without caption or label: ${describe(table)}`);
    }
    for (const th of table.querySelectorAll('th')) {
      if (!th.getAttribute('scope')) problems.push(`th without scope: ${th.textContent.trim()}`);
    }
  }
  for (const bar of document.querySelectorAll('progress, [role=progressbar]')) {
    const valued = bar.tagName === 'PROGRESS' ? bar.hasAttribute('max') && bar.hasAttribute('value')
      : bar.hasAttribute('aria-valuenow') && bar.hasAttribute('aria-valuemin') && bar.hasAttribute('aria-valuemax');
    if (!valued) problems.push(`progress without its values: ${describe(bar)}`);
    if (!(bar.labels && bar.labels.length) && !nameOf(bar)) problems.push(`unlabelled progress: ${describe(bar)}`);
  }
  // Status pills carry their meaning in words too, not only in their colour.
  for (const pill of document.querySelectorAll('.state, .check, .badge, .decision')) {
    if (!pill.textContent.trim()) problems.push(`status shown by colour only: ${describe(pill)}`);
  }
  for (const row of document.querySelectorAll('tr.active')) {
    if (!/active/i.test(row.textContent)) problems.push(`row marked active by colour only: ${row.textContent.trim()}`);
  }
  for (const cell of document.querySelectorAll('td .check')) {
    if (!/passed|failed|pending|running|skipped|error/i.test(cell.textContent)) {
      problems.push(`check result shown by colour only: ${cell.textContent.trim()}`);
    }
  }
  const now = document.querySelectorAll('.states .now');
  for (const step of now) {
    if (step.getAttribute('aria-current') !== 'step') problems.push('current state marked by colour only');
  }
  // A region htmx replaces wholesale every second must not be a live region: it would be read out every second.
  for (const el of document.querySelectorAll('[hx-trigger*=every]')) {
    if (el.closest('[aria-live], [role=status], [role=alert]')) {
      problems.push(`polled region is a live region: #${el.id}`);
    }
  }
  return problems;
}"""
)

# Text contrast on the page as rendered: every element with its own text against the colour behind it (AA).
CONTRAST_JS = (
    "() => {"
    + COLOUR_JS
    + """
  const problems = [];
  for (const el of document.querySelectorAll('body *')) {
    const ownText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const rect = el.getBoundingClientRect();
    if (!ownText || rect.width < 2 || rect.height < 2) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || el.closest('[hidden], datalist, option, head')) continue;
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const r = ratio(rgb(style.color).slice(0, 3), backgroundOf(el));
    if (r < (large ? 3 : 4.5)) {
      problems.push(`${r.toFixed(2)}:1 ${style.color} on ${backgroundOf(el)}: ${el.outerHTML.slice(0, 90)}`);
    }
  }
  // Text fields' borders are what shows where to type (non-text contrast, 3:1).
  for (const el of document.querySelectorAll('input:not([type=hidden]):not([type=checkbox]), select, textarea')) {
    const r = ratio(rgb(getComputedStyle(el).borderTopColor).slice(0, 3), backgroundOf(el.parentElement));
    if (r < 3) problems.push(`field border ${r.toFixed(2)}:1: ${el.outerHTML.slice(0, 90)}`);
  }
  return problems;
}"""
)

# One of every coloured pill, message and button the stylesheet defines, for the pages that show none right now.
SPECIMENS_JS = """() => {
  const states = ['pending_approval', 'queued', 'running', 'succeeded', 'failed', 'rejected', 'cancelled'];
  const html = [
    ...states.map((s) => `<span class="state ${s}">${s}</span>`),
    ...['passed', 'failed', 'pending'].map((s) => `<span class="check ${s}">${s}</span>`),
    ...['ok', 'bad', 'warn', ''].map((s) => `<span class="badge ${s}">badge</span>`),
    '<span class="count">3</span> <span class="count bad">2</span>',
    '<span class="decision approve">Approved</span> <span class="decision reject">Rejected</span>',
    '<ul class="messages"><li class="message success">ok</li><li class="message error">bad</li>',
    '<li class="message info">note</li></ul>',
    '<button class="primary">Primary</button> <button class="danger">Danger</button> <button>Plain</button>',
    '<a class="button primary" href="#x">Link button</a> <a class="button small" href="#x">Small</a>',
    '<p class="why">Why not</p> <p class="error">Error</p> <p class="muted small">Muted</p> <p class="help">Help</p>',
    '<ul class="checklist"><li class="met"><span class="mark">✓</span> met</li><li class="unmet">unmet</li></ul>',
    '<ol class="states"><li>Queued</li><li class="now">Running</li></ol>',
    '<table><tbody><tr class="active"><td>active row <span class="muted">muted</span></td></tr></tbody></table>',
  ].join(' ');
  const card = document.createElement('section');
  card.className = 'card';
  card.innerHTML = html;
  const plain = document.createElement('div');
  plain.innerHTML = html;
  document.querySelector('main').append(card, plain);
}"""

# Where the focus is, and whether it can be seen: an outline of 2px or more with 3:1 against what surrounds it.
FOCUS_JS = (
    "() => {"
    + COLOUR_JS
    + """
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const width = parseFloat(style.outlineWidth) || 0;
  const rect = el.getBoundingClientRect();
  const reach = (parseFloat(style.outlineOffset) || 0) + width + 2;
  const x = rect.left - reach >= 0 ? rect.left - reach : rect.right + reach;
  const around = document.elementFromPoint(Math.max(0, x), rect.top + rect.height / 2) || el.parentElement;
  const contrast = ratio(rgb(style.outlineColor).slice(0, 3), backgroundOf(around === el ? el.parentElement : around));
  return {
    tag: el.tagName, id: el.id, text: (el.getAttribute('aria-label') || el.textContent || el.value || '').trim(),
    visible: style.outlineStyle !== 'none' && width >= 2 && contrast >= 3,
    ring: `${style.outlineStyle} ${width}px ${style.outlineColor} (${contrast.toFixed(2)}:1)`,
    inMain: !!el.closest('main'),
  };
}"""
)


def assert_page_structure(page, path: str, signed_in: bool = True) -> str:
    problems = page.evaluate(STRUCTURE_JS, signed_in)
    assert problems == [], f"{path}: {problems}"
    problems = page.evaluate(CONTRAST_JS)
    assert problems == [], f"{path}: {problems}"
    return page.title()


def tab_to(page, matches, limit: int = 60) -> dict:
    """Press Tab until `matches(focus)` holds, checking at every stop that the focus ring can be seen."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focus = page.evaluate(FOCUS_JS)
        assert focus["visible"], f"focus ring not visible on {focus}"
        if matches(focus):
            return focus
    pytest.fail("Tab never reached the element")


def signed_in(browse, live_server, user):
    """A browser already signed in as `user` (the sign-in form itself is checked anonymously)."""
    session = browse()
    client = Client()
    sign_in(client, user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    session.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])
    return session


def request_pending(world, artifact, reason: str = "weekly release") -> Promotion:
    return promotion_request(
        artifact=artifact, to_env="staging", actor=Actor.for_user(world.users["release1"]), reason=reason
    )


def test_every_page_has_labels_one_h1_landmarks_a_skip_link_named_tables_and_errors_tied_to_fields(
    live_world, live_server, browse, rq_queues
):
    world = live_world
    artifact = world.place("qa", "1.0.0", git_sha="a" * 40, branch="main")
    promotion = request_pending(world, artifact)
    now = timezone.now()
    FreezeWindow.objects.create(
        name="sale", environments=["prod"], starts_at=now - timedelta(hours=1), ends_at=now + timedelta(hours=1)
    )
    titles: dict[str, str] = {}

    anonymous = browse()
    page = anonymous.goto("/login/")
    titles["/login/"] = assert_page_structure(page, "/login/", signed_in=False)
    page.get_by_label("Username").fill("release2")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert_page_structure(page, "/login/ (failed)", signed_in=False)
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Username")).to_have_accessible_description(
        "Your username and password didn't match, or the account is locked."
    )

    approver = signed_in(browse, live_server, world.users["release2"])
    for path in (
        "/",
        f"/integrations/{world.integration.name}/",
        f"/artifacts/{artifact.pk}/",
        f"/artifacts/{artifact.pk}/promote/staging/",
        f"/promotions/{promotion.pk}/",
        f"/promotions/{promotion.pk}/decision/",
        "/approvals/",
        "/insights/",
    ):
        page = approver.goto(path)
        if path in (f"/promotions/{promotion.pk}/", "/approvals/"):
            expect(page.locator(".panel")).to_be_visible()  # the decision panel htmx loads
            expect(page.locator("[aria-busy=true]")).to_have_count(0)
        titles[path] = assert_page_structure(page, path)
    # A comment the server refuses (the browser counts a line break as one character, the server as two).
    page = approver.goto(f"/promotions/{promotion.pk}/decision/")
    page.get_by_label("Comment", exact=True).fill("ok\n" * 700 + "ok")
    page.get_by_role("button", name="Approve").click()
    assert_page_structure(page, "decision with a refused comment")
    expect(page.get_by_label("Comment", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Comment", exact=True)).to_have_accessible_description(
        re.compile(r"^Comment: Ensure this value has at most 2000 characters")
    )
    page = approver.goto(f"/artifacts/{artifact.pk}/promote/staging/")
    page.get_by_label("Tag").fill("not a tag!")
    page.get_by_role("button", name="Request promotion").click()
    assert_page_structure(page, "promote with a bad tag")
    expect(page.get_by_label("Tag")).to_have_accessible_description(
        re.compile(r"^Leave empty to keep the source tag\. 'not a tag!' is not a valid tag")
    )

    admin = signed_in(browse, live_server, world.users["admin"])
    for path in ("/audit/", "/tokens/", "/freeze-windows/"):
        titles[path] = assert_page_structure(admin.goto(path), path)
    expect(admin.page.get_by_role("row", name="sale")).to_contain_text("active now")
    page = admin.page
    page.get_by_label("Name").fill("launch")
    page.get_by_label("Environments").fill("nowhere")
    page.get_by_label("Starts (UTC)").fill("2030-01-02T10:00")
    page.get_by_label("Ends (UTC)").fill("2030-01-01T10:00")
    page.get_by_role("button", name="Create freeze window").click()
    assert_page_structure(page, "/freeze-windows/ (errors)")
    expect(page.get_by_label("Environments")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Ends (UTC)")).to_have_accessible_description(
        "One-off windows only. The window must end after it starts."
    )
    page = admin.goto("/tokens/")
    page.get_by_label("Name").fill("ci")
    page.get_by_label("Kind").select_option("ci")
    page.get_by_role("button", name="Create token").click()
    assert_page_structure(page, "/tokens/ (errors)")
    expect(page.get_by_label("Integrations")).to_have_accessible_description(
        "CI tokens only: the integrations this token may act on. A CI token needs at least one integration."
    )
    expect(page.get_by_role("group", name="Scopes")).to_have_accessible_description(
        "What the token may do; none ticked means all its kind allows."
    )
    page = admin.goto("/audit/?actor=%01&since=2024-02-01&until=2024-01-01")
    assert_page_structure(page, "/audit/ (errors)")
    expect(page.get_by_label("Actor", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("To", exact=True)).to_have_accessible_description("'To' must not be before 'From'.")

    # Verifying the audit chain swaps the badge; the keyboard focus stays on the button and the news is announced.
    page = admin.goto("/audit/")
    page.get_by_role("button", name="Verify the chain now").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#chain-badge")).to_contain_text("Verifying the whole chain")
    expect(page.get_by_role("status")).to_have_text("Verifying the whole chain…")
    assert page.evaluate("document.activeElement.id") == "verify-chain"

    assert len(set(titles.values())) == len(titles), titles


def test_every_badge_message_and_button_style_meets_aa_text_contrast(live_server, browse):
    # The pages above are checked as they render; this covers the styles they did not happen to show.
    page = browse().goto("/login/")
    page.evaluate(SPECIMENS_JS)
    assert page.evaluate(CONTRAST_JS) == []


def test_a_promotion_can_be_requested_and_approved_with_the_keyboard_alone(live_world, live_server, browse, rq_queues):
    world = live_world
    world.place("qa", "2.0.0")
    requester = signed_in(browse, live_server, world.users["release1"])
    page = requester.goto(f"/integrations/{world.integration.name}/")
    page.locator("body").focus()
    focus = tab_to(page, lambda f: True)
    assert focus["text"] == "Skip to content"
    page.keyboard.press("Enter")
    assert tab_to(page, lambda f: True)["inMain"], "the skip link did not move the keyboard into <main>"
    tab_to(page, lambda f: f["text"] == "Promote 2.0.0 to staging")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Promote to staging")).to_be_visible()
    tab_to(page, lambda f: f["id"] == "id_reason")
    page.keyboard.type("through the keyboard")
    tab_to(page, lambda f: f["text"] == "Request promotion")
    page.keyboard.press("Enter")
    expect(page.locator("[data-state]")).to_have_text("Pending approval")
    promotion = Promotion.objects.get()
    assert promotion.reason == "through the keyboard"

    approver = signed_in(browse, live_server, world.users["release2"])
    page = approver.goto("/approvals/")
    expect(page.locator(".panel")).to_be_visible()
    tab_to(page, lambda f: f["id"] == f"comment-{promotion.pk}")
    page.keyboard.type("looks right")
    tab_to(page, lambda f: f["text"] == "Approve")
    page.keyboard.press("Space")
    expect(page.get_by_role("status").filter(has_text="Approved")).to_have_text(f"Approved #{promotion.pk}.")
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.QUEUED
    assert promotion.approvals.get().comment == "looks right"


def test_live_progress_announces_each_state_once_and_keeps_a_cancel_reason_being_typed(
    live_world, live_server, browse, rq_queues
):
    world = live_world
    promotion = request_pending(world, world.place("qa", "3.0.0"))
    promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["release2"]))
    session = signed_in(browse, live_server, world.users["release1"])
    page = session.goto(f"/promotions/{promotion.pk}/")
    assert_page_structure(page, "promotion, queued")
    expect(page.locator("[data-state]")).to_have_text("Queued")
    reason = page.get_by_label("Reason for cancelling")
    reason.focus()
    page.keyboard.type("wrong build")
    # Two polls of the live part go by while the reason is typed: it stays, and so does the focus.
    for _ in range(2):
        with page.expect_response(lambda r: urlparse(r.url).path == f"/promotions/{promotion.pk}/"):
            pass
    expect(reason).to_have_value("wrong build")
    expect(reason).to_be_focused()
    expect(page.locator("#live-announce")).to_have_text("")  # nothing changed, nothing to say

    Promotion.objects.filter(pk=promotion.pk).update(state=Promotion.State.RUNNING, blobs_total=2, bytes_total=10)
    expect(page.locator("#live-announce")).to_have_text("State: Running")
    expect(page.get_by_label("Reason for cancelling")).to_have_count(1)  # a running copy can still be stopped
    expect(page.get_by_role("progressbar", name="Bytes")).to_be_visible()
    assert_page_structure(page, "promotion, running")
    Promotion.objects.filter(pk=promotion.pk).update(state=Promotion.State.SUCCEEDED, bytes_done=10, blobs_done=2)
    expect(page.locator("#live-announce")).to_have_text("State: Succeeded")
    expect(page.locator(".states [aria-current=step]")).to_have_text("Succeeded")
    expect(page.get_by_label("Reason for cancelling")).to_have_count(0)  # nothing to cancel once it has ended
