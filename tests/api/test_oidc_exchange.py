"""CI signs in without a stored secret: POST /api/v1/auth/oidc/ against a real issuer on loopback (discovery and JWKS
over HTTP, keys made with `cryptography`), with good tokens, rotated keys and bad tokens of every kind."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ci_integrations.models import ApiToken, AuditEntry, CiIdentity, Promotion
from ci_integrations.services.artifacts import artifact_register
from ci_integrations.services.oidc_keys import oidc_keys_forget
from ci_integrations.services.tokens import token_create
from tests.api.conftest import SYSTEM, Caller
from tests.support.oidc_issuer import new_key, start_issuer

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

EXCHANGE = "/api/v1/auth/oidc/"
ALL_CI_SCOPES = ["read", "artifacts:write", "checks:write", "promotions:request"]


@pytest.fixture(autouse=True)
def fresh_key_cache():
    oidc_keys_forget()
    yield
    oidc_keys_forget()


@pytest.fixture
def issuer():
    server = start_issuer("RS256", "ES256")
    yield server
    server.stop()


@pytest.fixture
def policy(world, issuer) -> CiIdentity:
    return CiIdentity.objects.create(
        integration=world.shop,
        issuer=issuer.url,
        audience="p2p-portal",
        claims={"repository": "acme/payments-api", "ref": "refs/heads/main"},
        scopes=ALL_CI_SCOPES,
    )


def exchange(id_token: str):
    return Caller("ci job", None).post(EXCHANGE, {"token": id_token})


def refused(response, check: str) -> str:
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["details"]["check"] == check, error
    entry = AuditEntry.objects.filter(action="token.exchange_refused").order_by("-id").first()
    assert entry is not None and entry.after["check"] == check and entry.reason == error["message"]
    return error["message"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict, payload: dict, sign) -> str:
    """A JWT built by hand, for the algorithms PyJWT rightly refuses to make."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def claims_of(issuer, **overrides) -> dict:
    now = int(time.time())
    return {
        "iss": issuer.url,
        "aud": "p2p-portal",
        "sub": "repo:acme/payments-api:ref:refs/heads/main",
        "repository": "acme/payments-api",
        "ref": "refs/heads/main",
        "iat": now,
        "exp": now + 600,
        **overrides,
    }


def test_a_valid_id_token_becomes_a_ci_token_for_the_matching_integration_only(world, issuer, policy):
    response = exchange(issuer.sign())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["integrations"] == [world.shop.name] and body["scopes"] == ALL_CI_SCOPES
    expires_at = parse_datetime(body["expires_at"])
    assert timezone.now() + timedelta(minutes=9) < expires_at <= timezone.now() + timedelta(minutes=10)

    ci = Caller("exchanged", body["token"])
    listed = ci.get("/api/v1/integrations/")
    assert [item["name"] for item in listed.json()] == [world.shop.name]
    assert ci.get(f"/api/v1/integrations/{world.other.name}/").status_code == 404

    token = ApiToken.objects.get(key_id=body["token"].split("_")[1])
    assert token.is_ci and token.owner is None and token.triggered_by is None
    assert token.ci_identity["issuer"] == issuer.url
    assert token.ci_identity["subject"] == "repo:acme/payments-api:ref:refs/heads/main"
    assert token.ci_identity["claims"] == {
        "ref": "refs/heads/main",
        "repository": "acme/payments-api",
        "run_id": "4242",
        "actor": "octocat",
    }
    entry = AuditEntry.objects.get(action="token.exchanged")
    assert entry.after["ci_identity"]["claims"]["run_id"] == "4242" and entry.integration == world.shop.name
    assert body["token"] not in json.dumps(entry.after) and "eyJ" not in json.dumps(entry.after)


def test_the_ci_token_lives_the_configured_minutes_and_never_past_the_id_tokens_expiry(world, issuer, policy, settings):
    settings.P2P_OIDC_CI_TOKEN_MINUTES = 5
    capped = parse_datetime(exchange(issuer.sign()).json()["expires_at"])
    assert timezone.now() + timedelta(minutes=4) < capped <= timezone.now() + timedelta(minutes=5)

    exp = int(time.time()) + 120
    short = exchange(issuer.sign(exp=exp)).json()
    assert parse_datetime(short["expires_at"]).timestamp() == exp


def test_an_es256_token_is_accepted(world, issuer, policy):
    es256 = next(key for key in issuer.keys if key.algorithm == "ES256")
    assert exchange(issuer.sign(key=es256)).status_code == 201


def test_claims_may_be_globs(world, issuer, policy):
    policy.claims = {"repository": "acme/*", "ref": "refs/tags/v*"}
    policy.save()
    assert exchange(issuer.sign(ref="refs/tags/v1.2.3")).status_code == 201
    message = refused(exchange(issuer.sign(ref="refs/heads/main")), "claims")
    assert "claim 'ref' is 'refs/heads/main', not 'refs/tags/v*'" in message


def test_a_token_matching_two_integrations_reaches_both_with_the_scopes_they_share(world, issuer, policy):
    CiIdentity.objects.create(
        integration=world.other,
        issuer=issuer.url,
        audience="p2p-portal",
        claims={"repository": "acme/payments-api"},
        scopes=["read", "checks:write"],
    )
    body = exchange(issuer.sign()).json()
    assert body["integrations"] == sorted([world.shop.name, world.other.name])
    assert body["scopes"] == ["read", "checks:write"]


def test_keys_are_fetched_again_once_when_the_issuer_rotates_them(world, issuer, policy):
    old = issuer.keys[0]
    assert exchange(issuer.sign()).status_code == 201
    assert exchange(issuer.sign()).status_code == 201
    assert issuer.requests == ["/.well-known/openid-configuration", "/.well-known/jwks"]  # cached

    new = issuer.rotate()
    assert exchange(issuer.sign(key=new)).status_code == 201
    assert issuer.requests[2:] == ["/.well-known/openid-configuration", "/.well-known/jwks"]

    # The old key is gone, and the keys were fetched moments ago: refused without asking the issuer again.
    message = refused(exchange(issuer.sign(key=old)), "key")
    assert old.kid in message and len(issuer.requests) == 4


def test_an_unknown_key_id_is_refused_after_one_refetch(world, issuer, policy):
    message = refused(exchange(issuer.sign(headers={"kid": "not-a-key"})), "key")
    assert "'not-a-key'" in message
    assert issuer.requests.count("/.well-known/jwks") == 2


def test_a_token_from_an_untrusted_issuer_is_refused_without_contacting_it(world, issuer, policy):
    stranger = start_issuer()
    try:
        message = refused(exchange(stranger.sign(iss=stranger.url)), "issuer")
        assert message == f"issuer: issuer {stranger.url!r} is not trusted by any integration"
        assert stranger.requests == [] and issuer.requests == []
    finally:
        stranger.stop()


def _rsa_key(issuer):
    return next(key for key in issuer.keys if key.algorithm == "RS256")


BAD_TOKENS = {
    "wrong signature": (lambda issuer: issuer.sign(key=_forged(issuer)), "signature"),
    "alg none": (
        lambda issuer: handmade({"alg": "none", "typ": "JWT"}, claims_of(issuer), lambda _: b""),
        "algorithm",
    ),
    "HS256 with the public key as secret": (
        lambda issuer: handmade(
            {"alg": "HS256", "kid": _rsa_key(issuer).kid},
            claims_of(issuer),
            lambda data: hmac.new(_public_pem(issuer), data, hashlib.sha256).digest(),
        ),
        "algorithm",
    ),
    "expired": (lambda issuer: issuer.sign(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "exp"),
    "not yet valid": (lambda issuer: issuer.sign(nbf=int(time.time()) + 3600), "nbf"),
    "issued in the future": (lambda issuer: issuer.sign(iat=int(time.time()) + 3600, nbf=None), "iat"),
    "wrong audience": (lambda issuer: issuer.sign(aud="someone-else"), "audience"),
    "wrong issuer": (lambda issuer: issuer.sign(iss="https://token.example.com"), "issuer"),
    "claims not matching": (lambda issuer: issuer.sign(repository="mallory/payments-api"), "claims"),
    "no expiry": (lambda issuer: issuer.sign(exp=None), "exp"),
    "not a JWT": (lambda issuer: "not-a-jwt", "format"),
}


def _forged(issuer):
    """A key the issuer never published, presenting itself under the issuer's key id."""
    forged = new_key("RS256")
    forged.kid = _rsa_key(issuer).kid
    return forged


def _public_pem(issuer) -> bytes:
    return (
        _rsa_key(issuer)
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_a_bad_id_token_is_refused_with_the_check_it_failed_and_audited(world, issuer, policy, kind):
    make, check = BAD_TOKENS[kind]
    refused(exchange(make(issuer)), check)
    assert not ApiToken.objects.filter(name__startswith="oidc ").exists()


def test_the_refusal_names_the_audience_that_is_not_accepted(world, issuer, policy):
    message = refused(exchange(issuer.sign(aud="x")), "audience")
    assert message == "audience: audience 'x' is not accepted for any integration"


def test_a_missing_or_oversized_token_is_a_400_naming_the_field(world):
    missing = Caller("ci job", None).post(EXCHANGE, {})
    assert missing.status_code == 400 and "token" in missing.json()["error"]["message"]
    huge = Caller("ci job", None).post(EXCHANGE, {"token": "a" * 20000})
    assert huge.status_code == 400 and "token" in huge.json()["error"]["message"]


def _promotable(world):
    """An artifact in staging, ready for the prod step (one approval from release-managers)."""
    world.push(world.dev, "9.9.9")
    world.copy(world.dev, world.staging, "9.9.9")
    artifact_register(integration=world.shop, env="dev", tag="9.9.9", actor=SYSTEM)
    artifact, _, _ = artifact_register(integration=world.shop, env="staging", tag="9.9.9", actor=SYSTEM)
    return artifact


def test_the_person_who_triggered_the_run_counts_as_the_requester(world, issuer, policy):
    octocat = User.objects.create_user("octocat", "octocat@example.com", None)
    octocat.groups.add(Group.objects.get(name="release-managers"))
    artifact = _promotable(world)
    ci = Caller("exchanged", exchange(issuer.sign()).json()["token"])

    response = ci.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": artifact.digest, "to_env": "prod"}
    )
    assert response.status_code == 201, response.content
    promotion = Promotion.objects.get(pk=response.json()["id"])
    # A known person answers for it, so it needs the step's one approval, not a system token's two.
    assert promotion.on_behalf_of == octocat and promotion.required_approvals == 1
    assert promotion.ci_identity["claims"]["repository"] == "acme/payments-api"
    assert response.json()["ci_identity"]["claims"]["run_id"] == "4242"
    requested = AuditEntry.objects.get(action="promotion.requested", object_id=str(promotion.pk))
    assert requested.after["ci_identity"]["subject"] == "repo:acme/payments-api:ref:refs/heads/main"

    _, plain = token_create(name="laptop", kind="personal", user=octocat, actor=SYSTEM)
    own = Caller("octocat", plain).post(f"/api/v1/promotions/{promotion.pk}/approve/", {"comment": "mine"})
    assert own.status_code == 403 and "triggered the CI run that requested it" in own.json()["error"]["message"]
    other = world.caller("rm").post(f"/api/v1/promotions/{promotion.pk}/approve/", {"comment": "ok"})
    assert other.status_code == 200, other.content

    page = Client()
    page.force_login(world.users["rm"])
    html = page.get(f"/promotions/{promotion.pk}/").content.decode()
    assert "CI identity" in html and "acme/payments-api" in html and "run 4242" in html
    assert "triggered by octocat" in html


def test_a_run_whose_actor_is_no_portal_user_needs_two_approvals_like_a_system_token(world, issuer, policy):
    artifact = _promotable(world)
    ci = Caller("exchanged", exchange(issuer.sign(actor="someone-unknown")).json()["token"])
    response = ci.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": artifact.digest, "to_env": "prod"}
    )
    promotion = Promotion.objects.get(pk=response.json()["id"])
    assert promotion.on_behalf_of is None and promotion.required_approvals == 2
