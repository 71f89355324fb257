"""How people sign in: what is kept of each sign-in, and the org-wide roles the identity provider's groups give.

After a single sign-on, the groups claim decides the person's roles (through the config file's `roles:` section,
kept as RoleGrant rows) and, through services/teams.py, their teams. A person removed from a group at the provider
loses what it gave at their next sign-in; their personal tokens lose it at once, because rights are read per request.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from ci_integrations.models import PersonIdentity, RoleGrant
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.teams import ROLES, forget_cached_rights

SIGNED_IN = "person.signed_in"
# What a web session keeps of its sign-in: when (an ISO timestamp; re-entering the password or signing in again at
# the provider renews it), and how ("local" or "sso").
SESSION_SIGNED_IN_AT = "p2p_signed_in_at"
SESSION_SIGNED_IN_WITH = "p2p_signed_in_with"


def roles_from_groups(groups: Iterable[str]) -> set[str]:
    """The org-wide role names the `roles:` mapping gives to members of these provider groups."""
    return set(RoleGrant.objects.filter(oidc_group__in=list(groups)).values_list("role__name", flat=True).distinct())


def sign_in_record(
    user, *, method: str, issuer: str = "", subject: str = "", groups: Iterable[str] = (), request_id: str = ""
) -> PersonIdentity:
    """Keep how `user` just signed in, and audit it.

    A single sign-on (`method="sso"`) also replaces the person's role groups with those their provider groups give:
    the provider is the source of truth for people who sign in through it. A local sign-in leaves roles alone.
    """
    groups = sorted({str(group) for group in groups})
    with transaction.atomic():
        identity, _ = PersonIdentity.objects.update_or_create(
            user=user,
            defaults={
                "method": method,
                "issuer": issuer if method == PersonIdentity.Method.SSO else "",
                "subject": subject if method == PersonIdentity.Method.SSO else "",
                "groups": groups if method == PersonIdentity.Method.SSO else [],
                "signed_in_at": timezone.now(),
            },
        )
        after: dict = {"method": method}
        if method == PersonIdentity.Method.SSO:
            roles = roles_from_groups(groups)
            kept = user.groups.exclude(name__in=ROLES)
            user.groups.set([*kept, *Group.objects.filter(name__in=roles)])
            after.update({"issuer": issuer, "subject": subject, "groups": groups, "roles": sorted(roles)})
        audit_record(actor=Actor.for_user(user, request_id=request_id), action=SIGNED_IN, obj=user, after=after)
    forget_cached_rights(user)
    return identity
