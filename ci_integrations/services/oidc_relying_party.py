"""The OpenID Connect relying party: the portal's side of single sign-on.

authlib does the protocol (discovery, the authorization code flow with PKCE and a nonce, the code exchange, the ID
token's signature and claims against the provider's keys); this module configures it from the P2P_OIDC_ settings,
keeps what a sign-in in progress needs in the person's session, and turns every way the exchange can fail into a
sentence that says what is wrong. Nothing here logs or returns a token in an error.

authlib was chosen over mozilla-django-oidc because it reads the provider's discovery document (mozilla-django-oidc
wants every endpoint configured by hand), does PKCE and RP-initiated logout, and is maintained as a general
OAuth/OIDC library with its own conformance tests.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from threading import Lock
from urllib.parse import urlencode

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.django_client import DjangoIntegration, DjangoOAuth2App
from django.conf import settings
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError

from ci_integrations.services.errors import ServiceError

log = logging.getLogger(__name__)

# The provider's discovery document and keys are read again after this long (keys rotate; authlib also refetches
# the keys at once when an ID token names a key it does not know).
METADATA_SECONDS = 3600
TIMEOUT_SECONDS = 10
# A fresh sign-in's auth_time may be this much older than the moment the portal asked for it (clock skew).
AUTH_TIME_LEEWAY_SECONDS = 60
_STATE_NAME = "p2p_oidc"


class SignOnFailed(ServiceError):
    """Single sign-on did not complete; the message says why, for the person and for whoever configures it."""

    code = "sign_on_failed"
    http_status = 400


class ProviderUnreachable(SignOnFailed):
    code = "provider_unreachable"
    http_status = 502


@dataclass(frozen=True)
class SignOn:
    """A completed sign-in: the provider's verified claims (ID token, completed by userinfo) and the ID token, kept
    for RP-initiated logout's id_token_hint."""

    issuer: str
    claims: dict
    id_token: str
    next_url: str
    fresh: bool

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])


_clients: dict[tuple, tuple[float, DjangoOAuth2App]] = {}
_clients_lock = Lock()


def sso_enabled() -> bool:
    return bool(settings.P2P_OIDC_ISSUER)


def _client() -> DjangoOAuth2App:
    """The authlib client for the settings of now, with the provider's discovery document loaded (cached per
    process, per configuration, for METADATA_SECONDS)."""
    if not sso_enabled():
        raise SignOnFailed("Single sign-on is not configured on this portal (P2P_OIDC_ISSUER is not set).")
    key = (
        settings.P2P_OIDC_ISSUER,
        settings.P2P_OIDC_CLIENT_ID,
        settings.P2P_OIDC_CLIENT_SECRET,
        tuple(settings.P2P_OIDC_SCOPES),
    )
    with _clients_lock:
        cached = _clients.get(key)
        if cached and time.monotonic() - cached[0] < METADATA_SECONDS:
            return cached[1]
    issuer = settings.P2P_OIDC_ISSUER
    client = DjangoOAuth2App(
        DjangoIntegration(_STATE_NAME),
        name=_STATE_NAME,
        client_id=settings.P2P_OIDC_CLIENT_ID,
        client_secret=settings.P2P_OIDC_CLIENT_SECRET or None,
        server_metadata_url=issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": " ".join(settings.P2P_OIDC_SCOPES),
            "code_challenge_method": "S256",
            "default_timeout": TIMEOUT_SECONDS,
            "token_endpoint_auth_method": "client_secret_basic" if settings.P2P_OIDC_CLIENT_SECRET else "none",
        },
    )
    try:
        metadata = client.load_server_metadata()
    except requests.RequestException as exc:
        raise ProviderUnreachable(
            f"The identity provider at {issuer} could not be reached to read its discovery document "
            f"({type(exc).__name__}): check P2P_OIDC_ISSUER and that the portal can reach it."
        ) from None
    except ValueError:
        raise ProviderUnreachable(
            f"{issuer}/.well-known/openid-configuration did not answer with a discovery document (not JSON): "
            "check P2P_OIDC_ISSUER."
        ) from None
    if str(metadata.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise SignOnFailed(
            f"The discovery document at {issuer} names the issuer {metadata.get('issuer')!r}: "
            "P2P_OIDC_ISSUER must be exactly the provider's issuer."
        )
    missing = [name for name in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not metadata.get(name)]
    if missing:
        raise SignOnFailed(f"The discovery document at {issuer} has no {', '.join(missing)}.")
    with _clients_lock:
        _clients[key] = (time.monotonic(), client)
    return client


def sso_authorization_url(*, session, redirect_uri: str, next_url: str, fresh: bool = False) -> str:
    """Where to send the browser to sign in at the provider; what the answer will be checked against (state, nonce,
    PKCE verifier) and where to go afterwards are kept in `session` under the state.

    `fresh` asks the provider to authenticate the person again even when it has a session (prompt=login, max_age=0):
    approving into a high-stakes step needs a recent sign-in.
    """
    client = _client()
    extra = {"prompt": "login", "max_age": 0} if fresh else {}
    authorization = client.create_authorization_url(redirect_uri, **extra)
    client.framework.set_state_data(
        session,
        authorization["state"],
        {
            "redirect_uri": redirect_uri,
            "code_verifier": authorization["code_verifier"],
            "nonce": authorization["nonce"],
            "next": next_url,
            "fresh_since": int(time.time()) if fresh else None,
        },
    )
    return authorization["url"]


def _printable(text: str, limit: int) -> str:
    """The provider's own words (they come through the browser's query string), without control characters."""
    return "".join(c for c in text if c.isprintable())[:limit]


def _provider_error(error: str, description: str) -> SignOnFailed:
    error, description = _printable(error, 64), _printable(description, 300)
    said = f"{error}: {description}" if description else error
    if error == "invalid_client":
        return SignOnFailed(
            f"The identity provider refused the portal's client credentials ({said}): check P2P_OIDC_CLIENT_ID and "
            "P2P_OIDC_CLIENT_SECRET against the client registered at the provider.",
            code=error,
        )
    if error == "access_denied":
        return SignOnFailed(f"The identity provider did not sign you in ({said}).", code=error)
    return SignOnFailed(f"The identity provider answered with an error ({said}).", code=error or "error")


def _id_token_problem(exc: Exception) -> SignOnFailed:
    if isinstance(exc, ExpiredTokenError):
        why = "it has expired (is the portal's clock right?)"
    elif isinstance(exc, ClaimError) and exc.claim == "nonce":
        why = "its nonce does not match the one this sign-in sent (a replayed or mixed-up answer)"
    elif isinstance(exc, ClaimError):
        why = f"its {exc.claim!r} claim is missing or wrong"
    else:
        why = f"{getattr(exc, 'error', type(exc).__name__)}: {getattr(exc, 'description', '') or exc}"
    return SignOnFailed(f"The identity provider's ID token was refused: {why}. Sign in again.", code="bad_id_token")


def sso_complete(*, session, params: dict) -> SignOn:
    """Check the provider's answer (`params`: the callback's query) and exchange its code: a SignOn, or SignOnFailed
    saying what is wrong."""
    if params.get("error"):
        raise _provider_error(str(params["error"]), str(params.get("error_description") or ""))
    client = _client()
    state = params.get("state") or ""
    data = client.framework.get_state_data(session, state) if state else None
    if data is None:
        raise SignOnFailed(
            "This sign-in answer does not match a sign-in started in this browser (state mismatch): it is old, was "
            "already used, or was started elsewhere. Sign in again.",
            code="state_mismatch",
        )
    client.framework.clear_state_data(session, state)
    if not params.get("code"):
        raise SignOnFailed("The identity provider's answer has no authorization code.", code="no_code")
    try:
        token = client.fetch_access_token(
            redirect_uri=data["redirect_uri"], code=params["code"], code_verifier=data["code_verifier"]
        )
        if not token.get("id_token"):
            raise SignOnFailed("The identity provider's token answer has no ID token: is `openid` in the scopes?")
        claims = dict(client.parse_id_token(token, nonce=data["nonce"], leeway=120))
        claims = _with_userinfo(client, token, claims)
    except SignOnFailed:
        raise
    except requests.RequestException as exc:
        raise ProviderUnreachable(
            f"The identity provider could not be reached to finish the sign-in ({type(exc).__name__})."
        ) from None
    except (JoseError, ValueError, KeyError) as exc:
        raise _id_token_problem(exc) from None
    except AuthlibBaseError as exc:
        raise _provider_error(str(exc.error), str(exc.description or "")) from None
    if data.get("fresh_since") and int(claims.get("auth_time") or time.time()) < (
        data["fresh_since"] - AUTH_TIME_LEEWAY_SECONDS
    ):
        raise SignOnFailed(
            "The identity provider did not ask you to sign in again (its auth_time is older than this request).",
            code="not_fresh",
        )
    return SignOn(
        issuer=settings.P2P_OIDC_ISSUER,
        claims=claims,
        id_token=token["id_token"],
        next_url=data.get("next") or "",
        fresh=bool(data.get("fresh_since")),
    )


def _with_userinfo(client: DjangoOAuth2App, token: dict, claims: dict) -> dict:
    """The ID token's claims, completed from the userinfo endpoint when the groups or user name claim is not in the ID
    token (providers differ in what they put there). Userinfo answers about the same subject or not at all."""
    wanted = [settings.P2P_OIDC_GROUPS_CLAIM, settings.P2P_OIDC_USERNAME_CLAIM]
    if all(not name or name in claims for name in wanted) or not client.server_metadata.get("userinfo_endpoint"):
        return claims
    userinfo = dict(client.userinfo(token=token))
    if str(userinfo.get("sub")) != str(claims.get("sub")):
        raise SignOnFailed("The identity provider's userinfo answer is about another subject than its ID token.")
    return {**userinfo, **claims}


def sso_logout_url(*, id_token: str, post_logout_redirect_uri: str) -> str | None:
    """The provider's end-session URL (RP-initiated logout) when its discovery document has one, else None; a
    provider that cannot be reached now does not keep anyone signed in here."""
    try:
        endpoint = _client().server_metadata.get("end_session_endpoint")
    except SignOnFailed as exc:
        log.warning("signing out without the identity provider: %s", exc.message)
        return None
    if not endpoint:
        return None
    query = {"post_logout_redirect_uri": post_logout_redirect_uri, "client_id": settings.P2P_OIDC_CLIENT_ID}
    if id_token:
        query["id_token_hint"] = id_token
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"
