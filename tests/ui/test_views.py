"""The dashboard through Django's test client: who may see and do what, CSRF, htmx polling, audit paging and
exports, tokens, freeze windows, and a constant number of queries per page."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ci_integrations.models import ApiToken, Approval, AuditEntry, FreezeWindow, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.arrivals import arrival_record
from ci_integrations.services.audit import audit_record
from ci_integrations.services.freeze import freeze_window_create
from ci_integrations.services.promotions import promotion_request
from tests.support.sign_in import sign_in

pytestmark = pytest.mark.django_db

# Includes one query for the person's roles and teams (services/teams.py), read once per request.
MAX_QUERIES = 13


def client_for(user) -> Client:
    client = Client()
    sign_in(client, user)
    return client


def requested(world, artifact, env="staging", by="release1", reason=""):
    return promotion_request(artifact=artifact, to_env=env, actor=Actor.for_user(world.users[by]), reason=reason)


@pytest.fixture
def pending(world):
    artifact = world.place("qa", "1.0.0", branch="main")
    return requested(world, artifact)


def page_urls(world, promotion) -> dict[str, str]:
    return {
        "overview": reverse("overview"),
        "integration": reverse("integration", args=[world.integration.name]),
        "artifact": reverse("artifact", args=[promotion.artifact_id]),
        "approvals": reverse("approvals"),
        "promotion": reverse("promotion", args=[promotion.pk]),
        "audit": reverse("audit"),
        "tokens": reverse("tokens"),
        "freeze windows": reverse("freeze_windows"),
    }


def test_every_page_sends_anonymous_visitors_to_sign_in(world, pending):
    client = Client()
    for name, url in page_urls(world, pending).items():
        response = client.get(url)
        assert response.status_code == 302, name
        assert response["Location"].startswith(reverse("login")), name


def test_an_auditor_cannot_approve_promote_or_see_the_approve_button(world, pending):
    client = client_for(world.users["auditor"])
    page = client.get(reverse("promotion", args=[pending.pk])).content.decode()
    panel = client.get(reverse("approval_panel", args=[pending.pk])).content.decode()
    assert ">Approve</button>" not in page + panel
    assert "Why can't I approve?" in panel
    assert client.post(reverse("promotion_approve", args=[pending.pk])).status_code == 403
    assert client.post(reverse("promotion_reject", args=[pending.pk])).status_code == 403
    assert client.get(reverse("promote", args=[pending.artifact_id, "staging"])).status_code == 403
    pending.refresh_from_db()
    assert pending.state == Promotion.State.PENDING_APPROVAL
    assert not Approval.objects.exists()


def test_a_viewer_cannot_see_or_export_the_audit_log(world):
    client = client_for(world.users["viewer"])
    assert client.get(reverse("audit")).status_code == 403
    assert client.get(reverse("audit_export_csv")).status_code == 403
    assert client.get(reverse("audit_export_jsonl")).status_code == 403
    assert client.post(reverse("audit_verify")).status_code == 403
    assert "Audit log" not in client.get(reverse("overview")).content.decode()


def test_promote_and_roll_back_buttons_show_only_for_people_who_may_request(world):
    old = world.place("qa", "1.0.0")
    world.place("qa", "1.1.0")
    url = reverse("integration", args=[world.integration.name])
    viewer_page = client_for(world.users["viewer"]).get(url).content.decode()
    manager_page = client_for(world.users["release1"]).get(url).content.decode()
    assert "Promote 1.1.0 to staging" not in viewer_page and "Roll back to this" not in viewer_page
    assert "Promote 1.1.0 to staging" in manager_page and "Roll back to this" in manager_page
    rollback_url = reverse("rollback", args=[world.integration.name, "qa", old.arrivals.get().pk])
    assert client_for(world.users["viewer"]).post(rollback_url, {"reason": "x"}).status_code == 403


def test_the_requester_is_told_why_they_cannot_approve_and_the_server_refuses(world, pending):
    client = client_for(world.users["release1"])
    page = client.get(reverse("approval_panel", args=[pending.pk]), headers={"HX-Request": "true"}).content.decode()
    assert ">Approve</button>" not in page and "<html" not in page
    assert "four-eyes" in page
    response = client.post(reverse("promotion_approve", args=[pending.pk]), {"comment": "me"}, follow=True)
    assert "four-eyes" in response.content.decode()
    pending.refresh_from_db()
    assert pending.state == Promotion.State.PENDING_APPROVAL
    assert AuditEntry.objects.filter(action="promotion.approve_refused").exists()


def test_a_second_release_manager_approves_with_a_comment_from_the_inbox(world, pending, rq_queues):
    client = client_for(world.users["release2"])
    inbox = client.get(reverse("approvals")).content.decode()
    assert f"#{pending.pk}" in inbox
    panel = client.get(reverse("approval_panel", args=[pending.pk]) + "?next=inbox").content.decode()
    assert ">Approve</button>" in panel and ">Reject</button>" in panel
    response = client.post(
        reverse("promotion_approve", args=[pending.pk]), {"comment": "looks good", "next": reverse("approvals")}
    )
    assert response.status_code == 302 and response["Location"] == reverse("approvals")
    pending.refresh_from_db()
    assert pending.state == Promotion.State.QUEUED
    assert Approval.objects.get(promotion=pending).comment == "looks good"


def test_approving_by_get_is_impossible(world, pending):
    client = client_for(world.users["release2"])
    assert client.get(reverse("promotion_approve", args=[pending.pk])).status_code == 405
    assert client.get(reverse("promotion_reject", args=[pending.pk])).status_code == 405
    pending.refresh_from_db()
    assert pending.state == Promotion.State.PENDING_APPROVAL


def test_a_post_without_its_csrf_token_is_refused(world, pending):
    client = Client(enforce_csrf_checks=True)
    sign_in(client, world.users["release2"])
    response = client.post(reverse("promotion_approve", args=[pending.pk]), {"comment": "no token"})
    assert response.status_code == 403
    assert client.post(reverse("promote", args=[pending.artifact_id, "staging"]), {}).status_code == 403
    assert client.post(reverse("tokens"), {"name": "t", "kind": "personal"}).status_code == 403
    pending.refresh_from_db()
    assert pending.state == Promotion.State.PENDING_APPROVAL
    assert not ApiToken.objects.exists()


def test_promote_previews_the_policy_then_confirm_creates_the_request(world):
    artifact = world.place("qa", "2.0.0")
    client = client_for(world.users["release1"])
    url = reverse("promote", args=[artifact.pk, "staging"])
    preview = client.get(url).content.decode()
    for words in ("required checks", "freeze window", "1 needed from release-managers", "Preflight"):
        assert words in preview
    assert not Promotion.objects.exists()
    response = client.post(url, {"tag": "", "reason": "ship it"})
    promotion = Promotion.objects.get()
    assert response["Location"] == reverse("promotion", args=[promotion.pk])
    assert (promotion.to_bucket_id, promotion.tag, promotion.reason) == (world.staging.pk, "2.0.0", "ship it")


def test_a_policy_refusal_is_shown_with_every_unmet_condition(world):
    artifact = world.place("qa", "2.0.0")
    artifact.checks.all().delete()
    FreezeWindow.objects.create(
        name="holidays",
        environments=["staging"],
        starts_at=timezone.now() - timedelta(hours=1),
        ends_at=timezone.now() + timedelta(hours=1),
    )
    response = client_for(world.users["release1"]).post(
        reverse("promote", args=[artifact.pk, "staging"]), {"reason": "now"}, follow=True
    )
    page = response.content.decode()
    assert "not reported: functional" in page and "holidays" in page
    assert not Promotion.objects.exists()


def test_polling_the_promotion_page_returns_the_live_part_and_286_once_final(world, pending):
    client = client_for(world.users["release2"])
    headers = {"HX-Request": "true", "HX-Target": "live"}
    url = reverse("promotion", args=[pending.pk])
    response = client.get(url, headers=headers)
    assert response.status_code == 200
    assert "<html" not in response.content.decode() and 'data-state="pending_approval"' in response.content.decode()
    Promotion.objects.filter(pk=pending.pk).update(
        state=Promotion.State.FAILED, error="registry said <no>", blobs_total=3, blobs_done=1
    )
    response = client.get(url, headers=headers)
    assert response.status_code == 286
    body = response.content.decode()
    assert 'data-state="failed"' in body and "registry said &lt;no&gt;" in body and ">Retry</button>" in body


def test_the_audit_log_pages_by_id_and_filters(world):
    for i in range(120):
        audit_record(actor=f"user{i % 3}", action="test.entry", integration="shop", environment=f"env{i % 2}")
    client = client_for(world.users["auditor"])
    first = client.get(reverse("audit"), {"action": "test.entry"})
    entries = first.context["page"].entries
    assert len(entries) == 50 and entries[0].id > entries[-1].id
    older = client.get(reverse("audit"), {"action": "test.entry", "before": first.context["page"].older_than})
    older_entries = older.context["page"].entries
    assert older_entries[0].id < entries[-1].id
    newer = client.get(reverse("audit"), {"action": "test.entry", "after": older.context["page"].newer_than})
    assert [e.id for e in newer.context["page"].entries] == [e.id for e in entries]
    filtered = client.get(reverse("audit"), {"actor": "user1", "environment": "env1"}).context["page"].entries
    assert filtered and all(e.actor == "user1" and e.environment == "env1" for e in filtered)
    assert client.get(reverse("audit"), {"since": "2030-01-02", "until": "2030-01-01"}).status_code == 200


def test_audit_exports_stream_csv_and_json_lines_ending_with_the_chain_head(world, pending):
    client = client_for(world.users["auditor"])
    response = client.get(reverse("audit_export_csv"), {"action": "promotion.requested"})
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["id", "timestamp", "actor", "action"]
    assert [row[3] for row in rows[1:-1]] == ["promotion.requested"]
    head = AuditEntry.objects.order_by("-id").first()
    assert rows[-1][:2] == ["# chain_head", head.hash]
    lines = b"".join(client.get(reverse("audit_export_jsonl")).streaming_content).decode().splitlines()
    assert json.loads(lines[-1])["chain_head"] == head.hash
    assert len(lines) - 1 == AuditEntry.objects.count()


def test_verifying_the_chain_runs_as_a_job_and_the_badge_shows_the_result(
    world, pending, rq_queues, run_worker, django_capture_on_commit_callbacks
):
    client = client_for(world.users["auditor"])
    assert "Not verified yet" in client.get(reverse("audit")).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("audit_verify"), headers={"HX-Request": "true"})
        client.post(reverse("audit_verify"))  # a second click queues nothing more
    assert "Verifying the whole chain" in response.content.decode()
    assert rq_queues["default"].count == 1
    assert client.get(reverse("audit_badge")).status_code == 200  # still running: keep polling
    run_worker()
    badge = client.get(reverse("audit_badge"))
    assert badge.status_code == 286
    assert "Chain verified" in badge.content.decode()
    assert f"{AuditEntry.objects.count()} entries" in badge.content.decode()


def test_a_verification_result_of_another_chain_is_not_shown_as_this_ones(world, pending, rq_queues, run_worker):
    import json

    import django_rq

    from ci_integrations.services.audit_verification import RESULT_KEY, audit_verification_run

    client = client_for(world.users["auditor"])
    audit_verification_run()
    assert "Chain verified" in client.get(reverse("audit")).content.decode()
    # What a reset database (or another portal on the same Redis database) leaves behind: a head this chain lacks.
    foreign = {"ok": True, "entries": 26, "head": "f" * 64, "broken_id": None, "problem": "", "verified_at": "x"}
    django_rq.get_connection("default").set(RESULT_KEY, json.dumps(foreign))
    page = client.get(reverse("audit")).content.decode()
    assert "Chain verified" not in page and "26 entries" not in page and "Not verified yet" in page


def test_the_promotion_page_counts_the_approvals_given_so_far(world):
    from ci_integrations.services.approvals import promotion_approve

    promotion = requested(world, world.place("staging", "2.0.0"), env="prod")
    client = client_for(world.users["release2"])
    assert "0 of 2 given" in client.get(reverse("promotion", args=[promotion.pk])).content.decode()
    promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["release2"]))
    page = client.get(reverse("promotion", args=[promotion.pk])).content.decode()
    assert "1 of 2 given" in page and "Pending approval" in page


def test_a_promotion_leaves_my_waiting_lists_once_i_have_approved_it_though_it_still_waits(world):
    from ci_integrations.services.approvals import promotion_approve

    promotion = requested(world, world.place("staging", "2.0.0"), env="prod")  # two approvals needed
    client = client_for(world.users["release2"])
    mark = f'href="{reverse("promotion", args=[promotion.pk])}"'
    assert mark in client.get(reverse("overview")).content.decode()
    assert mark in client.get(reverse("approvals")).content.decode()
    promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["release2"]))
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.PENDING_APPROVAL
    assert mark not in client.get(reverse("overview")).content.decode()
    assert (
        f"#{promotion.pk}" not in client.get(reverse("approvals")).content.decode().split("Other pending promotions")[0]
    )


def test_the_promote_preview_says_when_the_target_already_runs_the_image(world):
    artifact = world.place("staging", "2.0.0")
    client = client_for(world.users["release1"])
    url = reverse("promote", args=[artifact.pk, "prod"])
    assert "already runs this image" not in client.get(url).content.decode()
    arrival_record(bucket=world.prod, artifact=artifact, tag="2.0.0", how="push", actor=Actor.system("ci"))
    page = client.get(url).content.decode()
    assert "prod already runs this image (as 2.0.0)" in page and "still needs 2 approvals" in page


def test_the_approvals_link_is_offered_only_to_those_who_may_approve(world):
    link = f'href="{reverse("approvals")}"'
    assert link in client_for(world.users["release1"]).get(reverse("overview")).content.decode()
    for name in ("auditor", "viewer"):
        assert link not in client_for(world.users[name]).get(reverse("overview")).content.decode(), name


def token_form_once(client) -> str:
    """The one-time value of a freshly shown token form."""
    return client.get(reverse("tokens")).context["form"].initial["once"]


def test_a_token_is_shown_once_with_a_copy_button_and_can_be_revoked(world):
    client = client_for(world.users["release1"])
    once = token_form_once(client)
    response = client.post(reverse("tokens"), {"name": "laptop", "kind": "personal", "scopes": ["read"], "once": once})
    body = response.content.decode()
    token = ApiToken.objects.get()
    plain = response.context["created"]["plain"]
    assert plain.startswith("p2p_") and plain in body and "data-copy-target" in body
    assert response["Cache-Control"] == "no-store"
    again = client.get(reverse("tokens")).content.decode()
    assert plain not in again and "laptop" in again
    ci_token = {"name": "ci", "kind": "ci", "integrations": [world.integration.name], "once": token_form_once(client)}
    refused = client.post(reverse("tokens"), ci_token)  # making CI tokens is for platform admins (add_ci_token)
    assert refused.status_code == 200 and not ApiToken.objects.filter(name="ci").exists()
    admin = client_for(world.users["admin"])
    ci = admin.post(reverse("tokens"), {**ci_token, "once": token_form_once(admin)})
    made = ci.context["created"]["token"]
    assert made.kind == "ci" and made.owner == world.users["admin"] and made.expires_at is not None
    viewer = client_for(world.users["viewer"])
    assert viewer.post(reverse("token_revoke", args=[token.pk])).status_code == 404
    viewer_ci = viewer.post(
        reverse("tokens"),
        {"name": "x", "kind": "ci", "integrations": [world.integration.name], "once": token_form_once(viewer)},
    )
    assert viewer_ci.status_code == 200 and not ApiToken.objects.filter(name="x").exists()
    client.post(reverse("token_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_a_token_form_sent_twice_creates_one_token_and_never_shows_its_secret_again(world):
    client = client_for(world.users["release1"])
    form = {"name": "laptop", "kind": "personal", "once": token_form_once(client)}
    first = client.post(reverse("tokens"), form)
    plain = first.context["created"]["plain"]
    again = client.post(reverse("tokens"), form, follow=True)  # a double click, or the answer refreshed
    body = again.content.decode()
    assert ApiToken.objects.filter(name="laptop").count() == 1
    assert "This form was already sent" in body and plain not in body
    client.post(reverse("tokens"), {**form, "once": token_form_once(client)})  # a new form is a new token
    assert ApiToken.objects.filter(name="laptop").count() == 2


def test_a_token_form_without_its_one_time_value_creates_nothing_and_says_to_reload(world):
    client = client_for(world.users["release1"])
    response = client.post(reverse("tokens"), {"name": "laptop", "kind": "personal"})
    assert response.status_code == 200 and not ApiToken.objects.filter(name="laptop").exists()
    assert "This form is out of date: reload the page" in response.content.decode()


def test_only_platform_admins_manage_freeze_windows(world):
    assert client_for(world.users["release1"]).get(reverse("freeze_windows")).status_code == 403
    admin = client_for(world.users["admin"])
    now = timezone.now()
    admin.post(
        reverse("freeze_windows"),
        {
            "name": "release week",
            "environments": "staging, prod",
            "starts_at": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
            "ends_at": (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
            "reason": "quiet please",
        },
    )
    window = FreezeWindow.objects.get()
    assert window.environments == ["prod", "staging"] and window.is_active()
    assert "release week" in admin.get(reverse("freeze_windows")).content.decode()
    admin.post(reverse("freeze_window_end", args=[window.pk]))
    window.refresh_from_db()
    assert not window.is_active()


def _freeze(world, env: str) -> None:
    freeze_window_create(
        name="Black Friday",
        environments=[env],
        starts_at=timezone.now() - timedelta(minutes=1),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="sales",
        actor=Actor.for_user(world.users["admin"]),
    )


def test_only_platform_admins_are_offered_a_freeze_override_when_rolling_back_and_it_is_kept(world):
    old = world.place("prod", "1.0.0")
    world.place("prod", "1.1.0")
    _freeze(world, "prod")
    url = reverse("rollback", args=[world.integration.name, "prod", old.arrivals.get().pk])
    manager, admin = client_for(world.users["release1"]), client_for(world.users["admin"])
    assert "Freeze override reason" not in manager.get(url).content.decode()
    assert "Freeze override reason" in admin.get(url).content.decode()
    refused = manager.post(url, {"reason": "1.1.0 is broken", "freeze_override_reason": "outage"}, follow=True)
    assert "may not override" in refused.content.decode() and not Promotion.objects.exists()
    response = admin.post(url, {"reason": "1.1.0 is broken", "freeze_override_reason": "outage INC-7"})
    rollback = Promotion.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("promotion", args=[rollback.pk])
    assert rollback.kind == Promotion.Kind.ROLLBACK and rollback.freeze_override_reason == "outage INC-7"
    assert AuditEntry.objects.get(action="promotion.freeze_overridden").reason == "outage INC-7"


def test_during_a_freeze_the_approval_that_would_queue_the_copy_is_not_offered_but_reject_is(world, pending):
    panel_url = reverse("approval_panel", args=[pending.pk]) + "?next=inbox"
    client = client_for(world.users["release2"])
    _freeze(world, "staging")
    panel = client.get(panel_url).content.decode()
    assert ">Approve</button>" not in panel and ">Reject</button>" in panel
    assert "Black Friday" in panel
    # The budget of the panel holds during a freeze too.
    assert _count(client, panel_url) <= 17


def test_markup_in_metadata_reasons_and_comments_is_escaped_everywhere(world):
    script = "<script>alert(1)</script>"
    artifact = world.place("qa", "1.0.0", branch=script, labels={"note": script}, build_url="javascript:alert(1)")
    promotion = requested(world, artifact, reason=script)
    promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["release2"]), comment=script)
    for user in ("release2", "auditor"):
        client = client_for(world.users[user])
        urls = page_urls(world, promotion) | {"decision": reverse("approval_panel", args=[promotion.pk])}
        for name, url in urls.items():
            response = client.get(url)
            if response.status_code != 200:
                continue
            body = response.content.decode()
            assert script not in body, f"{name} as {user}"
            assert 'href="javascript:' not in body, name
    audit_page = client_for(world.users["auditor"]).get(reverse("audit")).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in audit_page
    export = b"".join(client_for(world.users["auditor"]).get(reverse("audit_export_jsonl")).streaming_content)
    assert script in json.dumps([json.loads(line) for line in export.decode().splitlines()])


def _count(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(queries)


def _more_of_everything(world, n: int) -> None:
    for i in range(n):
        artifact = world.place("qa", f"9.{i}.0", labels={"i": i})
        world.place("staging", f"8.{i}.0")
        promotion = requested(world, artifact)
        if i % 2:
            promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["release2"]))
    for _ in range(n):
        audit_record(actor="bulk", action="test.bulk", integration=world.integration.name)


def test_main_pages_use_a_constant_number_of_queries(world, pending):
    people = {"release2": client_for(world.users["release2"]), "auditor": client_for(world.users["auditor"])}
    before = {
        (who, name): _count(client, url)
        for who, client in people.items()
        for name, url in page_urls(world, pending).items()
        if not (who == "release2" and name in ("audit", "freeze windows"))
        and not (who == "auditor" and name == "freeze windows")
    }
    _more_of_everything(world, 25)
    after = {(who, name): _count(people[who], url) for (who, name), url in _urls_again(world, pending, before)}
    assert after == before
    assert max(before.values()) <= MAX_QUERIES, before


def _urls_again(world, pending, before):
    urls = page_urls(world, pending)
    return [((who, name), urls[name]) for (who, name) in before]


def test_the_decision_panel_runs_the_policy_in_a_constant_number_of_queries(world, pending):
    """The panel evaluates the whole policy (checks, soak, freeze windows, open promotions, four-eyes), so it is
    lazy-loaded by the pages; its own cost must still not grow with the data."""
    client = client_for(world.users["release2"])
    url = reverse("approval_panel", args=[pending.pk]) + "?next=inbox"
    before = _count(client, url)
    _more_of_everything(world, 10)
    assert _count(client, url) == before <= 17


def test_an_admin_makes_a_recurring_window_and_the_page_shows_its_next_occurrences(world):
    admin = client_for(world.users["admin"])
    response = admin.post(
        reverse("freeze_windows"),
        {
            "name": "weekend",
            "kind": "deny",
            "environments": "prod",
            "rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0",
            "duration": "64h",
            "time_zone": "Europe/London",
        },
    )
    assert response.status_code == 302
    window = FreezeWindow.objects.get()
    assert window.is_recurring and window.duration == timedelta(hours=64) and window.ends_at is None
    page = admin.get(reverse("freeze_windows")).content.decode()
    assert "Next windows per environment" in page and page.count("weekend</strong>") == 2  # two Fridays ahead
    bad = admin.post(
        reverse("freeze_windows"),
        {"name": "x", "environments": "prod", "rrule": "FREQ=HOURLY", "duration": "1h", "time_zone": "UTC"},
    )
    assert "FREQ must be one of" in bad.content.decode() and FreezeWindow.objects.count() == 1
