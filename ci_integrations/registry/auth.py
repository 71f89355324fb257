"""Registry auth: the WWW-Authenticate parser, Basic credentials, and a scope-aware bearer token cache.

Flow: the first request to a host goes out bare (or with a cached token); a 401 challenge tells us the scheme. For
Bearer we ask the realm for a token covering every scope the operation needs (pull on the source repository and
pull,push on the destination for a mount) and cache it by realm, service, scopes and identity. Later requests for
the same scopes attach the cached token up front, so the 401 round trip happens once per scope set, not per blob.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from .bodies import READ_FAILURES, read_up_to, response_error
from .errors import AuthenticationError, ProtocolError, TransientError, cut, remember_secret

# A token answer is a few KiB of JSON (a JWT and its lifetime); anything longer is refused unread.
MAX_TOKEN_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        # The password and the Basic value that carries it are cut out of every error message and log line redact()
        # sees, whatever shape a registry echoes them back in.
        remember_secret(self.password)
        try:
            remember_secret(_basic(self).partition(" ")[2])
        except UnicodeError:  # not Latin-1: no Basic value can be built from it, so none can be echoed either
            pass

    @property
    def identity(self) -> str:
        # Keys caches by who is asking without keeping the secret itself in the key.
        return f"{self.username}:{hashlib.sha256(self.password.encode()).hexdigest()[:16]}"


# Called whenever credentials are needed; providers return cached short-lived ones and refresh them when
# `refresh=True` (the registry refused the last ones).
CredentialSource = Callable[..., BasicCredentials | None]


def static_credentials(credentials: BasicCredentials | None) -> CredentialSource:
    def source(refresh: bool = False) -> BasicCredentials | None:
        return credentials

    return source


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str]


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges. Quoted values may hold commas (`scope="repository:a:pull,push"`) and escapes."""
    challenges: list[Challenge] = []
    i, n = 0, len(header or "")
    text = header or ""
    current: Challenge | None = None
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] not in " \t,=":
            i += 1
        token = text[start:i]
        j = i
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "=" and current is not None:
            # auth-param: name=value or name="quoted, value"
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                j += 1
                value_chars = []
                while j < n and text[j] != '"':
                    if text[j] == "\\" and j + 1 < n:
                        j += 1
                    value_chars.append(text[j])
                    j += 1
                value = "".join(value_chars)
                j += 1  # closing quote
            else:
                start_value = j
                while j < n and text[j] not in " \t,":
                    j += 1
                value = text[start_value:j]
            current.params[token.lower()] = value
            i = j
        else:
            current = Challenge(scheme=token.lower(), params={})
            challenges.append(current)
            i = j
    return challenges


@dataclass
class _Token:
    value: str
    expires_at: float  # time.monotonic()


class TokenCache:
    """Bearer tokens by (realm, service, scopes, identity). Shared by every client in the process."""

    def __init__(self) -> None:
        self._tokens: dict[tuple, _Token] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token and token.expires_at > time.monotonic():
                return token.value
            self._tokens.pop(key, None)
            return None

    def put(self, key: tuple, value: str, ttl: float) -> None:
        with self._lock:
            self._tokens[key] = _Token(value, time.monotonic() + ttl)

    def drop(self, key: tuple) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()
            _SCHEMES.clear()


TOKEN_CACHE = TokenCache()
# What each host asked for last time ("basic", or "bearer" with realm and service), so a new client can send the
# cached token with its very first request instead of going bare and collecting a 401 first.
_SCHEMES: dict[str, tuple[str, dict[str, str]]] = {}

# fetch(session, realm, service, scopes, credentials, timeout) -> (token, ttl seconds)
TokenFetcher = Callable[
    [requests.Session, str, str, tuple[str, ...], BasicCredentials | None, tuple], tuple[str, float]
]


def fetch_docker_token(
    session: requests.Session,
    realm: str,
    service: str,
    scopes: tuple[str, ...],
    credentials: BasicCredentials | None,
    timeout: tuple,
) -> tuple[str, float]:
    """The Docker token protocol: GET realm?service=…&scope=…&scope=… with Basic credentials if we have them."""
    params: list[tuple[str, str]] = []
    if service:
        params.append(("service", service))
    params.extend(("scope", scope) for scope in scopes)
    auth = (credentials.username, credentials.password) if credentials else None
    what = f"token request to {describe_url(realm)}"
    try:
        response = session.get(realm, params=params, auth=auth, timeout=timeout, allow_redirects=True, stream=True)
    except requests.RequestException as exc:
        raise TransientError(f"{what} failed: {type(exc).__name__}") from None
    body = token_answer(response, what=what)
    token = body.get("token") or body.get("access_token")
    if not token:
        raise ProtocolError(f"{what}: the answer holds no token")
    expires_in = body.get("expires_in") or 60  # the spec's default
    return token, float(expires_in)


def token_answer(response: requests.Response, *, what: str) -> dict:
    """The JSON object a token service answered, read only up to MAX_TOKEN_BODY_BYTES; typed errors otherwise."""
    if response.status_code != 200:
        raise response_error(response, what=what)
    try:
        body, longer = read_up_to(response, MAX_TOKEN_BODY_BYTES)
    except READ_FAILURES:
        response.close()
        raise TransientError(f"{what}: the connection broke mid-answer") from None
    if longer:
        raise ProtocolError(f"{what}: the answer is longer than {MAX_TOKEN_BODY_BYTES} bytes; refusing it")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what}: the answer is not JSON") from None
    if not isinstance(parsed, dict):
        raise ProtocolError(f"{what}: the answer is not a JSON object")
    return parsed


def describe_url(url: str) -> str:
    """scheme://host/path of a registry-provided URL, for messages: no query (it may carry state or a signature)."""
    parts = urlsplit(url)
    return cut(f"{parts.scheme}://{parts.netloc}{parts.path}", 200)


def token_ttl(expires_in: float) -> float:
    """How long to keep a token: its lifetime minus a margin, so it never expires in flight."""
    return max(1.0, min(float(expires_in), 3600.0) * 0.9 - 5)


class Authenticator:
    """Auth state for one registry host: the scheme it asked for and the credentials to answer with."""

    def __init__(
        self,
        host: str,
        credentials: CredentialSource | None = None,
        *,
        token_fetcher: TokenFetcher = fetch_docker_token,
        cache: TokenCache = TOKEN_CACHE,
    ) -> None:
        self.host = host
        self._credentials = credentials or static_credentials(None)
        self._fetch = token_fetcher
        self._cache = cache
        self._lock = threading.Lock()
        self.scheme, self.bearer = _SCHEMES.get(host, (None, {}))

    def credentials(self, refresh: bool = False) -> BasicCredentials | None:
        return self._credentials(refresh=refresh)

    def issue_token(
        self, realm: str, service: str, scopes: tuple[str, ...], session: requests.Session, timeout: tuple
    ) -> tuple[str, float]:
        """A new token for `scopes` from `realm`, answered with this registry's credentials; never cached.

        For handing a token to someone else: it must not be one the process also uses, nor one near its end.
        """
        token, expires_in = self._fetch(session, realm, service, scopes, self.credentials(), timeout)
        remember_secret(token)
        return token, expires_in

    def _key(self, scopes: tuple[str, ...], credentials: BasicCredentials | None) -> tuple:
        identity = credentials.identity if credentials else None
        return (self.bearer.get("realm"), self.bearer.get("service"), scopes, identity)

    def header(self, scopes: tuple[str, ...]) -> str | None:
        """The Authorization value to send up front, if we know the scheme; None means go bare."""
        if self.scheme == "basic":
            credentials = self.credentials()
            return _basic(credentials) if credentials else None
        if self.scheme == "bearer":
            return self._bearer_header(scopes, self.credentials())
        return None

    def _bearer_header(self, scopes: tuple[str, ...], credentials: BasicCredentials | None) -> str | None:
        token = self._cache.get(self._key(scopes, credentials))
        return f"Bearer {token}" if token else None

    def answer(
        self,
        challenge_header: str,
        scopes: tuple[str, ...],
        session: requests.Session,
        timeout: tuple,
        *,
        sent: str | None,
    ) -> str:
        """Handle a 401: learn the scheme, get fresh credentials or a token, return the header to retry with.

        `sent` is the Authorization we sent; if it was already a fresh answer to the same challenge the credentials
        are wrong and we raise instead of looping.
        """
        challenges = parse_www_authenticate(challenge_header)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        refresh = sent is not None  # what we sent was refused: expired token or rotated credentials
        with self._lock:
            if bearer is not None:
                if "realm" not in bearer.params:
                    raise ProtocolError(f"{self.host} sent a Bearer challenge without a realm")
                self.scheme = "bearer"
                self.bearer = {"realm": bearer.params["realm"], "service": bearer.params.get("service", "")}
                _SCHEMES[self.host] = (self.scheme, self.bearer)
                wanted = merge_scopes(scopes, tuple(s for s in bearer.params.get("scope", "").split(" ") if s))
                credentials = self.credentials(refresh=refresh)
                key = self._key(wanted, credentials)
                if refresh:
                    self._cache.drop(key)
                    self._cache.drop(self._key(scopes, credentials))
                token = self._cache.get(key)
                if token is None:
                    token, expires_in = self._fetch(
                        session, self.bearer["realm"], self.bearer["service"], wanted, credentials, timeout
                    )
                    remember_secret(token)
                    self._cache.put(key, token, token_ttl(expires_in))
                    if wanted != scopes:
                        self._cache.put(self._key(scopes, credentials), token, token_ttl(expires_in))
                header = f"Bearer {token}"
                if header == sent:
                    raise AuthenticationError(f"{self.host} refused a freshly issued token")
                return header
            if basic is not None:
                self.scheme = "basic"
                _SCHEMES[self.host] = (self.scheme, {})
                credentials = self.credentials(refresh=refresh)
                if credentials is None:
                    raise AuthenticationError(f"{self.host} requires credentials and none are configured")
                header = _basic(credentials)
                if header == sent:
                    raise AuthenticationError(f"{self.host} refused the configured credentials")
                return header
        raise AuthenticationError(f"{self.host} answered 401 with no usable challenge")


def merge_scopes(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """Union of scopes, merging actions per resource: repository:a:pull + repository:a:push = repository:a:pull,push."""
    merged: dict[str, list[str]] = {}
    for group in groups:
        for scope in group:
            resource, _, actions = scope.rpartition(":")
            if not resource:
                resource, actions = scope, ""
            bucket = merged.setdefault(resource, [])
            for action in actions.split(","):
                if action and action not in bucket:
                    bucket.append(action)
    return tuple(f"{resource}:{','.join(sorted(actions))}" for resource, actions in sorted(merged.items()))


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(sorted(actions))}"


def _basic(credentials: BasicCredentials) -> str:
    return requests.auth._basic_auth_str(credentials.username, credentials.password)
