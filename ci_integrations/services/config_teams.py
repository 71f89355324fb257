"""The config file's `teams:` and `roles:` sections: reading them, applying them and writing them back.

```yaml
teams:
  - name: payments
    oidc_groups: [payments-devs]          # members
    release_managers: [payments-leads]    # provider groups whose members manage releases for this team
    members: [alice]                      # local users, for installations without single sign-on
    integrations: [payments-api, ledger]
roles:                                    # org-wide roles from provider groups
  auditors: [audit]
  platform_admins: [platform]
  release_managers: [release]
```

A section the file leaves out is left as it is; a section it lists is the whole truth for what it names: a team's
members and integrations become what the file lists, and `roles:` replaces every grant.

May import: models, config_reader, audit, actors, teams.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from ci_integrations.models import Integration, RoleGrant, Team
from ci_integrations.services.teams import ROLE_AUDITORS, ROLE_PLATFORM_ADMINS, ROLE_RELEASE_MANAGERS

TEAM_KEYS = {"name", "oidc_groups", "release_managers", "members", "integrations"}
# The config file's names for the role groups.
ROLE_KEYS = {
    "auditors": ROLE_AUDITORS,
    "release_managers": ROLE_RELEASE_MANAGERS,
    "platform_admins": ROLE_PLATFORM_ADMINS,
}


def read_teams(reader, integrations: dict) -> dict[str, dict] | None:
    """The file's teams by name (None when the file has no `teams:` section). An integration must exist (in the file
    or the database) and belong to one team only; a local member must be a user."""
    if "teams" not in reader.data:
        return None
    known_integrations = set(integrations) | set(Integration.objects.values_list("name", flat=True))
    owner_of: dict[str, str] = {}
    found: dict[str, dict] = {}
    for path, item in reader.items("teams"):
        reader.known_keys(path, item, TEAM_KEYS)
        name = reader.unique_name(f"{path}.name", item.get("name"), found, "team")
        groups = _names(reader, f"{path}.oidc_groups", item.get("oidc_groups"))
        managers = _names(reader, f"{path}.release_managers", item.get("release_managers"))
        members = _names(reader, f"{path}.members", item.get("members"))
        users = dict(get_user_model().objects.filter(username__in=members).values_list("username", "pk"))
        for index, member in enumerate(members):
            if member not in users:
                reader.problem(f"{path}.members[{index}]", f"unknown user {member!r}")
        owned = _names(reader, f"{path}.integrations", item.get("integrations"))
        for index, integration in enumerate(owned):
            where = f"{path}.integrations[{index}]"
            if integration not in known_integrations:
                reader.problem(where, f"unknown integration {integration!r}")
            elif integration in owner_of:
                reader.problem(where, f"integration {integration!r} is already in team {owner_of[integration]!r}")
            else:
                owner_of[integration] = name or ""
        if name:
            found[name] = {
                "oidc_groups": groups,
                "release_manager_groups": managers,
                "members": [users[m] for m in members if m in users],
                "integrations": owned,
            }
    return found


def read_roles(reader) -> dict[str, list[str]] | None:
    """The file's `roles:` section as role group name → provider groups (None when the file has none)."""
    if "roles" not in reader.data:
        return None
    section = reader.mapping("roles", reader.data.get("roles"))
    reader.known_keys("roles", section, set(ROLE_KEYS))
    return {
        ROLE_KEYS[key]: _names(reader, f"roles.{key}", groups) for key, groups in section.items() if key in ROLE_KEYS
    }


def _names(reader, path: str, value) -> list[str]:
    """A list of non-empty strings, each listed once."""
    names: list[str] = []
    for index, item in enumerate(reader.listed(path, value)):
        if not isinstance(item, str) or not item.strip():
            reader.problem(f"{path}[{index}]", f"{item!r} must be a non-empty name")
        elif item in names:
            reader.problem(f"{path}[{index}]", f"{item!r} is listed twice")
        else:
            names.append(item)
    return names


def apply_teams(applier, teams: dict[str, dict]) -> None:
    """Write each team, its members and which integrations it owns (integrations it no longer lists lose it)."""
    for name, spec in teams.items():
        team = applier.sync(
            Team,
            {"name": name},
            {"oidc_groups": spec["oidc_groups"], "release_manager_groups": spec["release_manager_groups"]},
            f"team {name}",
        )
        wanted_members = set(spec["members"])
        if set(team.members.values_list("pk", flat=True)) != wanted_members:
            team.members.set(wanted_members)
            usernames = sorted(
                get_user_model().objects.filter(pk__in=wanted_members).values_list("username", flat=True)
            )
            applier.changed(team, f"~ team {name} (members: {', '.join(usernames) or 'none'})", {"members": usernames})
        owned = set(team.integrations.values_list("name", flat=True))
        wanted = set(spec["integrations"])
        if owned != wanted:
            Integration.objects.filter(team=team).exclude(name__in=wanted).update(team=None)
            Integration.objects.filter(name__in=wanted).update(team=team)
            applier.changed(
                team,
                f"~ team {name} (integrations: {', '.join(sorted(wanted)) or 'none'})",
                {"integrations": sorted(wanted), "before": sorted(owned)},
            )


def apply_roles(applier, roles: dict[str, list[str]]) -> None:
    """Replace the grants of each role the section names by the groups it lists."""
    for role_name, groups in sorted(roles.items()):
        role = Group.objects.get(name=role_name)
        have = set(RoleGrant.objects.filter(role=role).values_list("oidc_group", flat=True))
        if have == set(groups):
            continue
        RoleGrant.objects.filter(role=role).exclude(oidc_group__in=groups).delete()
        RoleGrant.objects.bulk_create([RoleGrant(role=role, oidc_group=group) for group in groups if group not in have])
        applier.changed(
            None, f"~ role {role_name} (groups: {', '.join(groups) or 'none'})", {"role": role_name, "groups": groups}
        )


def export_teams() -> list[dict]:
    teams = []
    for team in Team.objects.prefetch_related("members", "integrations").order_by("name"):
        item: dict = {"name": team.name}
        if team.oidc_groups:
            item["oidc_groups"] = list(team.oidc_groups)
        if team.release_manager_groups:
            item["release_managers"] = list(team.release_manager_groups)
        members = sorted(user.get_username() for user in team.members.all())
        if members:
            item["members"] = members
        item["integrations"] = sorted(integration.name for integration in team.integrations.all())
        teams.append(item)
    return teams


def export_roles() -> dict[str, list[str]]:
    names = {role: key for key, role in ROLE_KEYS.items()}
    roles: dict[str, list[str]] = {}
    for grant in RoleGrant.objects.select_related("role").order_by("role__name", "oidc_group"):
        roles.setdefault(names.get(grant.role.name, grant.role.name), []).append(grant.oidc_group)
    return roles
