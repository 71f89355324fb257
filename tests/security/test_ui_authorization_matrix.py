"""Every UI and admin URL × {anonymous, viewer, auditor, release manager, platform admin, member of the integration's
team, release manager of another team}: the answer each must get.

The world's integration belongs to a team whose members are the release managers and a member with no role; the
viewer is in no team, and another team's release manager holds the role but not this team: both get 404 for the
team's pages and objects (not 403, which would tell them it exists).

The URL list comes from the resolver, so a new page or action without a row here fails the test. The API's URLs
have their own matrix in tests/api; the admin's generated per-model URLs are represented by the admin index and the
change pages of a promotion, an audit entry and a registry (plus the RQ dashboard, which can empty queues).

Outcomes are about effects, not only status codes: each action row names what it changes, a "done" request must
change it, and every other request (every GET included) must leave it as it was. Each request runs in a savepoint
that is rolled back, so every role meets the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from secrets import token_urlsafe

import django_rq
import pytest
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from ci_integrations.models import (
    ApiToken,
    Approval,
    AuditEntry,
    EmergencyStop,
    FreezeWindow,
    NotificationPreference,
    Promotion,
    Registry,
    Team,
    WebhookDelivery,
)
from ci_integrations.services.audit_verification import RESULT_KEY, RUNNING_KEY
from tests.security.conftest import ROLES as ROLES_WITHOUT_TEAMS
from tests.security.conftest import World, client_for, in_savepoint, make_user

ROLES = [*ROLES_WITHOUT_TEAMS, "team_member", "other_team_rm"]

pytestmark = pytest.mark.django_db

LOGIN = "login"  # 302 to the portal's sign-in page, with ?next=
ADMIN_LOGIN = "admin login"  # 302 to the admin's sign-in page (the admin is for staff only)
DENIED = "denied"  # 403 or 404
HIDDEN = "hidden"  # 404: the team's object does not exist for someone outside the team
OK = "ok"  # 200 (or htmx's 286 "stop polling")
REDIRECT = "redirect"  # 302, nothing changed
DONE = "done"  # 200 or 302 and the row's effect happened
REFUSED = "refused"  # answered (200, 302, 400 or 409) but nothing changed: the form or the service said no
NO_SUCH_METHOD = "405"

NON_STAFF = ["anonymous", "viewer", "auditor", "release_manager", "team_member", "other_team_rm"]


def everyone(outcome: str) -> dict[str, str]:
    return dict.fromkeys(ROLES, outcome)


def signed_in(outcome: str) -> dict[str, str]:
    return {**everyone(outcome), "anonymous": LOGIN}


def only(*roles: str, then: str = OK, others: str = DENIED) -> dict[str, str]:
    return {"anonymous": LOGIN, **{role: then if role in roles else others for role in ROLES[1:]}}


def staff_only(outcome: str) -> dict[str, str]:
    return {**dict.fromkeys(NON_STAFF, ADMIN_LOGIN), "platform_admin": outcome}


MANAGERS = ("release_manager", "platform_admin")
AUDITORS = ("auditor", "platform_admin")
# Who sees the team's integration: its members (release managers included), auditors and platform admins.
SEES_THE_TEAM = ("auditor", "release_manager", "platform_admin", "team_member")
OUTSIDERS = ("viewer", "other_team_rm")
# Who may request, cancel and retry the team's promotions: its members and platform admins.
REQUESTERS = (*MANAGERS, "team_member")


def team_page() -> dict[str, str]:
    return {**only(*SEES_THE_TEAM), **dict.fromkeys(OUTSIDERS, HIDDEN)}


@pytest.fixture
def world(world) -> World:
    """The security world, with its integration owned by a team: the release managers and a member with no role are
    in it; another team has a release manager of its own."""
    team = Team.objects.create(name="shop-team")
    team.members.add(world.users["release_manager"], world.requester)
    world.integration.team = team
    world.integration.save(update_fields=["team"])
    world.users["team_member"] = make_user("member1")
    team.members.add(world.users["team_member"])
    world.users["other_team_rm"] = make_user("release9", "release-managers")
    Team.objects.create(name="other-team").members.add(world.users["other_team_rm"])
    return world


@dataclass
class Row:
    url: Callable[[World], str]
    get: dict[str, str]
    post: dict[str, str] | None = None
    data: Callable[[World], dict] = lambda world: {}
    # A snapshot of what the action changes; "done" means it differs after the request.
    effect: Callable[[World, object], object] | None = None
    reset: Callable[[], None] | None = None


def promotion_state(pk_of: Callable[[World], int]):
    return lambda world, client: Promotion.objects.get(pk=pk_of(world)).state


def session_user(world, client):
    return client.session.get("_auth_user_id")


def forget_audit_verification():
    connection = django_rq.get_connection("default")
    connection.delete(RUNNING_KEY, RESULT_KEY)
    django_rq.get_queue("default").empty()


def wrong_password(world):
    return {"username": world.requester.username, "password": "not the password"}


MATRIX: dict[str, Row] = {
    # --- public ---------------------------------------------------------------------------------------------------
    "healthz": Row(lambda w: reverse("healthz"), get=everyone(OK), post=everyone(NO_SUCH_METHOD)),
    # Off unless P2P_METRICS_TOKEN or P2P_METRICS_ALLOWED_IPS is set (tests/insights/test_metrics.py covers those).
    "metrics": Row(lambda w: reverse("metrics"), get=everyone(DENIED), post=everyone(NO_SUCH_METHOD)),
    "login/": Row(
        lambda w: reverse("login"),
        get=everyone(OK),
        post=everyone(REFUSED),
        data=wrong_password,
        effect=lambda w, c: c.session.get("_auth_user_id") == str(w.requester.pk),
    ),
    # Single sign-on is not configured here: both answer 404 (tests/ui/test_sso_browser.py drives them for real).
    "login/sso/": Row(lambda w: reverse("sso_start"), get=everyone(DENIED), post=everyone(NO_SUCH_METHOD)),
    "login/sso/callback/": Row(lambda w: reverse("sso_callback"), get=everyone(DENIED), post=everyone(NO_SUCH_METHOD)),
    "logout/": Row(
        lambda w: reverse("logout"),
        get=everyone(NO_SUCH_METHOD),
        post={**everyone(DONE), "anonymous": REDIRECT},
        effect=session_user,
    ),
    # --- pages every signed-in person reads -----------------------------------------------------------------------
    "": Row(lambda w: reverse("overview"), get=signed_in(OK)),
    "integrations/<slug:name>/": Row(lambda w: reverse("integration", args=[w.integration.name]), get=team_page()),
    "artifacts/<int:pk>/": Row(lambda w: reverse("artifact", args=[w.candidate.pk]), get=team_page()),
    "approvals/": Row(lambda w: reverse("approvals"), get=signed_in(OK)),
    "insights/": Row(lambda w: reverse("insights"), get=signed_in(OK)),
    "promotions/<int:pk>/": Row(lambda w: reverse("promotion", args=[w.pending.pk]), get=team_page()),
    "promotions/<int:pk>/decision/": Row(lambda w: reverse("approval_panel", args=[w.pending.pk]), get=team_page()),
    "promotions/<int:pk>/diff/": Row(lambda w: reverse("promotion_diff", args=[w.pending.pk]), get=team_page()),
    # --- promotion actions ----------------------------------------------------------------------------------------
    "artifacts/<int:pk>/promote/<slug:env>/": Row(
        lambda w: reverse("promote", args=[w.candidate.pk, "staging"]),
        get={**only(*REQUESTERS), "other_team_rm": HIDDEN},
        post={**only(*REQUESTERS, then=DONE), "other_team_rm": HIDDEN},
        data=lambda w: {"tag": "", "reason": "ship it"},
        effect=lambda w, c: Promotion.objects.filter(artifact=w.candidate).count(),
    ),
    "artifacts/<int:pk>/promote/<slug:env>/diff/": Row(
        lambda w: reverse("preview_diff", args=[w.candidate.pk, "staging"]),
        get={**only(*REQUESTERS), "other_team_rm": HIDDEN},
    ),
    "integrations/<slug:name>/<slug:env>/rollback/<int:arrival_pk>/": Row(
        lambda w: reverse("rollback", args=[w.integration.name, "staging", w.rollback_to.pk]),
        get={**only(*REQUESTERS), "other_team_rm": HIDDEN},
        post={**only(*REQUESTERS, then=DONE), "other_team_rm": HIDDEN},
        data=lambda w: {"reason": "1.1.0 is broken"},
        effect=lambda w, c: Promotion.objects.filter(kind=Promotion.Kind.ROLLBACK).count(),
    ),
    # Approving needs the step's approver group (release-managers); a platform admin is refused by the service.
    "promotions/<int:pk>/approve/": Row(
        lambda w: reverse("promotion_approve", args=[w.pending.pk]),
        get=everyone(NO_SUCH_METHOD),
        post={**only("release_manager", then=DONE), "platform_admin": REFUSED, "other_team_rm": HIDDEN},
        data=lambda w: {"comment": "looks good"},
        effect=lambda w, c: Approval.objects.filter(promotion=w.pending).count(),
    ),
    "promotions/<int:pk>/reject/": Row(
        lambda w: reverse("promotion_reject", args=[w.pending.pk]),
        get=everyone(NO_SUCH_METHOD),
        post={**only("release_manager", then=DONE), "platform_admin": REFUSED, "other_team_rm": HIDDEN},
        data=lambda w: {"comment": "not today"},
        effect=promotion_state(lambda w: w.pending.pk),
    ),
    "promotions/<int:pk>/cancel/": Row(
        lambda w: reverse("promotion_cancel", args=[w.pending.pk]),
        get=everyone(NO_SUCH_METHOD),
        post={**only(*REQUESTERS, then=DONE), "other_team_rm": HIDDEN},
        data=lambda w: {"reason": "superseded"},
        effect=promotion_state(lambda w: w.pending.pk),
    ),
    "promotions/<int:pk>/retry/": Row(
        lambda w: reverse("promotion_retry", args=[w.failed.pk]),
        get=everyone(NO_SUCH_METHOD),
        post={**only(*REQUESTERS, then=DONE), "other_team_rm": HIDDEN},
        effect=promotion_state(lambda w: w.failed.pk),
    ),
    # --- audit log ------------------------------------------------------------------------------------------------
    "audit/": Row(lambda w: reverse("audit"), get=only(*AUDITORS)),
    "audit/export.csv": Row(lambda w: reverse("audit_export_csv"), get=only(*AUDITORS)),
    "audit/export.jsonl": Row(lambda w: reverse("audit_export_jsonl"), get=only(*AUDITORS)),
    "audit/badge/": Row(lambda w: reverse("audit_badge"), get=only(*AUDITORS)),
    "audit/verify/": Row(
        lambda w: reverse("audit_verify"),
        get=everyone(NO_SUCH_METHOD),
        post=only(*AUDITORS, then=DONE),
        effect=lambda w, c: bool(django_rq.get_connection("default").exists(RUNNING_KEY)),
        reset=forget_audit_verification,
    ),
    # --- tokens: personal ones for everyone; CI tokens for platform admins and the team's release managers ----------
    "tokens/": Row(
        lambda w: reverse("tokens"),
        get=signed_in(OK),
        post=only(*MANAGERS, then=DONE, others=REFUSED),
        data=lambda w: {
            "name": "shop-ci-2",
            "kind": "ci",
            "integrations": [w.integration.name],
            "once": token_urlsafe(),
        },
        effect=lambda w, c: ApiToken.objects.filter(name="shop-ci-2").count(),
    ),
    # The release manager owns the token (a platform admin made it for them); platform admins manage every CI token;
    # others do not even see it.
    "tokens/<int:pk>/revoke/": Row(
        lambda w: reverse("token_revoke", args=[w.token.pk]),
        get=everyone(NO_SUCH_METHOD),
        post=only(*MANAGERS, then=DONE),
        effect=lambda w, c: ApiToken.objects.get(pk=w.token.pk).revoked_at is not None,
    ),
    # --- freeze windows: platform admins ----------------------------------------------------------------------------
    "freeze-windows/": Row(
        lambda w: reverse("freeze_windows"),
        get=only("platform_admin"),
        post=only("platform_admin", then=DONE),
        data=lambda w: {
            "name": "maintenance",
            "environments": "staging, prod",
            "starts_at": "2031-01-01T00:00",
            "ends_at": "2031-01-02T00:00",
            "reason": "datacentre move",
        },
        effect=lambda w, c: FreezeWindow.objects.filter(name="maintenance").count(),
    ),
    "freeze-windows/<int:pk>/end/": Row(
        lambda w: reverse("freeze_window_end", args=[w.freeze.pk]),
        get=everyone(NO_SUCH_METHOD),
        post=only("platform_admin", then=DONE),
        effect=lambda w, c: FreezeWindow.objects.get(pk=w.freeze.pk).ends_at <= timezone.now(),
    ),
    # --- the emergency stop: release managers and platform admins -------------------------------------------------
    "stop/": Row(
        lambda w: reverse("emergency_stop"),
        # Every release manager, whatever their team, and platform admins: the stop is for the whole portal.
        get=only(*MANAGERS, "other_team_rm"),
        post=only(*MANAGERS, "other_team_rm", then=DONE),
        data=lambda w: {"action": "pull", "reason": "INC-42 bad images"},
        effect=lambda w, c: EmergencyStop.objects.filter(active=True).count(),
    ),
    # --- notifications: everyone chooses their own emails; platform admins see the webhooks' deliveries ---------
    "notifications/": Row(
        lambda w: reverse("notification_preferences"),
        get=signed_in(OK),
        post=signed_in(DONE),
        data=lambda w: {"wanted": ["succeeded", "failed"]},
        effect=lambda w, c: list(
            NotificationPreference.objects.filter(user_id=c.session.get("_auth_user_id")).values_list("muted")
        ),
    ),
    "webhooks/": Row(lambda w: reverse("webhooks"), get=only("platform_admin")),
    "webhooks/<int:pk>/": Row(
        lambda w: reverse("webhook_deliveries", args=[w.given_up.webhook_id]), get=only("platform_admin")
    ),
    "webhooks/deliveries/<int:pk>/retry/": Row(
        lambda w: reverse("webhook_delivery_retry", args=[w.given_up.pk]),
        get=everyone(NO_SUCH_METHOD),
        post=only("platform_admin", then=DONE),
        effect=lambda w, c: WebhookDelivery.objects.get(pk=w.given_up.pk).given_up_at is None,
    ),
    # --- the admin site's own pages ---------------------------------------------------------------------------------
    "admin/": Row(lambda w: reverse("admin:index"), get=staff_only(OK)),
    "admin/login/": Row(
        lambda w: reverse("admin:login"),
        get={**everyone(OK), "platform_admin": REDIRECT},
        post=everyone(REFUSED),
        data=wrong_password,
        effect=lambda w, c: c.session.get("_auth_user_id") == str(w.requester.pk),
    ),
    # Someone who is not staff is sent to the admin index (and from there to its sign-in), still signed in.
    "admin/logout/": Row(
        lambda w: reverse("admin:logout"),
        get={**dict.fromkeys(NON_STAFF, REDIRECT), "platform_admin": NO_SUCH_METHOD},
        post={**dict.fromkeys(NON_STAFF, REDIRECT), "platform_admin": DONE},
        effect=session_user,
    ),
    "admin/password_change/": Row(
        lambda w: reverse("admin:password_change"),
        get=staff_only(OK),
        post=staff_only(REFUSED),
        data=lambda w: {"old_password": "wrong", "new_password1": "n3w-Passw0rd!x", "new_password2": "n3w-Passw0rd!x"},
        effect=lambda w, c: w.users["platform_admin"].__class__.objects.get(pk=w.users["platform_admin"].pk).password,
    ),
    "admin/password_change/done/": Row(lambda w: reverse("admin:password_change_done"), get=staff_only(OK)),
    # No ModelAdmin uses autocomplete fields, so even staff get 403 for any query.
    "admin/autocomplete/": Row(lambda w: reverse("admin:autocomplete"), get=staff_only(DENIED)),
    "admin/jsi18n/": Row(lambda w: reverse("admin:jsi18n"), get=staff_only(OK)),
    # Promotions have no get_absolute_url: "view on site" is a 404 even for staff.
    "admin/r/<path:content_type_id>/<path:object_id>/": Row(
        lambda w: reverse("admin:view_on_site", args=[ContentType.objects.get_for_model(Promotion).pk, w.pending.pk]),
        get=staff_only(DENIED),
    ),
    "admin/^(?P<app_label>django_rq|axes|ci_integrations|auth)/$": Row(
        lambda w: reverse("admin:app_list", args=["ci_integrations"]), get=staff_only(OK)
    ),
    # The catch-all does not tell outsiders which admin URLs exist.
    "admin/(?P<url>.*)$": Row(lambda w: "/admin/no-such-page/", get=staff_only(DENIED)),
    # --- representatives of the admin's generated model URLs ------------------------------------------------------
    "admin/ci_integrations/promotion/<path:object_id>/change/": Row(
        lambda w: reverse("admin:ci_integrations_promotion_change", args=[w.pending.pk]),
        get=staff_only(OK),
        post=staff_only(DENIED),
        data=lambda w: {"state": "queued"},
        effect=promotion_state(lambda w: w.pending.pk),
    ),
    "admin/ci_integrations/auditentry/<path:object_id>/change/": Row(
        lambda w: reverse("admin:ci_integrations_auditentry_change", args=[w.audit_entry.pk]),
        get=staff_only(OK),
        post=staff_only(DENIED),
        data=lambda w: {"action": "test.rewritten", "actor": "nobody"},
        effect=lambda w, c: AuditEntry.objects.get(pk=w.audit_entry.pk).action,
    ),
    "admin/ci_integrations/registry/<path:object_id>/change/": Row(
        lambda w: reverse("admin:ci_integrations_registry_change", args=[w.registry.pk]),
        get=staff_only(OK),
        post=staff_only(DONE),
        data=lambda w: {
            "name": w.registry.name,
            "provider": "generic",
            "url": "https://registry.example.com",
            "options": "{}",
        },
        effect=lambda w, c: Registry.objects.get(pk=w.registry.pk).url,
    ),
    "admin/django_rq/dashboard/queues/<int:queue_index>/": Row(
        lambda w: reverse("admin:django_rq_jobs", args=[0]), get=staff_only(OK)
    ),
}


def url_patterns() -> set[str]:
    """Every URL pattern of the project as its full route, except the API's."""
    routes: set[str] = set()

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and not route.startswith("api/"):
                routes.add(route)

    walk(get_resolver().url_patterns, "")
    return routes


def generated_by_model_admins(route: str) -> bool:
    prefixes = tuple(f"admin/{model._meta.app_label}/{model._meta.model_name}/" for model in admin.site._registry)
    return route.startswith(prefixes)


def test_every_url_pattern_is_in_the_matrix():
    every = url_patterns()
    expected = {route for route in every if not generated_by_model_admins(route)}
    missing = sorted(expected - set(MATRIX))
    assert not missing, f"URL patterns with no row in the authorization matrix: {missing}"
    stale = sorted(set(MATRIX) - every)
    assert not stale, f"matrix rows for URL patterns that no longer exist: {stale}"
    # The whole UI is covered, and the admin through its pages plus representative model pages.
    assert {"", "promotions/<int:pk>/approve/", "admin/"} <= set(MATRIX)


def verdict(outcome: str, response, changed: bool) -> str | None:
    """None when the response is the expected outcome, else what went wrong."""
    status, location = response.status_code, response.get("Location", "")
    got = f"{status} {location}".strip() + (" (state changed)" if changed else "")
    fine = {
        LOGIN: status == 302 and location.startswith(reverse("login") + "?next="),
        ADMIN_LOGIN: status == 302 and location.startswith(reverse("admin:login")),
        DENIED: status in (403, 404),
        HIDDEN: status == 404,
        OK: status in (200, 286),
        REDIRECT: status == 302,
        DONE: status in (200, 302) and changed,
        REFUSED: status in (200, 302, 400, 409),
        NO_SUCH_METHOD: status == 405,
    }[outcome]
    if outcome != DONE and changed:
        fine = False
    return None if fine else f"expected {outcome}, got {got}"


def ask(world: World, row: Row, role: str, method: str) -> object:
    if row.reset:
        row.reset()
    client = client_for(world.users.get(role))
    before = row.effect(world, client) if row.effect else None
    url = row.url(world)
    if method == "GET":
        response = client.get(url, row.data(world))
    else:
        response = client.post(url, row.data(world))
    after = row.effect(world, client) if row.effect else None
    if row.reset:
        row.reset()
    return response, before != after


@pytest.mark.parametrize("route", sorted(MATRIX))
def test_each_role_gets_what_the_matrix_says(route, world):
    row = MATRIX[route]
    problems = []
    for method, expected in (("GET", row.get), ("POST", row.post)):
        if expected is None:
            continue
        assert set(expected) == set(ROLES), f"{route} {method}: the row must name every role"
        for role in ROLES:
            response, changed = in_savepoint(lambda role=role, method=method: ask(world, row, role, method))
            problem = verdict(expected[role], response, changed)
            if problem:
                problems.append(f"{method} as {role}: {problem}")
    assert not problems, f"/{route}:\n" + "\n".join(problems)
