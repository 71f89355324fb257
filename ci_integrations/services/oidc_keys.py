"""An OIDC issuer's signing keys: found by discovery (`<issuer>/.well-known/openid-configuration` names `jwks_uri`),
kept per process for P2P_OIDC_JWKS_CACHE_SECONDS, and fetched again once when a token names a key id the cache does
not hold (the issuer rotated its keys).

Only issuers a CI identity trusts are ever asked, and every request goes through the same destination guard as the
imports: https only (plain HTTP on loopback in development), no internal addresses, no redirects followed, bounded
answers and timeouts.

May import: models, ci_trust, registry (its destination guard).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import jwt
import requests
from django.conf import settings

from ci_integrations.registry import DestinationRefused, address_guard
from ci_integrations.registry.destinations import origin
from ci_integrations.services.ci_trust import is_loopback_host, issuer_url_problem

DISCOVERY_PATH = "/.well-known/openid-configuration"
TIMEOUT = (5, 10)  # seconds to connect, seconds to read
MAX_DOCUMENT_BYTES = 256 * 1024
# An unknown key id makes the keys be fetched again, but not more often than this per issuer, so tokens naming made-up
# key ids cannot make the portal hammer an issuer.
REFETCH_INTERVAL = 10.0
ALGORITHMS = ("RS256", "ES256")


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys could not be fetched or read; the message says which and why."""


class UnknownKey(Exception):
    """The token names a key id the issuer does not publish, even after fetching its keys again."""


@dataclass
class _IssuerKeys:
    keys: dict[str, jwt.PyJWK]  # by key id; a key without one is kept under ""
    fetched_at: float
    refetched_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


_cache: dict[str, _IssuerKeys] = {}
_cache_lock = threading.Lock()


def oidc_keys_forget() -> None:
    """Drop every cached issuer (after a config change, and between tests)."""
    with _cache_lock:
        _cache.clear()


def issuer_signing_key(issuer: str, kid: str | None) -> jwt.PyJWK:
    """The issuer's key named `kid` (or its only key, for a token naming none), fetching keys as needed.

    Raises UnknownKey when the issuer does not publish it and IssuerUnavailable when its keys cannot be fetched.
    """
    now = time.monotonic()
    with _cache_lock:
        entry = _cache.get(issuer)
    if entry is None or now - entry.fetched_at > settings.P2P_OIDC_JWKS_CACHE_SECONDS:
        entry = _store(issuer, _fetch_keys(issuer))
    key = _pick(entry.keys, kid)
    if key is not None:
        return key
    with entry.lock:
        if time.monotonic() - entry.refetched_at >= REFETCH_INTERVAL:
            entry.keys = _fetch_keys(issuer)
            entry.refetched_at = entry.fetched_at = time.monotonic()
    key = _pick(entry.keys, kid)
    if key is None:
        named = f"key id {kid[:100]!r}" if kid else "a key id (its header has no kid)"
        known = ", ".join(sorted(repr(k) for k in entry.keys)) or "none"
        raise UnknownKey(f"the token names {named}, which the issuer does not publish (its keys: {known})")
    return key


def _store(issuer: str, keys: dict[str, jwt.PyJWK]) -> _IssuerKeys:
    entry = _IssuerKeys(keys=keys, fetched_at=time.monotonic())
    with _cache_lock:
        _cache[issuer] = entry
    return entry


def _pick(keys: dict[str, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None


def _fetch_keys(issuer: str) -> dict[str, jwt.PyJWK]:
    """Discovery, then the JWKS it names; keys of other types or uses than RS256/ES256 signing are left out."""
    discovery = _get_json(issuer.rstrip("/") + DISCOVERY_PATH, what="discovery document")
    if discovery.get("issuer") != issuer:
        raise IssuerUnavailable(
            f"the discovery document of {issuer} names the issuer {str(discovery.get('issuer'))[:200]!r}, not itself"
        )
    jwks_uri = discovery.get("jwks_uri")
    if (problem := issuer_url_problem(jwks_uri)) is not None:
        raise IssuerUnavailable(f"the discovery document of {issuer} names no usable jwks_uri: {problem}")
    document = _get_json(jwks_uri, what="JWKS")
    if not isinstance(document.get("keys"), list):
        raise IssuerUnavailable(f"the JWKS at {jwks_uri} has no list of keys")
    keys: dict[str, jwt.PyJWK] = {}
    for item in document["keys"]:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(item)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue  # a key type or curve this portal does not accept
        if key.algorithm_name in ALGORITHMS:
            keys[str(item.get("kid") or "")] = key
    return keys


def _guard_for(url: str):
    """The destination guard for one issuer URL: internal addresses refused, except the loopback host:port of a
    development issuer (issuer_url_problem has already refused it anywhere else)."""
    scheme, host, port = origin(url)
    allowed = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"] if is_loopback_host(host) else []
    return address_guard(allowed_private_hosts=allowed)


def _get_json(url: str, *, what: str) -> dict:
    """A JSON object from `url`, or IssuerUnavailable naming `what` and why."""
    if (problem := issuer_url_problem(url)) is not None:
        raise IssuerUnavailable(f"the {what} cannot be fetched: {problem}")
    where = urlsplit(url)._replace(query="", fragment="").geturl()[:300]
    try:
        _guard_for(url)(*origin(url))
        with requests.get(
            url, timeout=TIMEOUT, allow_redirects=False, stream=True, headers={"Accept": "application/json"}
        ) as response:
            if response.status_code != 200:
                raise IssuerUnavailable(f"the {what} at {where} answered HTTP {response.status_code}")
            body = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
    except DestinationRefused as exc:
        raise IssuerUnavailable(f"the {what} at {where} was not fetched: {exc}") from None
    except (requests.RequestException, OSError) as exc:
        raise IssuerUnavailable(f"the {what} at {where} could not be fetched ({type(exc).__name__})") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise IssuerUnavailable(f"the {what} at {where} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise IssuerUnavailable(f"the {what} at {where} is not JSON") from None
    if not isinstance(document, dict):
        raise IssuerUnavailable(f"the {what} at {where} is not a JSON object")
    return document
