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

import functools
import json
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import BaseBackend, ModelBackend
from django.db.models import Exists, OuterRef, Q, Subquery

from ci_integrations.models import Integration, PersonIdentity, Team

ROLE_AUDITORS = "auditors"
ROLE_RELEASE_MANAGERS = "release-managers"
ROLE_PLATFORM_ADMINS = "platform-admins"
ROLES = (ROLE_AUDITORS, ROLE_RELEASE_MANAGERS, ROLE_PLATFORM_ADMINS)


@dataclass(frozen=True)
class _Standing:
    """What a person's roles and teams are, read in one query per request (two when they are in a team)."""

    roles: frozenset[str]
    teams: frozenset[int]
    managed_teams: frozenset[int]


NOBODY = _Standing(frozenset(), frozenset(), frozenset())


def _standing(user) -> _Standing:
    """The person's roles and teams. Teams are few, so their group lists are matched here rather than with JSON
    lookups that SQLite lacks."""
    if not user or not user.is_authenticated or not user.is_active:
        return NOBODY
    cached = getattr(user, "_p2p_standing", None)
    if cached is not None:
        return cached
    user_groups = user.groups.through.objects.filter(user_id=OuterRef("pk"))
    row = (
        get_user_model()
        .objects.filter(pk=user.pk)
        .annotate(
            provider_groups=Subquery(PersonIdentity.objects.filter(user_id=OuterRef("pk")).values("groups")[:1]),
            in_a_team=Exists(Team.members.through.objects.filter(user_id=OuterRef("pk"))),
            **{f"role_{index}": Exists(user_groups.filter(group__name=role)) for index, role in enumerate(ROLES)},
        )
        .values("provider_groups", "in_a_team", *(f"role_{index}" for index in range(len(ROLES))))
        .first()
    ) or {}
    roles = frozenset(role for index, role in enumerate(ROLES) if row.get(f"role_{index}"))
    groups = set(_json_list(row.get("provider_groups")))
    member: set[int] = set()
    managed: set[int] = set()
    if groups or row.get("in_a_team"):
        local = set(Team.members.through.objects.filter(user_id=user.pk).values_list("team_id", flat=True))
        member |= local
        if user.is_superuser or ROLE_RELEASE_MANAGERS in roles:
            managed |= local
        if groups:
            for team_id, oidc_groups, manager_groups in Team.objects.values_list(
                "pk", "oidc_groups", "release_manager_groups"
            ):
                if groups & set(manager_groups):
                    member.add(team_id)
                    managed.add(team_id)
                elif groups & set(oidc_groups):
                    member.add(team_id)
    standing = _Standing(roles, frozenset(member), frozenset(managed))
    user._p2p_standing = standing
    return standing


def _json_list(value) -> list:
    """A JSON list read through an annotation (SQLite hands back its text, PostgreSQL the list)."""
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, list) else []


def has_role(user, role: str) -> bool:
    return bool(user and user.is_active and (user.is_superuser or role in _standing(user).roles))


def sees_every_team(user) -> bool:
    """Superusers, auditors and platform admins see every integration, whatever its team."""
    return bool(
        user and user.is_active and (user.is_superuser or _standing(user).roles & {ROLE_AUDITORS, ROLE_PLATFORM_ADMINS})
    )


def team_ids_of(user) -> set[int]:
    """The teams the person is a member of (release managers included)."""
    return _standing(user).teams


def managed_team_ids_of(user) -> set[int]:
    """The teams the person manages releases for."""
    return _standing(user).managed_teams


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
    for name in ("_p2p_standing", "_perm_cache", "_group_perm_cache"):
        if hasattr(user, name):
            delattr(user, name)


# --- rights ----------------------------------------------------------------------------------------------------------

REQUEST = "ci_integrations.request_promotion"
APPROVE = "ci_integrations.approve_promotion"
MAKE_CI_TOKENS = "ci_integrations.add_ci_token"


def holds_org_wide(user, permission: str) -> bool:
    """Whether the person holds `permission` through their roles (groups) or as superuser, not through a team."""
    return bool(user and user.is_active and ModelBackend().has_perm(user, permission))


def may_request_for(user, integration: Integration) -> bool:
    """Requesting, cancelling and retrying an integration's promotions: its team's members, and people who hold the
    right org-wide and see every team; for an integration no team owns, whoever holds the right org-wide."""
    if integration.team_id is None:
        return holds_org_wide(user, REQUEST)
    return integration.team_id in team_ids_of(user) or (sees_every_team(user) and holds_org_wide(user, REQUEST))


def may_make_ci_tokens_for(user, integration: Integration) -> bool:
    """Making CI tokens for an integration: its team's release managers, and whoever may make CI tokens org-wide
    (platform admins)."""
    if holds_org_wide(user, MAKE_CI_TOKENS):
        return True
    return integration.team_id is not None and integration.team_id in managed_team_ids_of(user)


class TeamPermissionBackend(BaseBackend):
    """The permissions that team membership gives, for Django's permission checks: members may view and request,
    release managers may also approve and make tokens. Which integrations it applies to is narrowed per object by
    the functions above (services call them); this backend only opens the door that roles would otherwise keep shut.
    """

    def get_all_permissions(self, user_obj, obj=None) -> set[str]:
        if obj is not None or not user_obj.is_active or user_obj.is_anonymous:
            return set()
        standing = _standing(user_obj)
        if not standing.teams:
            return set()
        return set(_manager_permissions() if standing.managed_teams else _member_permissions())


@functools.cache
def _member_permissions() -> frozenset[str]:
    """What a team's member may do anywhere the per-integration checks allow: view everything, request promotions."""
    from django.apps import apps

    views = {
        f"ci_integrations.view_{model._meta.model_name}"
        for model in apps.get_app_config("ci_integrations").get_models()
    }
    return frozenset({*views, REQUEST})


@functools.cache
def _manager_permissions() -> frozenset[str]:
    """A team's release managers may also approve and make tokens."""
    return _member_permissions() | {APPROVE, "ci_integrations.add_apitoken", MAKE_CI_TOKENS}
