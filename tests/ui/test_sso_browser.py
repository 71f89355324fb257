"""Single sign-on in a real Chromium against a real OpenID Connect provider (oidc-provider) and the live server:
the whole redirect flow, roles from the groups claim, sign-out at both ends, a fresh sign-in to approve into prod,
and a page that says what is wrong for each way a sign-in can fail."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.sessions.models import Session
from playwright.sync_api import expect

from ci_integrations.models import Approval, AuditEntry, Integration, PersonIdentity, RoleGrant, Team, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.promotions import promotion_request
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

BUTTON = "Sign in with Test IdP"


def open_browser(browse):
    """A browser whose requests for the provider pages' web font are answered empty (no network here)."""
    session = browse()
    session.context.route(
        "https://fonts.googleapis.com/**", lambda route: route.fulfill(body="", content_type="text/css")
    )
    return session


def sign_in_at_provider(page, login: str) -> None:
    page.get_by_placeholder("Enter any login").fill(login)
    page.get_by_placeholder("and password").fill("any password")
    page.get_by_role("button", name="Sign-in").click()


def portal_session(session_key_cookie: str):
    return Session.objects.get(session_key=session_key_cookie).get_decoded()


def session_cookie(session) -> str:
    return next(c["value"] for c in session.context.cookies() if c["name"] == "sessionid")


@pytest.fixture
def leads_manage_releases(live_world):
    """The `roles:` mapping: members of the provider group payments-leads are release managers."""
    return RoleGrant.objects.create(oidc_group="payments-leads", role=Group.objects.get(name="release-managers"))


def test_signing_in_lands_where_the_person_was_going_and_signing_out_ends_both_sessions(
    sso, leads_manage_releases, browse, live_server, caplog
):
    caplog.set_level(logging.DEBUG)
    session = open_browser(browse)
    page = session.goto("/approvals/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/approvals/$"))
    session.screenshot("sso-sign-in-page")
    page.get_by_role("link", name=BUTTON).click()
    # One click: straight to the provider's own sign-in page, nothing of the portal's in between.
    expect(page).to_have_url(re.compile(rf"^{re.escape(sso.issuer)}/interaction/"))
    sign_in_at_provider(page, "alice")
    page.wait_for_url(f"{live_server.url}/approvals/")
    expect(page.locator(".topbar")).to_contain_text("alice")

    alice = User.objects.get(username="alice")
    assert (alice.email, alice.first_name, alice.has_usable_password()) == ("alice@example.com", "Alice", False)
    assert alice.identity.method == PersonIdentity.Method.SSO
    assert (alice.identity.issuer, alice.identity.subject) == (sso.issuer, "alice")
    assert alice.identity.groups == ["everyone", "payments-leads"]
    assert set(alice.groups.values_list("name", flat=True)) == {"release-managers"}
    entry = AuditEntry.objects.filter(action="person.signed_in").latest("id")
    assert entry.actor == "alice"
    assert entry.after["method"] == "sso" and entry.after["issuer"] == sso.issuer and entry.after["subject"] == "alice"
    id_token = portal_session(session_cookie(session))["p2p_oidc_id_token"]
    assert id_token.count(".") == 2
    assert id_token not in caplog.text and id_token not in page.content()

    page.get_by_role("button", name="Sign out").click()
    # RP-initiated logout: the provider asks whether to end its session too.
    expect(page).to_have_url(re.compile(rf"^{re.escape(sso.issuer)}/session/end"))
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/login/"))
    page = session.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    # The provider's session ended too: the next sign-in asks for credentials again.
    page.get_by_role("link", name=BUTTON).click()
    expect(page.get_by_placeholder("Enter any login")).to_be_visible()
    sign_in_at_provider(page, "alice")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator("table.matrix")).to_be_visible()


def test_a_person_removed_from_a_group_at_the_provider_loses_the_role_at_the_next_sign_in(
    sso, leads_manage_releases, browse, live_server
):
    session = open_browser(browse)
    page = session.goto("/login/")
    page.get_by_role("link", name=BUTTON).click()
    sign_in_at_provider(page, "alice")
    page.wait_for_url(f"{live_server.url}/")
    alice = User.objects.get(username="alice")
    assert alice.has_perm("ci_integrations.approve_promotion")

    sso.set_person("alice", {"preferred_username": "alice", "email": "alice@example.com", "groups": ["everyone"]})
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/login/"))
    page.get_by_role("link", name=BUTTON).click()
    sign_in_at_provider(page, "alice")
    page.wait_for_url(f"{live_server.url}/")
    alice = User.objects.get(pk=alice.pk)
    assert not alice.groups.filter(name="release-managers").exists()
    assert not alice.has_perm("ci_integrations.approve_promotion")
    assert PersonIdentity.objects.get(user=alice).groups == ["everyone"]
    assert AuditEntry.objects.filter(action="person.signed_in", actor="alice").count() == 2


def test_approving_into_prod_after_an_old_sign_in_goes_through_the_provider_again(
    sso, leads_manage_releases, browse, live_server, live_world, settings
):
    settings.P2P_REAUTH_MINUTES = 15
    artifact = live_world.place("staging", "5.0.0")
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=Actor.for_user(live_world.users["release1"]))
    assert promotion.required_approvals == 2
    session = open_browser(browse)
    page = session.goto(f"/promotions/{promotion.pk}/")
    page.get_by_role("link", name=BUTTON).click()
    sign_in_at_provider(page, "alice")
    page.wait_for_url(f"{live_server.url}/promotions/{promotion.pk}/")

    # An hour later, on the same session.
    store = Session.objects.get(session_key=session_cookie(session))
    data = store.get_decoded()
    data["p2p_signed_in_at"] = "2000-01-01T00:00:00+00:00"
    Session.objects.save(store.session_key, data, store.expire_date)
    page = session.goto(f"/promotions/{promotion.pk}/")
    panel = page.locator(f"#panel-{promotion.pk}")
    expect(panel).to_contain_text("sign in again with Test IdP")
    expect(panel.get_by_label("Your password")).to_have_count(0)
    panel.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("alert")).to_contain_text("Sign in again with Test IdP to approve.")
    assert not Approval.objects.filter(promotion=promotion).exists()

    page.get_by_role("link", name="sign in again").click()
    # prompt=login: the provider asks for the credentials although its session is alive.
    expect(page.get_by_placeholder("Enter any login")).to_be_visible()
    sign_in_at_provider(page, "alice")
    page.wait_for_url(f"{live_server.url}/promotions/{promotion.pk}/")
    panel = page.locator(f"#panel-{promotion.pk}")
    expect(panel).not_to_contain_text("sign in again")
    panel.get_by_label("Comment", exact=True).fill("looked at it")
    panel.get_by_role("button", name="Approve").click()
    expect(page.locator(".message.success")).to_contain_text(f"Approved #{promotion.pk}")
    assert Approval.objects.filter(promotion=promotion, user__username="alice").count() == 1


def test_groups_only_in_the_userinfo_answer_are_read_from_there(
    sso, leads_manage_releases, browse, live_server, settings
):
    from tests.support.oidc_provider import start_oidc_provider

    plain = start_oidc_provider(
        redirect_uris=[f"{live_server.url}/login/sso/callback/"],
        post_logout_redirect_uris=[f"{live_server.url}/login/"],
        claims_in_id_token=False,
    )
    try:
        settings.P2P_OIDC_ISSUER, settings.P2P_OIDC_CLIENT_SECRET = plain.issuer, plain.client_secret
        session = open_browser(browse)
        page = session.goto("/login/")
        page.get_by_role("link", name=BUTTON).click()
        sign_in_at_provider(page, "alice")
        page.wait_for_url(f"{live_server.url}/")
        id_token = portal_session(session_cookie(session))["p2p_oidc_id_token"]
    finally:
        plain.stop()
    alice = User.objects.get(username="alice")
    assert alice.identity.groups == ["everyone", "payments-leads"] and alice.identity.issuer == plain.issuer
    assert alice.groups.filter(name="release-managers").exists()
    # The ID token itself had neither the groups nor the user name: they came from userinfo.
    payload = json.loads(base64.urlsafe_b64decode(id_token.split(".")[1] + "=="))
    assert "groups" not in payload and "preferred_username" not in payload


def sign_in_through_provider(browse, live_server, login: str):
    session = open_browser(browse)
    page = session.goto("/login/")
    page.get_by_role("link", name=BUTTON).click()
    sign_in_at_provider(page, login)
    page.wait_for_url(f"{live_server.url}/")
    return session, page


def test_teams_from_the_groups_claim_scope_what_people_see_and_approve(sso, browse, live_server, live_world):
    world = live_world
    payments = Team.objects.create(
        name="payments", oidc_groups=["payments-devs"], release_manager_groups=["payments-leads"]
    )
    payments.members.add(world.users["release1"])
    Team.objects.create(name="ledger-team", oidc_groups=["ledger-devs"])
    sso.set_person("bob", {"preferred_username": "bob", "email": "bob@example.com", "groups": ["ledger-devs"]})
    Integration.objects.filter(pk=world.integration.pk).update(team=payments)
    Integration.objects.create(
        name="ledger", workflow=world.integration.workflow, team=Team.objects.get(name="ledger-team")
    )
    WorkflowStep.objects.filter(pk=world.to_staging.pk).update(approver_group=None, approvers_from_team=True)
    artifact = world.place("qa", "6.0.0")
    promotion = promotion_request(artifact=artifact, to_env="staging", actor=Actor.for_user(world.users["release1"]))

    # alice is in payments-leads: a release manager of the payments team, with no org-wide role.
    alice, page = sign_in_through_provider(browse, live_server, "alice")
    expect(page.locator("table.matrix")).to_contain_text(world.integration.name)
    expect(page.locator("table.matrix")).not_to_contain_text("ledger")
    page = alice.goto(f"/promotions/{promotion.pk}/")
    page.get_by_label("Comment", exact=True).fill("payments lead says yes")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".message.success")).to_contain_text(f"Approved #{promotion.pk}")
    assert Approval.objects.filter(promotion=promotion, user__username="alice").count() == 1

    # bob's groups make him a member of another team only: the payments team's pages do not exist for him.
    bob, page = sign_in_through_provider(browse, live_server, "bob")
    expect(page.locator("table.matrix")).to_contain_text("ledger")
    expect(page.locator("table.matrix")).not_to_contain_text(world.integration.name)
    for path in (f"/integrations/{world.integration.name}/", f"/promotions/{promotion.pk}/"):
        bob.goto(path)
        expect_console_status(bob, 404)


# --- each way a sign-in can fail: a page that says what is wrong ----------------------------------------------------


def failure_page(session, page, *, status: int, says: str) -> None:
    """The failure page says `says`, and came with `status` (which the browser notes in its console, taken here)."""
    expect(page.get_by_role("heading", name="Single sign-on failed")).to_be_visible()
    expect(page.locator("#sso-error")).to_contain_text(says)
    expect_console_status(session, status)


def expect_console_status(session, status: int) -> None:
    """The page came with `status`: Chromium notes an error status in the console; that note is taken off the list
    of console errors the browse fixture refuses."""
    noted = f"Failed to load resource: the server responded with a status of {status} "
    matching = [error for error in session.console_errors if error.startswith(noted)]
    assert matching, session.console_errors
    session.console_errors.remove(matching[0])


def test_an_unreachable_issuer_says_so(sso, browse, settings):
    settings.P2P_OIDC_ISSUER = f"http://127.0.0.1:{free_port()}"
    session = open_browser(browse)
    page = session.goto("/login/")
    page.get_by_role("link", name=BUTTON).click()
    failure_page(
        session, page, status=502, says=f"The identity provider at {settings.P2P_OIDC_ISSUER} could not be reached"
    )
    session.screenshot("sso-unreachable")


def test_a_wrong_client_secret_says_to_check_the_client_credentials(sso, browse, live_server, settings, caplog):
    caplog.set_level(logging.DEBUG)
    settings.P2P_OIDC_CLIENT_SECRET = "not-the-secret"
    session = open_browser(browse)
    page = session.goto("/login/")
    page.get_by_role("link", name=BUTTON).click()
    sign_in_at_provider(page, "alice")
    failure_page(session, page, status=400, says="refused the portal's client credentials (invalid_client")
    expect(page.locator("#sso-error")).to_contain_text("P2P_OIDC_CLIENT_SECRET")
    assert "not-the-secret" not in caplog.text and "not-the-secret" not in page.content()
    assert not User.objects.filter(username="alice").exists()


def test_a_missing_groups_claim_says_which_claim(sso, browse):
    session = open_browser(browse)
    page = session.goto("/login/")
    page.get_by_role("link", name=BUTTON).click()
    sign_in_at_provider(page, "nogroups")
    failure_page(session, page, status=400, says="The identity provider sent no 'groups' claim")
    session.screenshot("sso-no-groups")
    assert not User.objects.filter(username="nogroups").exists()


def test_an_answer_that_matches_no_sign_in_of_this_browser_is_a_state_mismatch(sso, browse, live_server):
    session = open_browser(browse)
    # A `next` that leaves the portal is not followed: the person lands on the overview.
    page = session.goto("/login/sso/?next=https://evil.example.com/")
    callbacks = []
    page.on("request", lambda request: callbacks.append(request.url) if "/login/sso/callback/" in request.url else 0)
    sign_in_at_provider(page, "bob")
    page.wait_for_url(f"{live_server.url}/")
    # The same answer again (a replay, or a link from another browser): its state was used up.
    page = session.goto(callbacks[0].removeprefix(live_server.url))
    failure_page(session, page, status=400, says="(state mismatch)")
    other = open_browser(browse)
    failure_page(other, other.goto(callbacks[0].removeprefix(live_server.url)), status=400, says="(state mismatch)")


def test_an_id_token_whose_nonce_does_not_match_is_refused(sso, browse, live_server):
    session = open_browser(browse)
    page = session.goto("/login/")
    page.get_by_role("link", name=BUTTON).click()
    # While the person is at the provider, the nonce this sign-in expects changes (as for a mixed-up answer).
    store = Session.objects.get(session_key=session_cookie(session))
    data = store.get_decoded()
    (key,) = [name for name in data if name.startswith("_state_p2p_oidc_")]
    data[key]["data"]["nonce"] = "another-nonce"
    Session.objects.save(store.session_key, data, store.expire_date)
    sign_in_at_provider(page, "bob")
    failure_page(session, page, status=400, says="its nonce does not match")
    assert not User.objects.filter(username="bob").exists()


def test_an_error_answer_from_the_provider_is_shown(sso, browse):
    session = open_browser(browse)
    page = session.goto("/login/")
    page.get_by_role("link", name=BUTTON).click()
    page.get_by_role("link", name="[ Cancel ]").click()
    failure_page(session, page, status=400, says="did not sign you in (access_denied: End-User aborted interaction)")
    session.screenshot("sso-provider-error")
