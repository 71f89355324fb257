"""Teams: who is in which team, and what that lets a person see and do.

A person is a member of a team when a local user name of theirs is listed in the team's `members`, or when the
identity provider gave them, at their last sign-in, one of the team's `oidc_groups` or `release_manager_groups`.
A team's release managers are the people in its `release_manager_groups`, and local members who hold the
org-wide release-managers role. Rights are read at every request, so a personal token acts with its owner's rights
of now: a person removed from a group at the provider loses the team at their next sign-in, and so do their tokens.

Who sees everything: superusers, auditors and platform admins. An integration that no team owns is open to everyone
with a role, as before teams existed.
"""

from __future__ import annotations

from django.db.models import Q

from ci_integrations.models import Integration, PersonIdentity, Team

ROLE_AUDITORS = "auditors"
ROLE_RELEASE_MANAGERS = "release-managers"
ROLE_PLATFORM_ADMINS = "platform-admins"
ROLES = (ROLE_AUDITORS, ROLE_RELEASE_MANAGERS, ROLE_PLATFORM_ADMINS)
# The config file's names for the roles of its `roles:` section.
ROLE_KEYS = {
    "auditors": ROLE_AUDITORS,
    "release_managers": ROLE_RELEASE_MANAGERS,
    "platform_admins": ROLE_PLATFORM_ADMINS,
}


def _role_names(user) -> set[str]:
    cached = getattr(user, "_p2p_role_names", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._p2p_role_names = cached
    return cached


def has_role(user, role: str) -> bool:
    return bool(user and user.is_active and (user.is_superuser or role in _role_names(user)))


def sees_every_team(user) -> bool:
    """Superusers, auditors and platform admins see every integration, whatever its team."""
    return bool(
        user and user.is_active and (user.is_superuser or _role_names(user) & {ROLE_AUDITORS, ROLE_PLATFORM_ADMINS})
    )


def _provider_groups(user) -> list[str]:
    cached = getattr(user, "_p2p_provider_groups", None)
    if cached is None:
        identity = PersonIdentity.objects.filter(user=user).only("groups").first()
        cached = list(identity.groups) if identity else []
        user._p2p_provider_groups = cached
    return cached


def _memberships(user) -> tuple[set[int], set[int]]:
    """(teams the person is in, teams they manage releases for), read once per request. Teams are few, so the group
    lists are matched here rather than with JSON lookups that SQLite lacks."""
    if not user or not user.is_authenticated or not user.is_active:
        return set(), set()
    cached = getattr(user, "_p2p_memberships", None)
    if cached is None:
        groups = set(_provider_groups(user))
        local = set(Team.members.through.objects.filter(user_id=user.pk).values_list("team_id", flat=True))
        member, managed = set(local), set(local) if has_role(user, ROLE_RELEASE_MANAGERS) else set()
        if groups:
            for team_id, oidc_groups, manager_groups in Team.objects.values_list(
                "pk", "oidc_groups", "release_manager_groups"
            ):
                if groups & set(manager_groups):
                    member.add(team_id)
                    managed.add(team_id)
                elif groups & set(oidc_groups):
                    member.add(team_id)
        cached = (member, managed)
        user._p2p_memberships = cached
    return cached


def team_ids_of(user) -> set[int]:
    """The teams the person is a member of (release managers included)."""
    return _memberships(user)[0]


def managed_team_ids_of(user) -> set[int]:
    """The teams the person manages releases for."""
    return _memberships(user)[1]


def is_member(user, integration: Integration) -> bool:
    """Whether the person belongs to the integration's team (always true for an integration no team owns)."""
    return integration.team_id is None or integration.team_id in team_ids_of(user)


def is_release_manager(user, integration: Integration) -> bool:
    """Whether the person manages releases for the integration's team (for an integration no team owns: whether they
    hold the org-wide release-managers role)."""
    if integration.team_id is None:
        return has_role(user, ROLE_RELEASE_MANAGERS)
    return integration.team_id in managed_team_ids_of(user)


def sees_integration(user, integration: Integration) -> bool:
    return sees_every_team(user) or is_member(user, integration)


def visible_integrations_q(user, prefix: str = "") -> Q:
    """A filter on integrations (or, with `prefix` such as "integration__", on what belongs to them) keeping those the
    person may see."""
    if sees_every_team(user):
        return Q()
    return Q(**{f"{prefix}team__isnull": True}) | Q(**{f"{prefix}team_id__in": team_ids_of(user)})


def forget_cached_rights(user) -> None:
    """Drop what this request has read of the person's roles and teams (after a sign-in changed them)."""
    for name in ("_p2p_role_names", "_p2p_provider_groups", "_p2p_memberships", "_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(name, None)
