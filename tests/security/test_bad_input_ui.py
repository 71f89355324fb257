"""Bad input to every UI form: unicode, control characters, very long strings and markup.

The answer is never a 500: it is a 4xx, or the form again (or the page it was posted from) with a message saying what
is wrong, and nothing is saved, not even half. Legitimate text (unicode, markup in free text) is saved and shows
escaped. And every state-changing URL refuses a POST without its CSRF token and does nothing on GET.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from secrets import token_urlsafe

import pytest
from django.urls import reverse

from ci_integrations.models import ApiToken, Approval, FreezeWindow, Promotion
from tests.security.conftest import PASSWORD, World, client_for, in_savepoint
from tests.security.test_ui_authorization_matrix import DONE, MATRIX

pytestmark = pytest.mark.django_db

UNICODE = "Ünïcødé ✓ 発布 🚀"
MARKUP = '<script>alert("x")</script><b onmouseover=alert(1)>'
NUL = "bad\x00null"
ESC = "bad\x1b[31mescape"
LONG = "x" * 5000
HOSTILE = {"nul": NUL, "esc": ESC, "long": LONG}
# What a message about each kind of bad free text must mention.
EXPLAINS = {"nul": "Null characters", "esc": "control character U+001B", "long": "at most"}
ALERT = re.compile(r'role="alert"[^>]*>(.*?)</(?:p|li|div)>', re.S)


def alerts(response) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", text)).strip() for text in ALERT.findall(response.content.decode())]


@dataclass
class Form:
    """One UI form: who posts it, where, a valid submission, and how to count what it saves."""

    role: str
    url: Callable[[World], str]
    valid: Callable[[World], dict]
    saved: Callable[[World], object]
    free_text: tuple[str, ...]  # fields where unicode and markup are legitimate
    strict: tuple[str, ...] = ()  # fields with a narrow syntax (slugs, tags, dates, numbers)
    shown_on: Callable[[World], str] | None = None  # a page that shows the free text back


def promotions_of(world: World) -> int:
    return Promotion.objects.filter(artifact=world.candidate).count()


FORMS = {
    "promote": Form(
        "platform_admin",
        lambda w: reverse("promote", args=[w.candidate.pk, "staging"]),
        lambda w: {"tag": "", "reason": "ship it", "freeze_override_reason": ""},
        promotions_of,
        free_text=("reason",),
        strict=("tag",),
        shown_on=lambda w: reverse("promotion", args=[Promotion.objects.get(artifact=w.candidate).pk]),
    ),
    "approve": Form(
        "release_manager",
        lambda w: reverse("promotion_approve", args=[w.pending.pk]),
        lambda w: {"comment": "looks good"},
        lambda w: Approval.objects.filter(promotion=w.pending).count(),
        free_text=("comment",),
        shown_on=lambda w: reverse("promotion", args=[w.pending.pk]),
    ),
    "reject": Form(
        "release_manager",
        lambda w: reverse("promotion_reject", args=[w.pending.pk]),
        lambda w: {"comment": "not today"},
        lambda w: Promotion.objects.get(pk=w.pending.pk).state,
        free_text=("comment",),
        shown_on=lambda w: reverse("promotion", args=[w.pending.pk]),
    ),
    "cancel": Form(
        "release_manager",
        lambda w: reverse("promotion_cancel", args=[w.pending.pk]),
        lambda w: {"reason": "superseded"},
        lambda w: Promotion.objects.get(pk=w.pending.pk).state,
        free_text=("reason",),
    ),
    "rollback": Form(
        "release_manager",
        lambda w: reverse("rollback", args=[w.integration.name, "staging", w.rollback_to.pk]),
        lambda w: {"reason": "1.1.0 is broken"},
        lambda w: Promotion.objects.filter(kind=Promotion.Kind.ROLLBACK).count(),
        free_text=("reason",),
        shown_on=lambda w: reverse("promotion", args=[Promotion.objects.get(kind=Promotion.Kind.ROLLBACK).pk]),
    ),
    "token": Form(
        "release_manager",
        lambda w: reverse("tokens"),
        lambda w: {"name": "laptop", "kind": "personal", "expires_in_days": "30", "once": token_urlsafe()},
        lambda w: ApiToken.objects.count(),
        free_text=("name",),
        strict=("kind", "expires_in_days", "scopes", "integrations"),
        shown_on=lambda w: reverse("tokens"),
    ),
    "freeze window": Form(
        "platform_admin",
        lambda w: reverse("freeze_windows"),
        lambda w: {
            "name": "maintenance",
            "environments": "staging",
            "starts_at": "2031-01-01T00:00",
            "ends_at": "2031-01-02T00:00",
            "reason": "datacentre move",
        },
        lambda w: FreezeWindow.objects.count(),
        free_text=("name", "reason"),
        strict=("environments", "starts_at", "ends_at"),
        shown_on=lambda w: reverse("freeze_windows"),
    ),
}
STRICT_EXTRA = {"tag": ["1.0 beta", "../../etc", "UPPER:colon"], "expires_in_days": ["-1", "1e9", "99999999999"]}


def post_and_follow(client, url: str, data: dict):
    response = client.post(url, data)
    if response.status_code == 302:
        return response, client.get(response["Location"])
    return response, response


def bad_cases(form: Form) -> list[tuple[str, str, str]]:
    cases = []
    for name in form.free_text + form.strict:
        cases += [(name, kind, value) for kind, value in HOSTILE.items()]
    for name in form.strict:
        cases += [(name, "unicode", UNICODE), (name, "markup", MARKUP)]
        cases += [(name, "malformed", value) for value in STRICT_EXTRA.get(name, [])]
    return cases


@pytest.mark.parametrize("form_name", sorted(FORMS))
def test_bad_input_is_refused_with_a_message_and_saves_nothing(form_name, world):
    form = FORMS[form_name]
    problems = []
    for field, kind, value in bad_cases(form):

        def attempt(field=field, value=value):
            client = client_for(world.users[form.role])
            before = form.saved(world)
            response, page = post_and_follow(client, form.url(world), {**form.valid(world), field: value})
            return response, page, before != form.saved(world)

        response, page, changed = in_savepoint(attempt)
        where, said = f"{field}={kind}", alerts(page)
        if response.status_code >= 500:
            problems.append(f"{where}: {response.status_code}")
        elif changed:
            problems.append(f"{where}: was saved")
        elif 400 <= response.status_code < 500:
            continue
        elif not any(said):
            problems.append(f"{where}: {response.status_code} without a message saying what is wrong")
        elif field in form.free_text and not any(EXPLAINS[kind] in message for message in said):
            problems.append(f"{where}: the message does not say what is wrong: {[m[:100] for m in said]}")
    assert not problems, f"{form_name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("form_name", sorted(name for name, form in FORMS.items() if form.shown_on))
def test_unicode_and_markup_in_free_text_are_kept_and_shown_escaped(form_name, world):
    form = FORMS[form_name]
    for field in form.free_text:

        def attempt(field=field):
            client = client_for(world.users[form.role])
            before = form.saved(world)
            data = {**form.valid(world), field: f"{UNICODE} {MARKUP}"}
            response, _ = post_and_follow(client, form.url(world), data)
            assert response.status_code in (200, 302) and form.saved(world) != before, (form_name, field)
            return client.get(form.shown_on(world)).content.decode()

        page = in_savepoint(attempt)
        assert UNICODE in page, (form_name, field)
        assert "<script>alert" not in page and "<b onmouseover" not in page, (form_name, field)
        assert html.escape(MARKUP, quote=False).replace("&quot;", '"') in page.replace("&quot;", '"').replace(
            "&#x27;", "'"
        ), (form_name, field)


LABELS = {"since": "from", "until": "to"}


@pytest.mark.parametrize("field", ["integration", "environment", "actor", "action", "since", "until", "before"])
def test_audit_filters_never_fail_and_say_what_is_wrong(field, world):
    client = client_for(world.users["auditor"])
    values = [UNICODE, MARKUP, NUL, ESC, LONG, "2026-13-45", "-1", "9" * 30]
    for value in values:
        page = client.get(reverse("audit"), {field: value})
        assert page.status_code == 200, (field, value)
        body = page.content.decode()
        assert "<script>alert" not in body, (field, value)
        for export in ("audit_export_csv", "audit_export_jsonl"):
            response = client.get(reverse(export), {field: value})
            assert response.status_code in (200, 400), (field, value, export)
            if response.status_code == 400:
                text = response.content.decode().lower()
                assert f"{LABELS.get(field, field)}: " in text, (field, value[:50], text[:200])
                assert any(alerts(page)), f"the page accepts what the export refuses: {field}={value!r}"


@pytest.mark.parametrize("value", [UNICODE, MARKUP, NUL, ESC, LONG])
def test_sign_in_with_hostile_credentials_is_refused_with_a_message(value, world):
    """Both sign-in pages, the portal's and the admin's: django-axes records every failure, an overlong name too."""
    client = client_for(None)
    for url, message in ((reverse("login"), 'role="alert"'), (reverse("admin:login"), 'class="errornote"')):
        for data in ({"username": value, "password": PASSWORD}, {"username": "viewer", "password": value}):
            response = client.post(url, data)
            assert response.status_code == 200, (url, data["username"][:20])
            body = response.content.decode()
            assert message in body, (url, data["username"][:20])
            assert "<script>alert" not in body
            assert "_auth_user_id" not in client.session


def test_an_oversize_body_is_a_400_not_a_500(world):
    client = client_for(world.users["platform_admin"])
    response = client.post(
        reverse("promote", args=[world.candidate.pk, "staging"]), {"reason": "x" * (3 * 1024 * 1024)}
    )
    assert response.status_code == 400
    assert promotions_of(world) == 0


STATE_CHANGING = {route: row for route, row in MATRIX.items() if row.post and DONE in row.post.values()}


def test_the_csrf_and_get_checks_cover_every_state_changing_url():
    assert len(STATE_CHANGING) >= 14
    assert {"promotions/<int:pk>/approve/", "tokens/", "freeze-windows/", "logout/"} <= set(STATE_CHANGING)


@pytest.mark.parametrize("route", sorted(STATE_CHANGING))
def test_a_post_without_its_csrf_token_is_refused(route, world):
    row = STATE_CHANGING[route]
    role = next(role for role, outcome in row.post.items() if outcome == DONE)

    def attempt():
        if row.reset:
            row.reset()
        client = client_for(world.users.get(role), enforce_csrf_checks=True)
        before = row.effect(world, client)
        response = client.post(row.url(world), row.data(world))
        return response, before != row.effect(world, client)

    response, changed = in_savepoint(attempt)
    assert response.status_code == 403 and "CSRF" in response.content.decode(), (route, response.status_code)
    assert not changed, route


@pytest.mark.parametrize("route", sorted(STATE_CHANGING))
def test_no_state_changing_url_acts_on_get(route, world):
    row = STATE_CHANGING[route]
    role = next(role for role, outcome in row.post.items() if outcome == DONE)

    def attempt():
        if row.reset:
            row.reset()
        client = client_for(world.users.get(role))
        before = row.effect(world, client)
        response = client.get(row.url(world), row.data(world))
        return response, before != row.effect(world, client)

    response, changed = in_savepoint(attempt)
    assert response.status_code in (200, 405), (route, response.status_code)
    assert not changed, f"GET {route} changed state"
