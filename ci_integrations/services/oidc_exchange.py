"""CI signs in without a stored secret: a CI job's OIDC ID token is exchanged for a short-lived CI token.

GitHub Actions, GitLab CI and the like hand each job an ID token signed by their issuer. An integration's CI
identities (its trust policies, from the config file) say which issuer, audience and claims may have which scopes.
The exchange checks, in this order, and refuses at the first that fails, naming it:

1. format and algorithm: a signed JWT, RS256 or ES256 only (never `none`, never HS*);
2. issuer: a policy trusts `iss`, else refused without the issuer being contacted;
3. key and signature: against the issuer's JWKS (services/oidc_keys.py);
4. `exp`, `nbf`, and `iat` not in the future (with a minute of leeway for clocks);
5. audience: a trusting policy accepts one of `aud`;
6. claims: every claim of a policy matches (exact value or glob).

Every refusal is audited (token.exchange_refused) and answered 401. A success makes a CI token for the matching
integrations with the scopes their policies share, living P2P_OIDC_CI_TOKEN_MINUTES at most and never past the ID
token's `exp`, audited as token.exchanged with the job's identity. When the token's `actor` claim (GitLab:
`user_login`) is a portal user's name, that person counts as the requester of what the token requests.

The ID token itself is never stored or logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from ci_integrations.models import ApiToken, CiIdentity
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.ci_trust import claims_mismatch
from ci_integrations.services.errors import ServiceError
from ci_integrations.services.oidc_keys import ALGORITHMS, IssuerUnavailable, UnknownKey, issuer_signing_key
from ci_integrations.services.tokens import CI_SCOPES, token_create

logger = logging.getLogger(__name__)

MAX_ID_TOKEN_LENGTH = 16 * 1024
LEEWAY_SECONDS = 60
# Claims kept with the token's CI identity (besides those a policy matched): who ran what, where.
CONTEXT_CLAIMS = (
    "repository",
    "ref",
    "sha",
    "workflow",
    "run_id",
    "run_attempt",
    "event_name",
    "environment",
    "actor",
    "project_path",
    "pipeline_id",
    "job_id",
    "user_login",
)
ACTOR_CLAIMS = ("actor", "user_login")  # GitHub Actions, GitLab CI
EXCHANGE_ACTOR = "oidc exchange"


class ExchangeRefused(ServiceError):
    """The ID token cannot be exchanged; `check` names the check that failed, the message says why."""

    code = "unauthenticated"
    http_status = 401

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}", details={"check": check})
        self.check = check


@dataclass(frozen=True)
class Exchange:
    """A CI token made for a CI job: the row, its plain text (shown once) and what it may reach."""

    token: ApiToken
    plain: str
    integrations: list[str]
    expires_at: datetime


def ci_token_exchange(*, id_token: str, request_id: str = "") -> Exchange:
    """Exchange a CI job's OIDC ID token for a short-lived CI token, or refuse (audited) with ExchangeRefused."""
    claimed: dict = {}
    try:
        claimed = _unverified_claims(id_token)
        claims, policies = _verified(id_token, claimed)
    except ExchangeRefused as refusal:
        audit_record(
            actor=Actor(label=EXCHANGE_ACTOR, request_id=request_id),
            action="token.exchange_refused",
            after={
                "check": refusal.check,
                # What the token claims, unverified: enough to find the job, never the token itself.
                "claimed": {key: _short(claimed.get(key)) for key in ("iss", "sub", "aud") if key in claimed},
            },
            reason=refusal.message,
        )
        raise
    return _issue(claims, policies, request_id=request_id)


def _short(value):
    return value[:255] if isinstance(value, str) else str(value)[:255]


def _unverified_claims(id_token: str) -> dict:
    """The payload as the token states it, before anything is verified; only to know which issuer to ask."""
    if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_ID_TOKEN_LENGTH:
        raise ExchangeRefused("format", f"the ID token must be a JWT of at most {MAX_ID_TOKEN_LENGTH} characters")
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise ExchangeRefused("format", "the ID token is not a JWT (header.payload.signature)") from None
    if not isinstance(claims, dict):
        raise ExchangeRefused("format", "the ID token's payload is not a JSON object")
    return claims


def _verified(id_token: str, claimed: dict) -> tuple[dict, list[CiIdentity]]:
    """The verified claims and the policies they satisfy; ExchangeRefused naming the first check that fails."""
    header = jwt.get_unverified_header(id_token)
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise ExchangeRefused("algorithm", f"{str(algorithm)[:40]!r} is not allowed (only {', '.join(ALGORITHMS)})")
    issuer = claimed.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise ExchangeRefused("issuer", "the ID token names no issuer (iss)")
    trusting = list(CiIdentity.objects.filter(issuer=issuer).select_related("integration").order_by("id"))
    if not trusting:
        # Refused before any request: the portal only ever contacts issuers its policies name.
        raise ExchangeRefused("issuer", f"issuer {issuer[:200]!r} is not trusted by any integration")
    kid = header.get("kid")
    try:
        key = issuer_signing_key(issuer, kid if isinstance(kid, str) else None)
    except UnknownKey as exc:
        raise ExchangeRefused("key", str(exc)) from None
    except IssuerUnavailable as exc:
        raise ExchangeRefused("issuer keys", str(exc)) from None
    if key.algorithm_name != algorithm:
        raise ExchangeRefused(
            "algorithm", f"the token says {algorithm} but the issuer's key is for {key.algorithm_name}"
        )
    try:
        claims = jwt.decode(
            id_token,
            key=key.key,
            algorithms=[algorithm],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.InvalidSignatureError:
        raise ExchangeRefused("signature", "the signature does not verify with the issuer's key") from None
    except jwt.InvalidTokenError as exc:
        raise ExchangeRefused("format", f"the ID token cannot be read: {exc}") from None
    _times_hold(claims)
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences
    if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
        raise ExchangeRefused("audience", "the ID token names no audience (aud)")
    accepting = [policy for policy in trusting if policy.audience in audiences]
    if not accepting:
        shown = audiences[0] if len(audiences) == 1 else audiences
        raise ExchangeRefused("audience", f"audience {str(shown)[:200]!r} is not accepted for any integration")
    mismatches = [(policy, claims_mismatch(policy.claims, claims)) for policy in accepting]
    matching = [policy for policy, mismatch in mismatches if mismatch is None]
    if not matching:
        raise ExchangeRefused("claims", f"the token's claims match no CI identity: {mismatches[0][1]}")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise ExchangeRefused("claims", "the ID token names no subject (sub)")
    return claims, matching


def _times_hold(claims: dict) -> None:
    """exp is required and in the future, nbf (if any) past, iat required and not in the future; a minute's leeway."""
    now = timezone.now().timestamp()
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is None and name == "nbf":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExchangeRefused(name, f"the ID token has no {name} time (a number of seconds)")
    if claims["exp"] <= now - LEEWAY_SECONDS:
        raise ExchangeRefused("exp", f"the ID token expired at {_when(claims['exp'])}")
    if "nbf" in claims and claims["nbf"] > now + LEEWAY_SECONDS:
        raise ExchangeRefused("nbf", f"the ID token is not valid before {_when(claims['nbf'])}")
    if claims["iat"] > now + LEEWAY_SECONDS:
        raise ExchangeRefused("iat", f"the ID token was issued in the future ({_when(claims['iat'])})")


def _when(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} seconds after 1970"


def _identity(claims: dict, policies: list[CiIdentity]) -> dict:
    """What the token records of the job: issuer, subject, audience and the claims that matched or say where it ran."""
    names = [*sorted({name for policy in policies for name in policy.claims}), *CONTEXT_CLAIMS]
    kept = {
        name: _short(claims[name]) for name in dict.fromkeys(names) if isinstance(claims.get(name), str | int | float)
    }
    return {"issuer": claims["iss"], "subject": _short(claims["sub"]), "audience": policies[0].audience, "claims": kept}


def _triggered_by(claims: dict):
    """The active portal user the run's actor claim names, or None."""
    for name in ACTOR_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value:
            user = get_user_model().objects.filter(username=value, is_active=True).first()
            if user is not None:
                return user
    return None


def _issue(claims: dict, policies: list[CiIdentity], *, request_id: str) -> Exchange:
    """The CI token for the matching policies: their integrations, the scopes they all grant, a short life."""
    integrations = list({policy.integration_id: policy.integration for policy in policies}.values())
    shared = set.intersection(*(set(policy.scopes) for policy in policies))
    scopes = [scope for scope in CI_SCOPES if scope in shared]
    actor = Actor(label=f"oidc:{_short(claims['sub'])}"[:150], request_id=request_id)
    if not scopes:
        refusal = ExchangeRefused("scopes", "the CI identities this token matches share no scope")
        audit_record(actor=actor, action="token.exchange_refused", after={"check": "scopes"}, reason=refusal.message)
        raise refusal
    now = timezone.now()
    expires_at = min(
        now + timedelta(minutes=settings.P2P_OIDC_CI_TOKEN_MINUTES), datetime.fromtimestamp(claims["exp"], tz=UTC)
    )
    if expires_at <= now + timedelta(seconds=1):
        refusal = ExchangeRefused("exp", f"the ID token expires at {_when(claims['exp'])}, leaving no time to use")
        audit_record(actor=actor, action="token.exchange_refused", after={"check": "exp"}, reason=refusal.message)
        raise refusal
    names = sorted(integration.name for integration in integrations)
    token, plain = token_create(
        name=f"oidc {', '.join(names)}"[:120],
        kind=ApiToken.Kind.CI,
        actor=actor,
        system=True,
        integrations=integrations,
        scopes=scopes,
        expires_at=expires_at,
        ci_identity=_identity(claims, policies),
        triggered_by=_triggered_by(claims),
    )
    logger.info("exchanged an ID token of %s for CI token %s", claims["iss"], token.key_id)
    return Exchange(token=token, plain=plain, integrations=names, expires_at=expires_at)
