"""API tokens: creation, authentication, revocation.

Format: ``p2p_<key id>_<secret>_<checksum>``, all base62, e.g. ``p2p_3fK9x2LmQa7B_<22 chars>_<6 chars>``.

- the key id (12 characters, ~71 bits) finds the row; it is not secret and appears in the admin and the audit log;
- the secret is 128 bits from `secrets`; only HMAC-SHA256(pepper, secret) is stored, with the pepper's id so a
  new pepper can be prepended to P2P_TOKEN_PEPPERS while older tokens keep verifying;
- the checksum is the CRC32 of everything before it, so a mistyped or truncated token is refused before any database
  lookup, and secret scanners can recognise a real token by prefix + checksum.

The plain token exists only in the return value of `token_create`; nothing here logs it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ci_integrations.input_rules import control_character
from ci_integrations.models import ApiToken
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.errors import InvalidInput, NotAllowed, StateConflict
from ci_integrations.services.rows import columns, fetch_one, table
from ci_integrations.services.teams import may_make_ci_tokens_for

PREFIX = "p2p"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LENGTH = 12
SECRET_BITS = 128
SECRET_LENGTH = 22  # 62**22 > 2**128
CHECKSUM_LENGTH = 6  # 62**6 > 2**32
TOKEN_RE = re.compile(
    rf"^{PREFIX}_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})_([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)

SCOPE_READ = "read"
SCOPE_ARTIFACTS_WRITE = "artifacts:write"
SCOPE_CHECKS_WRITE = "checks:write"
SCOPE_PROMOTIONS_REQUEST = "promotions:request"
SCOPE_PROMOTIONS_APPROVE = "promotions:approve"
CI_SCOPES = (SCOPE_READ, SCOPE_ARTIFACTS_WRITE, SCOPE_CHECKS_WRITE, SCOPE_PROMOTIONS_REQUEST)
PERSONAL_SCOPES = (*CI_SCOPES, SCOPE_PROMOTIONS_APPROVE)
# last_used_at is a hint for people, not an access log: one write a minute per token keeps the hot path read-only.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenInvalid(Exception):
    """The token cannot be used; the message says why (malformed, unknown, revoked, expired) without echoing it."""


@dataclass(frozen=True)
class Pepper:
    id: str
    secret: bytes


def _peppers() -> list[Pepper]:
    peppers = []
    for item in settings.P2P_TOKEN_PEPPERS:
        pepper_id, sep, secret = item.partition("=")
        if not sep or not pepper_id.strip() or not secret:
            raise ValueError("P2P_TOKEN_PEPPERS entries must look like id=pepper")
        peppers.append(Pepper(pepper_id.strip(), secret.encode()))
    if not peppers:
        raise ValueError("P2P_TOKEN_PEPPERS is empty")
    return peppers


def _base62(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(ALPHABET[rest])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def _secret_hash(pepper: Pepper, secret: str) -> str:
    return hmac.new(pepper.secret, secret.encode(), hashlib.sha256).hexdigest()


def token_format(key_id: str, secret: str) -> str:
    body = f"{PREFIX}_{key_id}_{secret}"
    return f"{body}_{_checksum(body)}"


def token_parse(raw: str) -> tuple[str, str]:
    """(key id, secret) of a well-formed token whose checksum holds; no database access."""
    match = TOKEN_RE.match(raw or "")
    if not match:
        raise TokenInvalid("malformed token: expected p2p_<key id>_<secret>_<checksum>")
    key_id, secret, checksum = match.groups()
    if not hmac.compare_digest(_checksum(f"{PREFIX}_{key_id}_{secret}"), checksum):
        raise TokenInvalid("token checksum does not match: it was mistyped or truncated")
    return key_id, secret


def _check_scopes(kind: str, scopes) -> list[str]:
    allowed = CI_SCOPES if kind == ApiToken.Kind.CI else PERSONAL_SCOPES
    scopes = list(dict.fromkeys(scopes or allowed))
    unknown = [scope for scope in scopes if scope not in allowed]
    if unknown:
        raise InvalidInput(
            f"scopes not allowed for a {kind} token: {', '.join(unknown)} (allowed: {', '.join(allowed)})",
            details={"scopes": unknown},
        )
    return scopes


def token_create(
    *,
    name: str,
    kind: str,
    actor: Actor,
    user=None,
    owner=None,
    system: bool = False,
    integrations=(),
    scopes=(),
    expires_at: datetime | None = None,
    ci_identity: dict | None = None,
    triggered_by=None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its plain text, which is never stored and cannot be shown again.

    CI tokens need at least one integration and take scopes from CI_SCOPES (all of them when none are given). Each
    has an `owner`, the person it answers for, unless it is made as a `system` token that no person owns. A person
    needs the add_ci_token permission to make one. CI tokens expire: by default, and at the latest, after
    P2P_CI_TOKEN_MAX_AGE. Personal tokens need a user, act with that user's permissions, and may also carry
    promotions:approve.

    A CI token exchanged for a CI job's ID token (services/oidc_exchange.py) is a system token that records the job's
    `ci_identity` and, when known, the person who `triggered_by` the run; it is audited as token.exchanged.
    """
    if kind not in ApiToken.Kind.values:
        raise InvalidInput(f"unknown token kind {kind!r}", details={"kind": "use ci or personal"})
    name = (name or "").strip()
    if not name or len(name) > 120 or control_character(name) is not None:
        raise InvalidInput("a token needs a name of 1 to 120 printable characters", details={"name": "invalid"})
    integrations = list(integrations)
    if kind == ApiToken.Kind.CI:
        _check_ci_token(actor=actor, user=user, owner=owner, system=system, integrations=integrations)
        expires_at = _ci_token_expiry(expires_at)
    elif user is None:
        raise InvalidInput("a personal token needs a user", details={"user": "required"})
    elif integrations:
        raise InvalidInput("a personal token sees what its user sees", details={"integrations": "not allowed"})
    elif owner is not None or system:
        raise InvalidInput("a personal token acts as its user; only CI tokens have owners", details={"owner": "no"})
    scopes = _check_scopes(kind, scopes)
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("the expiry is in the past", details={"expires_at": "must be in the future"})

    pepper = _peppers()[0]
    secret = _base62(secrets.randbits(SECRET_BITS), SECRET_LENGTH)
    with transaction.atomic():
        token = ApiToken.objects.create(
            key_id=_base62(secrets.randbits(KEY_ID_LENGTH * 6), KEY_ID_LENGTH),
            name=name,
            kind=kind,
            user=user,
            scopes=scopes,
            secret_hash=_secret_hash(pepper, secret),
            pepper_id=pepper.id,
            owner=owner,
            made_by=actor.person,
            created_by=actor.label,
            expires_at=expires_at,
            ci_identity=ci_identity or {},
            triggered_by=triggered_by,
        )
        if integrations:
            token.integrations.set(integrations)
        exchanged = {}
        if ci_identity:
            exchanged = {
                "ci_identity": ci_identity,
                "triggered_by": triggered_by.get_username() if triggered_by else None,
            }
        audit_record(
            actor=actor,
            action="token.exchanged" if ci_identity else "token.created",
            obj=token,
            after={
                "key_id": token.key_id,
                "name": token.name,
                "kind": token.kind,
                "user": user.get_username() if user else None,
                "owner": owner.get_username() if owner else None,
                "system": kind == ApiToken.Kind.CI and owner is None,
                "integrations": sorted(i.name for i in integrations),
                "scopes": scopes,
                "expires_at": expires_at,
                **exchanged,
            },
            integration=integrations[0].name if len(integrations) == 1 else "",
        )
    return token, token_format(token.key_id, secret)


def _check_ci_token(*, actor: Actor, user, owner, system: bool, integrations: list) -> None:
    """Who may make a CI token, and for whom: a person needs add_ci_token; a token answers for an active owner,
    unless it is a system token."""
    if actor.is_ci_token or (actor.user is not None and actor.person is None):
        raise NotAllowed(f"{actor.label} may not create CI tokens")
    if actor.person is not None and not actor.person.has_perm("ci_integrations.add_ci_token"):
        raise NotAllowed(
            f"{actor.person.get_username()} may not create CI tokens (needs the add_ci_token permission)",
            details={"required_permission": "ci_integrations.add_ci_token"},
        )
    if actor.person is not None:
        refused = [i.name for i in integrations if not may_make_ci_tokens_for(actor.person, i)]
        if refused:
            raise NotAllowed(
                f"{actor.person.get_username()} may not make CI tokens for {', '.join(refused)}: that is for the "
                "release managers of its team and for platform admins",
                details={"integrations": refused},
            )
    if user is not None:
        raise InvalidInput("a CI token acts for integrations, not for a user", details={"user": "not allowed"})
    if not integrations:
        raise InvalidInput("a CI token needs at least one integration", details={"integrations": "required"})
    if system and owner is not None:
        raise InvalidInput("a system token has no owner", details={"owner": "not allowed"})
    if not system and owner is None:
        raise InvalidInput(
            "a CI token needs an owner, the person it answers for (or make a system token, which no person owns)",
            details={"owner": "required"},
        )
    if owner is not None and not owner.is_active:
        raise InvalidInput(f"{owner.get_username()} is inactive and cannot own a token", details={"owner": "inactive"})


def _ci_token_expiry(expires_at: datetime | None) -> datetime:
    """CI tokens expire: after P2P_CI_TOKEN_MAX_AGE by default, and never later."""
    latest = timezone.now() + settings.P2P_CI_TOKEN_MAX_AGE
    if expires_at is None:
        return latest
    if expires_at > latest + timedelta(minutes=1):  # a minute's slack for the time the request took
        raise InvalidInput(
            f"CI tokens live at most {settings.P2P_CI_TOKEN_MAX_AGE.days} days (P2P_CI_TOKEN_MAX_AGE)",
            details={"expires_at": "too far"},
        )
    return expires_at


def token_authenticate(raw: str) -> ApiToken:
    """The active token `raw` stands for, or TokenInvalid saying why not (never echoing the token)."""
    key_id, secret = token_parse(raw)
    token = _token_with_user(key_id)
    pepper = next((p for p in _peppers() if token and p.id == token.pepper_id), None)
    # Compare even when the row or pepper is missing, so timing says nothing about which key ids exist.
    expected = token.secret_hash if token and pepper else "0" * 64
    matches = hmac.compare_digest(_secret_hash(pepper or _peppers()[0], secret), expected)
    if token is None or pepper is None or not matches:
        raise TokenInvalid("unknown token")
    now = timezone.now()
    if token.revoked_at is not None:
        raise TokenInvalid(f"token {token.key_id} was revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenInvalid(f"token {token.key_id} expired at {token.expires_at:%Y-%m-%d %H:%M} UTC")
    if token.user_id is not None and not token.user.is_active:
        raise TokenInvalid(f"the user of token {token.key_id} is inactive")
    if token.owner_id is not None and not token.owner.is_active:
        raise TokenInvalid(f"the owner of token {token.key_id} is inactive")
    _token_touch(token, now)
    return token


def _token_with_user(key_id: str) -> ApiToken | None:
    """The token row with its user (personal tokens) and its owner (CI tokens) joined: every API request runs this,
    so plain SQL."""
    user_model = get_user_model()
    pk = user_model._meta.pk.column
    found = fetch_one(
        f"SELECT {columns(ApiToken, 't')}, {columns(user_model, 'u')}, {columns(user_model, 'o')} "
        f"FROM {table(ApiToken)} t LEFT JOIN {table(user_model)} u ON u.{pk} = t.user_id "
        f"LEFT JOIN {table(user_model)} o ON o.{pk} = t.owner_id WHERE t.key_id = %s",
        [key_id],
        [(ApiToken, "t"), (user_model, "u"), (user_model, "o")],
    )
    if found is None:
        return None
    token, user, owner = found
    token.user, token.owner = user, owner
    return token


def _token_touch(token: ApiToken, now: datetime) -> None:
    """Record use at most once a minute; the conditional update means concurrent requests write once."""
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    stale = now - LAST_USED_RESOLUTION
    ApiToken.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=token.pk).update(
        last_used_at=now
    )
    token.last_used_at = now


def token_revoke(*, token: ApiToken, actor: Actor) -> ApiToken:
    """Revoke a token for good; revoking twice is a conflict so scripts notice a typo'd key id."""
    with transaction.atomic():
        now = timezone.now()
        won = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
        if not won:
            raise StateConflict(f"token {token.key_id} is already revoked")
        token.revoked_at = now
        audit_record(
            actor=actor,
            action="token.revoked",
            obj=token,
            before={"key_id": token.key_id, "name": token.name, "kind": token.kind},
        )
    return token
