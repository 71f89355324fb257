"""Teams scope what people see and do, through the API as on the pages: membership from the identity provider's
groups (read at every request, so tokens follow a change at once) or from the config file's local members."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from ci_integrations.models import PersonIdentity, Promotion, Team
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register
from ci_integrations.services.audit import audit_record
from ci_integrations.services.errors import NotAllowed
from ci_integrations.services.identity import sign_in_record
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.tokens import token_create
from tests.api.conftest import SYSTEM, Caller

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def teams(world):
    """`shop` belongs to team payments (provider groups payments-devs, leads payments-leads); `other` to team cards."""
    payments = Team.objects.create(
        name="payments", oidc_groups=["payments-devs"], release_manager_groups=["payments-leads"]
    )
    cards = Team.objects.create(name="cards", oidc_groups=["cards-devs"], release_manager_groups=["cards-leads"])
    world.shop.team, world.other.team = payments, cards
    world.shop.save(update_fields=["team"])
    world.other.save(update_fields=["team"])
    world.to_prod.approver_group, world.to_prod.approvers_from_team = None, True
    world.to_prod.save(update_fields=["approver_group", "approvers_from_team"])
    return payments, cards


def sso_person(name: str, *groups: str) -> tuple[User, Caller]:
    """Someone who signed in through the provider with these groups, and their personal token."""
    user = User.objects.create_user(name)
    sign_in_record(user, method="sso", issuer="https://idp.example.com", subject=f"sub-{name}", groups=groups)
    _, plain = token_create(name=f"{name}-token", kind="personal", user=user, actor=SYSTEM)
    return user, Caller(name, plain)


def pending_prod_promotion(world) -> Promotion:
    for tag in ("v1",):
        world.push(world.dev, tag)
        world.copy(world.dev, world.staging, tag)
    artifact_register(integration=world.shop, env="dev", tag="v1", actor=SYSTEM)
    artifact, _, _ = artifact_register(integration=world.shop, env="staging", tag="v1", actor=SYSTEM)
    requester = User.objects.create_user("requester")
    Team.objects.get(name="payments").members.add(requester)
    promotion = promotion_request(artifact=artifact, to_env="prod", actor=Actor.for_user(requester))
    assert promotion.state == Promotion.State.PENDING_APPROVAL
    return promotion


def test_a_person_sees_only_their_teams_integrations_and_gets_404_for_the_others(world, teams):
    _, dev = sso_person("dana", "payments-devs")
    names = [item["name"] for item in dev.get("/api/v1/integrations/").json()]
    assert names == [world.shop.name]
    assert dev.get(f"/api/v1/integrations/{world.other.name}/").status_code == 404
    assert dev.get(f"/api/v1/integrations/{world.other.name}/artifacts/").status_code == 404
    assert dev.get(f"/api/v1/integrations/{world.shop.name}/").status_code == 200


def test_auditors_and_platform_admins_see_every_team(world, teams):
    for role in ("auditors", "platform-admins"):
        user = User.objects.create_user(f"wide-{role}")
        user.groups.add(Group.objects.get(name=role))
        _, plain = token_create(name="t", kind="personal", user=user, actor=SYSTEM)
        names = {item["name"] for item in Caller(role, plain).get("/api/v1/integrations/").json()}
        assert {world.shop.name, world.other.name} <= names, role


def test_a_person_removed_from_the_provider_group_loses_the_team_at_their_next_sign_in_and_their_token_at_once(
    world, teams
):
    user, dev = sso_person("erin", "payments-devs")
    assert dev.get(f"/api/v1/integrations/{world.shop.name}/").status_code == 200
    sign_in_record(user, method="sso", issuer="https://idp.example.com", subject="sub-erin", groups=["cards-devs"])
    assert dev.get(f"/api/v1/integrations/{world.shop.name}/").status_code == 404
    assert dev.get(f"/api/v1/integrations/{world.other.name}/").status_code == 200


def test_the_roles_section_gives_org_wide_roles_from_provider_groups_and_takes_them_away(world, teams):
    from ci_integrations.models import RoleGrant

    RoleGrant.objects.create(oidc_group="audit", role=Group.objects.get(name="auditors"))
    user, _ = sso_person("ava", "audit")
    assert user.groups.filter(name="auditors").exists()
    assert PersonIdentity.objects.get(user=user).groups == ["audit"]
    sign_in_record(user, method="sso", issuer="https://idp.example.com", subject="sub-ava", groups=[])
    assert not user.groups.filter(name="auditors").exists()


def test_a_team_member_without_a_role_may_request_the_teams_promotions_but_not_another_teams(world, teams):
    _, dev = sso_person("fred", "payments-devs")
    world.push(world.dev, "v9")
    artifact, _, _ = artifact_register(integration=world.shop, env="dev", tag="v9", actor=SYSTEM)
    body = {"integration": world.shop.name, "artifact": artifact.digest, "to_env": "staging"}
    assert dev.post("/api/v1/promotions/", body).status_code == 201
    body["integration"] = world.other.name
    assert dev.post("/api/v1/promotions/", body).status_code == 404


def test_release_managers_of_the_team_approve_a_team_relative_step_and_others_cannot(world, teams):
    promotion = pending_prod_promotion(world)
    _, member = sso_person("gus", "payments-devs")
    _, other_lead = sso_person("hal", "cards-leads")
    _, lead = sso_person("ivy", "payments-leads")
    approve = f"/api/v1/promotions/{promotion.pk}/approve/"
    assert member.post(approve, {"comment": "ok"}).status_code == 403
    assert other_lead.post(approve, {"comment": "ok"}).status_code == 404
    answer = lead.post(approve, {"comment": "ok"})
    assert answer.status_code == 200, answer.content
    assert Promotion.objects.get(pk=promotion.pk).approvals.get().user.username == "ivy"


def test_a_team_relative_step_appears_in_the_inbox_of_the_teams_release_managers_only(world, teams):
    from ci_integrations.selectors import approvals_waiting_for

    promotion = pending_prod_promotion(world)
    lead, _ = sso_person("jo", "payments-leads")
    other_lead, _ = sso_person("kim", "cards-leads")
    assert [p.pk for p in approvals_waiting_for(lead)] == [promotion.pk]
    assert approvals_waiting_for(other_lead) == []


def test_ci_tokens_for_an_integration_are_made_by_its_teams_release_managers(world, teams):
    lead, _ = sso_person("lee", "payments-leads")
    token, _ = token_create(
        name="payments-ci", kind="ci", integrations=[world.shop], owner=lead, actor=Actor.for_user(lead)
    )
    assert token.owner == lead
    with pytest.raises(NotAllowed, match=f"may not make CI tokens for {world.other.name}"):
        token_create(name="cards-ci", kind="ci", integrations=[world.other], owner=lead, actor=Actor.for_user(lead))


def test_a_person_outside_the_team_does_not_see_its_audit_entries(world, teams):
    audit_record(actor="tests", action="test.shop", integration=world.shop.name)
    audit_record(actor="tests", action="test.other", integration=world.other.name)
    _, dev = sso_person("max", "payments-devs")
    seen = {entry["integration"] for entry in dev.get("/api/v1/audit/").json()["results"]}
    assert world.shop.name in seen and world.other.name not in seen


def test_a_local_member_listed_in_the_config_file_is_in_the_team(world, teams):
    user = User.objects.create_user("local-nia")
    _, plain = token_create(name="t", kind="personal", user=user, actor=SYSTEM)
    caller = Caller("nia", plain)
    assert caller.get(f"/api/v1/integrations/{world.shop.name}/").status_code == 404
    teams[0].members.add(user)
    assert caller.get(f"/api/v1/integrations/{world.shop.name}/").status_code == 200
