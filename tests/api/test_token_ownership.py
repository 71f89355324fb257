"""CI tokens answer for a person: four-eyes cannot be routed around through a token, and a token never outranks or
outlives its owner (findings 12.1 and 12.4 of the trust-boundaries review).

The world is the API's (tests/api/conftest.py): dev → staging (no approvals) → prod (one approval by a release
manager), a real registry, and people in each role.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from ci_integrations.models import ApiToken, AuditEntry, CheckResult, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approve
from ci_integrations.services.artifacts import check_report
from ci_integrations.services.copying import promotion_execute
from ci_integrations.services.errors import InvalidInput, NotAllowed, PolicyViolation
from ci_integrations.services.promotions import promotion_request, promotion_retry
from ci_integrations.services.tokens import token_authenticate, token_create
from tests.api.conftest import Caller

pytestmark = pytest.mark.django_db

ADMIN_COMMAND = Actor.for_command("create_token")


def ci_token(world, *, owner=None, system=False, scopes=(), name="pipeline"):
    """A CI token for the shop, made by a platform admin in the portal."""
    token, plain = token_create(
        name=name,
        kind=ApiToken.Kind.CI,
        actor=Actor.for_user(world.users["admin"]),
        owner=owner,
        system=system,
        integrations=[world.shop],
        scopes=list(scopes),
    )
    return token, Caller(name, plain)


def registered_in_staging(world, caller: Caller | None = None, tag: str = "1.0.0") -> int:
    """Register `tag` in dev and promote it to staging, through `caller` (by default a token the admin owns, since
    release managers may not register images)."""
    caller = caller or ci_token(world, owner=world.users["admin"], name=f"admins-{tag}")[1]
    world.push(world.dev, tag)
    artifact = caller.post(f"/api/v1/integrations/{world.shop.name}/artifacts/", {"env": "dev", "tag": tag})
    assert artifact.status_code == 201, artifact.json()
    promoted = caller.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": tag, "to_env": "staging"}
    )
    assert promoted.status_code == 201, promoted.json()
    promotion_execute(promotion_id=promoted.json()["id"])
    assert Promotion.objects.get(pk=promoted.json()["id"]).state == Promotion.State.SUCCEEDED
    return artifact.json()["id"]


def test_a_release_manager_cannot_approve_what_a_ci_token_they_own_requested(world):
    rm = world.users["rm"]
    world.to_prod.required_approvals = 1
    world.to_prod.save()
    _, token_of_rm = ci_token(world, owner=rm)
    registered_in_staging(world)
    # The owner may request promotions, so the token may too; the owner counts as its requester.
    response = token_of_rm.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": "1.0.0", "to_env": "prod"}
    )
    assert response.status_code == 201, response.json()
    promotion = Promotion.objects.get(pk=response.json()["id"])
    assert promotion.on_behalf_of == rm and promotion.requested_by is None

    with pytest.raises(NotAllowed, match="four-eyes: you own the CI token that requested it"):
        promotion_approve(promotion=promotion, actor=Actor.for_user(rm))
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.PENDING_APPROVAL
    assert AuditEntry.objects.filter(action="promotion.approve_refused", object_id=str(promotion.pk)).exists()
    assert promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["rm2"])).state == "queued"


def test_a_system_token_request_needs_two_approvers_who_did_not_make_the_token(world):
    _, system_token = ci_token(world, system=True, name="nightly")
    registered_in_staging(world, system_token)
    response = system_token.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": "1.0.0", "to_env": "prod"}
    )
    promotion = Promotion.objects.get(pk=response.json()["id"])
    assert promotion.required_approvals == 2, "no single person answers for a system token's request"
    # The admin made the token in the portal: they count as its requester.
    assert promotion.on_behalf_of == world.users["admin"]
    assert promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["rm"])).state == "pending_approval"
    assert promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["rm2"])).state == "queued"


def test_a_system_token_request_into_a_step_without_approvals_still_needs_none(world):
    _, system_token = ci_token(world, system=True, name="nightly")
    registered_in_staging(world, system_token)  # dev → staging needs no approval, and got none
    assert Promotion.objects.get(to_bucket=world.staging).required_approvals == 0


def test_an_auto_promotion_caused_by_a_token_cannot_be_approved_by_the_tokens_owner(world):
    rm = world.users["rm"]
    world.to_prod.auto_promote = True
    world.to_prod.save()
    _, token_of_rm = ci_token(world, owner=rm)
    world.push(world.dev, "1.0.0")
    token_of_admin = ci_token(world, owner=world.users["admin"], name="admins")[1]
    token_of_admin.post(f"/api/v1/integrations/{world.shop.name}/artifacts/", {"env": "dev", "tag": "1.0.0"})
    # The release manager's token asks for staging; the arrival there auto-requests prod, on their behalf.
    promoted = token_of_rm.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": "1.0.0", "to_env": "staging"}
    )
    promotion_execute(promotion_id=promoted.json()["id"])
    auto = Promotion.objects.get(to_bucket=world.prod)
    assert auto.requested_by_label == "auto-promote" and auto.on_behalf_of == rm
    with pytest.raises(NotAllowed, match="four-eyes"):
        promotion_approve(promotion=auto, actor=Actor.for_user(rm))


def test_a_rollback_requested_through_an_owned_token_cannot_be_approved_by_the_owner(world):
    rm = world.users["rm"]
    world.to_prod.rollback_approvals = 1
    world.to_prod.save()
    _, token_of_rm = ci_token(world, owner=rm)
    for tag in ("1.0.0", "2.0.0"):
        registered_in_staging(world, tag=tag)
        promotion = Promotion.objects.get(
            pk=token_of_rm.post(
                "/api/v1/promotions/", {"integration": world.shop.name, "artifact": tag, "to_env": "prod"}
            ).json()["id"]
        )
        promotion_approve(promotion=promotion, actor=Actor.for_user(world.users["rm2"]))
        promotion_execute(promotion_id=promotion.pk)
    rollback = token_of_rm.post(
        f"/api/v1/integrations/{world.shop.name}/rollback/", {"env": "prod", "to": "1.0.0", "reason": "bad 2.0.0"}
    )
    assert rollback.status_code == 201, rollback.json()
    promotion = Promotion.objects.get(pk=rollback.json()["id"])
    with pytest.raises(NotAllowed, match="four-eyes"):
        promotion_approve(promotion=promotion, actor=Actor.for_user(rm))


def test_a_ci_token_cannot_report_a_check_its_owner_may_not_report(world):
    rm = world.users["rm"]  # release managers may request and approve, not report checks
    _, token_of_rm = ci_token(world, owner=rm, scopes=["read", "checks:write"])
    _, token_of_admin = ci_token(world, owner=world.users["admin"], name="admins")
    world.push(world.dev, "1.0.0")
    artifact = token_of_admin.post(
        f"/api/v1/integrations/{world.shop.name}/artifacts/", {"env": "dev", "tag": "1.0.0"}
    ).json()
    refused = token_of_rm.post(f"/api/v1/artifacts/{artifact['id']}/checks/", {"name": "nft", "status": "passed"})
    assert refused.status_code == 403
    assert "acts for" in refused.json()["error"]["message"] and "add_checkresult" in refused.json()["error"]["message"]
    assert not CheckResult.objects.exists()


def test_a_ci_token_cannot_request_what_its_owner_may_no_longer_request(world):
    rm = world.users["rm"]
    _, token_of_rm = ci_token(world, owner=rm)
    registered_in_staging(world)
    rm.groups.clear()  # the owner lost the release-manager role since the token was made
    refused = token_of_rm.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": "1.0.0", "to_env": "prod"}
    )
    assert refused.status_code == 403
    assert "request_promotion" in refused.json()["error"]["message"]
    assert not Promotion.objects.filter(to_bucket=world.prod).exists()


def test_a_deactivated_owners_tokens_stop_working(world):
    rm = world.users["rm"]
    _, token_of_rm = ci_token(world, owner=rm)
    assert token_of_rm.get("/api/v1/integrations/").status_code == 200
    rm.is_active = False
    rm.save()
    refused = token_of_rm.get("/api/v1/integrations/")
    assert refused.status_code == 401 and "owner" in refused.json()["error"]["message"]


def test_ci_tokens_expire_by_default_after_the_maximum_age_and_cannot_be_given_longer(world, settings):
    settings.P2P_CI_TOKEN_MAX_AGE = timedelta(days=30)
    token, _ = ci_token(world, owner=world.users["admin"])
    assert abs(token.expires_at - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    with pytest.raises(InvalidInput, match="at most 30 days"):
        token_create(
            name="forever",
            kind=ApiToken.Kind.CI,
            actor=ADMIN_COMMAND,
            owner=world.users["admin"],
            integrations=[world.shop],
            expires_at=timezone.now() + timedelta(days=365),
        )


def test_making_ci_tokens_needs_its_own_permission(world):
    for role in ("rm", "viewer", "auditor"):
        with pytest.raises(NotAllowed, match="add_ci_token"):
            token_create(
                name="mine",
                kind=ApiToken.Kind.CI,
                actor=Actor.for_user(world.users[role]),
                owner=world.users[role],
                integrations=[world.shop],
            )
    token, _ = ci_token(world, owner=world.users["rm"])
    assert token.made_by == world.users["admin"] and token.owner == world.users["rm"]


def test_a_ci_token_cannot_make_tokens(world):
    token, _ = ci_token(world, owner=world.users["admin"])
    with pytest.raises(NotAllowed):
        token_create(
            name="child", kind=ApiToken.Kind.CI, actor=Actor.for_token(token), system=True, integrations=[world.shop]
        )


def test_create_token_needs_an_owner_or_says_it_is_a_system_token(world):
    with pytest.raises(CommandError, match="--owner USERNAME"):
        call_command("create_token", "--name", "ci", "--integration", world.shop.name, stdout=io.StringIO())
    out = io.StringIO()
    call_command("create_token", "--name", "ci", "--integration", world.shop.name, "--system", stdout=out)
    assert "a system token" in out.getvalue()
    system = token_authenticate(out.getvalue().strip().splitlines()[-1])
    assert system.owner is None and system.made_by is None and system.expires_at is not None
    out = io.StringIO()
    owner = world.users["rm"].username
    call_command("create_token", "--name", "ci2", "--integration", world.shop.name, "--owner", owner, stdout=out)
    assert token_authenticate(out.getvalue().strip().splitlines()[-1]).owner == world.users["rm"]


def test_a_retry_is_refused_when_a_required_check_has_failed_since(world):
    registered_in_staging(world)
    world.to_prod.required_checks = ["nft"]
    world.to_prod.required_approvals = 0
    world.to_prod.save()
    artifact = Promotion.objects.get(to_bucket=world.staging).artifact
    check_report(artifact=artifact, name="nft", status="passed", actor=Actor.system("ci"))
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=Actor.for_user(world.users["rm"]))
    Promotion.objects.filter(pk=promotion.pk).update(state=Promotion.State.FAILED, error="registry down")
    check_report(artifact=artifact, name="nft", status="failed", actor=Actor.system("ci"))
    promotion.refresh_from_db()
    with pytest.raises(PolicyViolation, match="required checks: failed: nft"):
        promotion_retry(promotion=promotion, actor=Actor.for_user(world.users["rm"]))
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.FAILED
