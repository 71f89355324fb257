"""Who a single sign-on is: the portal's person for the provider's (issuer, subject), made on their first sign-in.

A person is matched by the provider's issuer and subject (PersonIdentity), never by name: a user name or e-mail
address can be reused or changed at the provider, a subject cannot. A person signing on for the first time gets a
user named by the username claim (P2P_OIDC_USERNAME_CLAIM, else `email`); when that name is already someone else's,
the sign-in is refused rather than merged, except for a user an admin made for them beforehand without a password
(to give them a team or a role before they first sign in), which their first sign-in claims.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from ci_integrations.models import PersonIdentity
from ci_integrations.services.identity import sign_in_record
from ci_integrations.services.oidc_relying_party import SignOn, SignOnFailed

USERNAME_MAX = 150


def _username(claims: dict) -> str:
    claim = settings.P2P_OIDC_USERNAME_CLAIM
    for name in (claim, "email"):
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            value = value.strip()
            if len(value) > USERNAME_MAX or any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise SignOnFailed(f"The identity provider's {name!r} claim is not a usable user name.")
            return value
    raise SignOnFailed(
        f"The identity provider sent neither a {claim!r} nor an 'email' claim to name you by: "
        "add one to the client's claims, or set P2P_OIDC_USERNAME_CLAIM.",
        code="no_username_claim",
    )


def sso_groups(claims: dict) -> list[str]:
    """The provider groups in the groups claim (a list, or one string); none when P2P_OIDC_GROUPS_CLAIM is empty."""
    claim = settings.P2P_OIDC_GROUPS_CLAIM
    if not claim:
        return []
    if claim in (claims.get("_claim_names") or {}):
        raise SignOnFailed(
            f"The identity provider left the {claim!r} claim out because you are in too many groups (the groups "
            "overage of Entra ID): limit the client's groups claim to the groups assigned to the application.",
            code="groups_overage",
        )
    value = claims.get(claim)
    if value is None:
        raise SignOnFailed(
            f"The identity provider sent no {claim!r} claim, so the portal cannot tell your roles and teams: add a "
            f"groups claim to the client at the provider (README: single sign-on), or set P2P_OIDC_GROUPS_CLAIM.",
            code="no_groups_claim",
        )
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(group, str) for group in value):
        raise SignOnFailed(f"The identity provider's {claim!r} claim is not a list of group names.")
    return value


def _person_for(sign_on: SignOn, username: str):
    """The user of this (issuer, subject), or a new one named `username`."""
    User = get_user_model()
    identity = (
        PersonIdentity.objects.select_related("user").filter(issuer=sign_on.issuer, subject=sign_on.subject).first()
    )
    if identity is not None:
        return identity.user
    existing = User.objects.filter(username=username).first()
    if existing is None:
        user = User(username=username)
        user.set_unusable_password()
    elif (
        not existing.has_usable_password()
        and not existing.is_superuser
        and not PersonIdentity.objects.filter(user=existing).exclude(subject="").exists()
    ):
        user = existing  # made for this person by an admin, waiting for their first sign-in
    else:
        raise SignOnFailed(
            f"The user name {username!r} already belongs to another person of this portal (a local account or "
            "another identity), so your sign-in cannot be given it. Ask an administrator to rename or remove that "
            "user, or to make it password-less so that your sign-in takes it over.",
            code="username_taken",
        )
    user.email = str(sign_on.claims.get("email") or user.email)[:254]
    user.first_name = str(sign_on.claims.get("given_name") or user.first_name)[:150]
    user.last_name = str(sign_on.claims.get("family_name") or user.last_name)[:150]
    user.save()
    return user


def sso_sign_in(*, sign_on: SignOn, request_id: str = ""):
    """The person this single sign-on is, with their identity, roles and groups recorded (identity.sign_in_record,
    which audits `person.signed_in` with the issuer, subject and groups). SignOnFailed when it cannot be."""
    groups = sso_groups(sign_on.claims)
    username = _username(sign_on.claims)
    try:
        with transaction.atomic():
            user = _person_for(sign_on, username)
            if not user.is_active:
                raise SignOnFailed(f"The portal's user {user.get_username()!r} is deactivated.", code="inactive")
            sign_in_record(
                user,
                method=PersonIdentity.Method.SSO,
                issuer=sign_on.issuer,
                subject=sign_on.subject,
                groups=groups,
                request_id=request_id,
            )
    except IntegrityError:
        # Two first sign-ins of one person at once (two tabs): the other made the identity; this one refuses.
        raise SignOnFailed("This sign-in raced another of yours; sign in again.", code="race") from None
    return user
