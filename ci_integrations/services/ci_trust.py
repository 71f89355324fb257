"""CI identities: the trust policies under which a CI job's OIDC ID token is exchanged for a CI token.

One place for what a policy may say (read from the config file's `ci_identities`), which issuer URLs the portal will
ever contact, and how a token's claims are held against a policy's. The exchange itself is services/oidc_exchange.py.

May import: input_rules, tokens (for the CI scopes).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from ci_integrations.input_rules import control_character
from ci_integrations.services.tokens import CI_SCOPES

CI_IDENTITY_KEYS = {"issuer", "audience", "claims", "scopes"}
# Checked by the exchange itself, never by a policy's `claims`.
REGISTERED_CLAIMS = {"iss", "aud", "exp", "nbf", "iat", "jti"}
GLOB_CHARACTERS = set("*?[")


def is_loopback_host(host: str) -> bool:
    """Whether a host is this machine: `localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def issuer_url_problem(url: Any) -> str | None:
    """Why the portal may not fetch from `url` (an issuer, or the JWKS its discovery document names), or None.

    Issuers are https. A plain-HTTP issuer on loopback (a local identity provider) is accepted only where
    P2P_OIDC_ALLOW_HTTP_LOOPBACK is on: in development and tests.
    """
    if not isinstance(url, str) or not url or control_character(url) is not None or " " in url:
        return f"{url!r} is not a URL"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"{url!r} has a port that is not a number"
    if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
        return f"{url!r} must be scheme://host[:port][/path], with no user, query or fragment"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        if settings.P2P_OIDC_ALLOW_HTTP_LOOPBACK:
            return None
        return f"{url!r} is plain http: a loopback issuer is accepted in development only; use https"
    return f"{url!r} must be https"


def _pattern_problem(name: Any, pattern: Any) -> str | None:
    if not isinstance(name, str) or not name or control_character(name) is not None:
        return "claim names must be non-empty text"
    if name in REGISTERED_CLAIMS:
        return f"{name!r} is checked by the exchange itself (issuer, audience, times); leave it out of claims"
    if not isinstance(pattern, str) or not pattern or control_character(pattern) is not None:
        return f"{pattern!r} must be a non-empty string: an exact value or a glob such as 'refs/tags/v*'"
    if set(pattern) <= GLOB_CHARACTERS | {"]"}:
        return f"{pattern!r} matches any value; name the value (or a glob with a fixed part)"
    return None


def ci_identity_read(path: str, item: dict) -> tuple[dict, list[str]]:
    """One entry of an integration's `ci_identities`, and every "path: what is wrong" in it.

    A policy needs at least one claim: an issuer such as GitHub's signs tokens for every repository on it, so issuer
    and audience alone would trust anyone's pipeline.
    """
    problems = [
        f"{path}.{key}: unknown key (expected one of: {', '.join(sorted(CI_IDENTITY_KEYS))})"
        for key in sorted(set(item) - CI_IDENTITY_KEYS)
    ]
    issuer = item.get("issuer")
    if (problem := issuer_url_problem(issuer)) is not None:
        problems.append(f"{path}.issuer: {problem}")
    audience = item.get("audience")
    if not isinstance(audience, str) or not audience or len(audience) > 255 or control_character(audience) is not None:
        problems.append(f"{path}.audience: must be the audience the CI job asks its token for, 1 to 255 characters")
    claims = item.get("claims")
    if not isinstance(claims, dict) or not claims:
        problems.append(f"{path}.claims: needs at least one claim, e.g. {{repository: acme/payments-api}}")
        claims = {}
    for name, pattern in claims.items():
        if (problem := _pattern_problem(name, pattern)) is not None:
            problems.append(f"{path}.claims.{name}: {problem}")
    scopes = item.get("scopes")
    if not isinstance(scopes, list) or not scopes:
        problems.append(f"{path}.scopes: must list the scopes the CI token gets ({', '.join(CI_SCOPES)})")
        scopes = []
    unknown = [scope for scope in scopes if scope not in CI_SCOPES]
    if unknown:
        problems.append(f"{path}.scopes: {unknown!r} are not CI scopes ({', '.join(CI_SCOPES)})")
    spec = {
        "issuer": issuer,
        "audience": audience,
        "claims": {str(name): pattern for name, pattern in claims.items()},
        "scopes": list(dict.fromkeys(scope for scope in scopes if scope in CI_SCOPES)),
    }
    return spec, problems


def claim_matches(pattern: str, value: Any) -> bool:
    """A claim value against a policy's pattern: the exact value, or a glob (`*` matches anything, `/` included).

    Only a single value (text, number or boolean, as text) can match; a list or object claim never does.
    """
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return False
    if GLOB_CHARACTERS & set(pattern):
        return fnmatch.fnmatchcase(value, pattern)
    return value == pattern


def claims_mismatch(policy_claims: dict, token_claims: dict) -> str | None:
    """The first of a policy's claims the token does not satisfy, as a sentence, or None when all match."""
    for name, pattern in sorted(policy_claims.items()):
        if name not in token_claims:
            return f"claim {name!r} is missing"
        value = token_claims[name]
        if not claim_matches(pattern, value):
            shown = value if isinstance(value, str) else type(value).__name__
            return f"claim {name!r} is {str(shown)[:200]!r}, not {pattern!r}"
    return None
