"""The config file's `teams:` and `roles:` sections: applied, checked with path-naming errors, exported back."""

import io

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from ci_integrations.models import AuditEntry, Integration, RoleGrant, Team, WorkflowStep
from ci_integrations.services.config import config_dump, config_export
from tests.foundation.conftest import EXAMPLE_CONFIG
from tests.support.roles import restore_roles

TEAMS = """
  - name: ledger
    kind: environment
    workflow: standard
    buckets:
      - {env: qa, registry: qa, repository: team/ledger}
      - {env: staging, registry: qa, repository: staging/ledger}
      - {env: prod, registry: prod, repository: payments/ledger}
teams:
  - name: payments
    oidc_groups: [payments-devs]
    release_managers: [payments-leads]
    members: [alice]
    integrations: [payments-api, ledger]
roles:
  auditors: [audit]
  platform_admins: [platform]
"""


def with_teams(extra: str = TEAMS, config: str = EXAMPLE_CONFIG) -> str:
    return config.rstrip("\n") + "\n" + extra.lstrip("\n")


def apply(path: str) -> str:
    out = io.StringIO()
    call_command("apply_config", path, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def refused(path: str) -> str:
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("apply_config", path, stdout=io.StringIO(), stderr=err)
    return err.getvalue()


@pytest.fixture
def alice(db):
    restore_roles()
    return User.objects.create_user("alice")


def test_a_team_owns_its_integrations_and_lists_its_groups_and_local_members(alice, config_file):
    out = apply(config_file(with_teams()))
    team = Team.objects.get(name="payments")
    assert "+ team payments" in out
    assert team.oidc_groups == ["payments-devs"] and team.release_manager_groups == ["payments-leads"]
    assert list(team.members.all()) == [alice]
    assert set(Integration.objects.filter(team=team).values_list("name", flat=True)) == {"payments-api", "ledger"}
    assert set(RoleGrant.objects.values_list("oidc_group", "role__name")) == {
        ("audit", "auditors"),
        ("platform", "platform-admins"),
    }
    assert AuditEntry.objects.filter(action="config.update", after__integrations=["ledger", "payments-api"]).exists()


def test_applying_the_same_teams_twice_changes_nothing(alice, config_file):
    path = config_file(with_teams())
    apply(path)
    entries = AuditEntry.objects.count()
    again = apply(path)
    assert "team" not in again and "role" not in again
    assert AuditEntry.objects.count() == entries


def test_an_integration_the_team_no_longer_lists_leaves_the_team(alice, config_file):
    apply(config_file(with_teams()))
    apply(config_file(with_teams(TEAMS.replace("[payments-api, ledger]", "[ledger]"))))
    assert Integration.objects.get(name="payments-api").team is None
    assert Integration.objects.get(name="ledger").team.name == "payments"


def test_an_unknown_integration_and_a_name_in_two_teams_are_refused_with_their_paths(alice, config_file):
    extra = (
        TEAMS
        + """
  - name: cards
    integrations: [ledger, nowhere]
"""
    )
    extra = extra.replace("roles:\n  auditors: [audit]\n  platform_admins: [platform]\n", "")
    extra += "roles:\n  auditors: [audit]\n"
    err = refused(config_file(with_teams(extra)))
    assert "teams[1].integrations[0]: integration 'ledger' is already in team 'payments'" in err
    assert "teams[1].integrations[1]: unknown integration 'nowhere'" in err
    assert not Team.objects.exists()


def test_an_unknown_local_member_and_an_unknown_role_are_refused_with_their_paths(db, config_file):
    restore_roles()
    extra = TEAMS.replace("platform_admins: [platform]", "platform_admins: [platform]\n  wizards: [magic]")
    err = refused(config_file(with_teams(extra)))
    assert "teams[0].members[0]: unknown user 'alice'" in err
    assert "roles.wizards: unknown key" in err


def test_team_relative_approvers_are_read_and_a_made_up_one_is_refused(alice, config_file):
    config = EXAMPLE_CONFIG.replace("approver_group: release-managers", 'approver_group: "@release_managers"')
    apply(config_file(config))
    step = WorkflowStep.objects.get(to_env="prod")
    assert step.approvers_from_team and step.approver_group is None
    err = refused(config_file(EXAMPLE_CONFIG.replace("approver_group: release-managers", 'approver_group: "@leads"')))
    assert "workflows[0].steps[1].approver_group: '@leads': the only team-relative group is @release_managers" in err


def test_export_writes_teams_roles_and_team_relative_approvers_back_and_applying_it_changes_nothing(alice, config_file):
    config = with_teams().replace("approver_group: release-managers", 'approver_group: "@release_managers"')
    apply(config_file(config))
    exported = config_export()
    assert exported["teams"] == [
        {
            "name": "payments",
            "oidc_groups": ["payments-devs"],
            "release_managers": ["payments-leads"],
            "members": ["alice"],
            "integrations": ["ledger", "payments-api"],
        }
    ]
    assert exported["roles"] == {"auditors": ["audit"], "platform_admins": ["platform"]}
    assert {"from": "staging", "to": "prod"}.items() <= exported["workflows"][0]["steps"][1].items()
    assert exported["workflows"][0]["steps"][1]["approver_group"] == "@release_managers"
    text = config_dump(exported)
    entries = AuditEntry.objects.count()
    apply(config_file(text))
    assert AuditEntry.objects.count() == entries
    assert yaml.safe_load(text)["teams"][0]["name"] == "payments"
