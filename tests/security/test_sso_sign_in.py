"""Who a single sign-on is, and what the password form still does once single sign-on is on.

The provider's side runs for real in tests/ui/test_sso_browser.py; here the verified answer (a SignOn) is built
directly, to show how people are matched and named, and the password paths are driven through the test client.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from ci_integrations.models import AuditEntry, PersonIdentity, RoleGrant
from ci_integrations.services.oidc_relying_party import SignOn, SignOnFailed
from ci_integrations.services.sso import sso_sign_in
from tests.security.conftest import PASSWORD, client_for, ensure_roles, make_user

pytestmark = pytest.mark.django_db

ISSUER = "https://idp.example.com"


@pytest.fixture
def sso_on(settings):
    ensure_roles()
    settings.P2P_OIDC_ISSUER = ISSUER
    settings.P2P_OIDC_CLIENT_ID = "p2p"
    settings.P2P_OIDC_NAME = "Acme ID"
    return settings


def sign_on(subject: str, **claims) -> SignOn:
    return SignOn(issuer=ISSUER, claims={"sub": subject, **claims}, id_token="", next_url="", fresh=False)


def test_a_returning_person_is_matched_by_issuer_and_subject_not_by_name(sso_on):
    first = sso_sign_in(sign_on=sign_on("u-1", preferred_username="carol", groups=[]))
    renamed = sso_sign_in(sign_on=sign_on("u-1", preferred_username="carol.new", groups=[]))
    assert renamed.pk == first.pk and renamed.username == "carol"
    assert not User.objects.filter(username="carol.new").exists()


def test_a_new_person_whose_user_name_is_taken_is_refused_not_merged(sso_on):
    make_user("dave", "release-managers")  # a local account with a password
    with pytest.raises(SignOnFailed) as refused:
        sso_sign_in(sign_on=sign_on("u-2", preferred_username="dave", groups=[]))
    assert (
        refused.value.code == "username_taken" and "'dave' already belongs to another person" in refused.value.message
    )
    sso_sign_in(sign_on=sign_on("u-3", preferred_username="erin", groups=[]))
    with pytest.raises(SignOnFailed, match="'erin' already belongs"):
        sso_sign_in(sign_on=sign_on("u-4", preferred_username="erin", groups=[]))
    assert not PersonIdentity.objects.filter(subject__in=["u-2", "u-4"]).exists()


def test_a_password_less_user_made_beforehand_is_claimed_by_the_first_sign_in(sso_on):
    waiting = User.objects.create_user(username="frank", password=None)
    person = sso_sign_in(sign_on=sign_on("u-5", preferred_username="frank", groups=[]))
    assert person.pk == waiting.pk and person.identity.subject == "u-5"


def test_the_user_name_falls_back_to_the_email_claim(sso_on):
    person = sso_sign_in(sign_on=sign_on("u-6", email="grace@example.com", groups=[]))
    assert person.username == "grace@example.com"
    with pytest.raises(SignOnFailed, match="neither a 'preferred_username' nor an 'email' claim"):
        sso_sign_in(sign_on=sign_on("u-7", groups=[]))


def test_groups_set_roles_and_are_audited_with_the_issuer_and_subject(sso_on):
    RoleGrant.objects.create(oidc_group="audit", role=Group.objects.get(name="auditors"))
    person = sso_sign_in(sign_on=sign_on("u-8", preferred_username="heidi", groups="audit"), request_id="req-8")
    assert list(person.groups.values_list("name", flat=True)) == ["auditors"]
    entry = AuditEntry.objects.get(action="person.signed_in", actor="heidi")
    assert entry.request_id == "req-8"
    assert entry.after == {
        "method": "sso",
        "issuer": ISSUER,
        "subject": "u-8",
        "groups": ["audit"],
        "roles": ["auditors"],
    }
    # The audit log says, by the actor, how each sign-in was made.
    page = client_for(person).get(reverse("audit"), {"action": "person.signed_in"}).content.decode()
    assert 'heidi <span class="muted small">via sso</span>' in page


def test_a_missing_or_overflowing_groups_claim_is_refused_naming_it(sso_on):
    with pytest.raises(SignOnFailed, match="sent no 'groups' claim"):
        sso_sign_in(sign_on=sign_on("u-9", preferred_username="ivan"))
    with pytest.raises(SignOnFailed, match="too many groups"):
        sso_sign_in(sign_on=sign_on("u-9", preferred_username="ivan", _claim_names={"groups": "src1"}))
    sso_on.P2P_OIDC_GROUPS_CLAIM = ""  # a provider without groups: people sign in with no role from it
    assert sso_sign_in(sign_on=sign_on("u-9", preferred_username="ivan")).username == "ivan"


def test_a_deactivated_person_cannot_sign_in(sso_on):
    person = sso_sign_in(sign_on=sign_on("u-10", preferred_username="judy", groups=[]))
    User.objects.filter(pk=person.pk).update(is_active=False)
    with pytest.raises(SignOnFailed, match="deactivated"):
        sso_sign_in(sign_on=sign_on("u-10", preferred_username="judy", groups=[]))


def test_a_local_sign_in_is_recorded_as_local(sso_on):
    user = make_user("kim", "release-managers")
    assert Client().post(reverse("login"), {"username": "kim", "password": PASSWORD}).status_code == 302
    assert PersonIdentity.objects.get(user=user).method == "local"
    assert AuditEntry.objects.get(action="person.signed_in", actor="kim").after == {"method": "local"}


def test_the_sign_in_page_offers_the_provider_and_the_password_form(sso_on):
    page = Client().get(reverse("login") + "?next=/approvals/")
    html = page.content.decode()
    assert 'href="/login/sso/?next=%2Fapprovals%2F"' in html and ">Sign in with Acme ID</a>" in html
    assert 'name="password"' in html
    # Signing out redirects to the provider's end-session endpoint: the CSP lets the sign-out form go there.
    assert f"form-action 'self' {ISSUER};" in page["Content-Security-Policy"]


def test_with_local_sign_in_off_only_superusers_sign_in_with_a_password(sso_on):
    sso_on.P2P_LOCAL_LOGIN = False
    make_user("lee", "release-managers", staff=True)
    make_user("root", superuser=True, staff=True)
    html = Client().get(reverse("login")).content.decode()
    assert "Sign in with Acme ID" in html and 'name="password"' not in html
    assert 'name="password"' in Client().get(reverse("login") + "?local=1").content.decode()  # break-glass

    for url in (reverse("login") + "?local=1", reverse("admin:login")):
        client = Client()
        refused = client.post(url, {"username": "lee", "password": PASSWORD})
        assert refused.status_code == 200 and "_auth_user_id" not in client.session, url
    assert (
        "not a superuser" in Client().post(reverse("login"), {"username": "lee", "password": PASSWORD}).content.decode()
    )
    client = Client()
    assert client.post(reverse("login") + "?local=1", {"username": "root", "password": PASSWORD}).status_code == 302
    assert client.session["_auth_user_id"] == str(User.objects.get(username="root").pk)
