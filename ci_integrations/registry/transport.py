"""The one place that sends HTTP to registries: sessions, auth challenges, redirects, timeouts and retries.

Retries live here and nowhere else (`with_retries` is reused by the copy engine for whole blob transfers, whose
streamed bodies cannot be replayed by a single request retry).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import budget as budgets
from .auth import Authenticator, Challenge, merge_scopes, parse_www_authenticate
from .bodies import READ_FAILURES, read_capped, read_up_to, response_error
from .destinations import Guard, check_destination, check_realm, origin, same_origin
from .errors import (
    AccessDenied,
    AuthenticationError,
    CannotScope,
    DeadlineExceeded,
    PersistentServerError,
    ProtocolError,
    RateLimited,
    RegistryError,
    TransientError,
)

log = logging.getLogger(__name__)

USER_AGENT = "p2p-portal-registry/1.0"
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 10
# The largest body the client buffers: the OCI guidance for manifests; tag pages and the like are far smaller.
MAX_BODY_BYTES = 4 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter; Retry-After wins when the registry sends one."""

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        return random.uniform(self.base_delay / 2, min(self.max_delay, self.base_delay * (2**attempt)))


# A 500 answered this many times in a row with the same body is the registry's answer, not a hiccup (a Windows
# foreign-layer manifest, say): no more tries, in the engine or by the promotion.
SAME_SERVER_ERROR_LIMIT = 3
PERSISTENT_STATUSES = {500, 501}


@dataclass(frozen=True)
class Timeouts:
    """Deadlines by kind of call.

    connect: to open a connection. read: a metadata call (ping, token, HEAD, manifest GET/PUT, mount, upload start)
    must answer within it. stall: a blob transfer fails when no byte has moved for this long, however long the
    whole transfer takes.
    """

    connect: float = 10.0
    read: float = 15.0
    stall: float = 60.0

    @property
    def pair(self) -> tuple[float, float]:
        return (self.connect, self.read)

    def for_call(self, transfer: bool) -> tuple[float, float]:
        """(connect, read) for one request, cut to what the current budget has left."""
        wait = self.stall if transfer else self.read
        budget = budgets.current_budget()
        if budget is None:
            return (self.connect, wait)
        return (budget.cap(self.connect), budget.cap(wait))


def parse_rate_limit_reset(headers, *, now: float | None = None) -> float | None:
    """When a rate-limit window resets, as Unix time, from `ratelimit-reset` or `x-ratelimit-reset` (either delta
    seconds, as the IETF RateLimit fields, or a Unix time, as GitHub's and Docker Hub's API send); None without."""
    value = (headers.get("ratelimit-reset") or headers.get("x-ratelimit-reset") or "").split(";", 1)[0].strip()
    if not value.isdigit():
        return None
    number, current = float(value), time.time() if now is None else now
    return number if number > 1_000_000_000 else current + number


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryableFailure(Exception):
    """Internal: one attempt failed in a way worth retrying (wraps the typed error to raise at the end).

    `reason` is what a retry line says, host first ("127.0.0.1:5002 did not answer a HEAD in 15 s"); without one,
    the line gives the host and the error's message.
    """

    def __init__(
        self, error: RegistryError, retry_after: float | None = None, *, reason: str = "", until_reset: bool = False
    ):
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.reason = reason
        self.until_reset = until_reset  # a rate-limit reset already checked against the budget: wait for all of it


# Told of each retry (a line for the promotion's log): called with a sentence naming the host and the reason.
RetryNotice = Callable[[str], None]


def announce(notify: RetryNotice | None, line: str, *, logger: logging.Logger | None = log) -> None:
    """Log `line` (unless logger is None) and hand it to `notify` (the promotion's log); a broken log writer never
    fails the copy."""
    if logger is not None:
        logger.info("%s", line)
    if notify is not None:
        try:
            notify(line)
        except Exception:
            log.exception("notice failed")


def with_retries(
    operation: Callable[[int], T],
    *,
    policy: RetryPolicy,
    what: str,
    sleep: Callable[[float], None] | None = None,
    host: str = "",
    notify: RetryNotice | None = None,
) -> T:
    """Run operation(attempt) until it returns; retry on RetryableFailure up to policy.attempts, then raise.

    Pauses follow the current budget (budget.py): a pause that would outlast it raises DeadlineExceeded, a stop ends
    it at once. A 500 repeated with the same body SAME_SERVER_ERROR_LIMIT times is final (PersistentServerError).
    """
    attempts = max(1, policy.attempts)  # "retry_attempts: 0" means no retries, not no request
    last: RetryableFailure | None = None
    repeats = 0
    for attempt in range(attempts):
        try:
            budgets.check()
            return operation(attempt)
        except DeadlineExceeded as exc:
            raise _out_of_time(exc, what, host, last) from None
        except RetryableFailure as failure:
            repeats = repeats + 1 if last is not None and _same_server_error(last, failure) else 1
            last = failure
            if repeats >= SAME_SERVER_ERROR_LIMIT and failure.error.status in PERSISTENT_STATUSES:
                raise PersistentServerError(
                    f"{failure.error.message} (the same answer {repeats} times in a row: not retrying)",
                    status=failure.error.status,
                    code=failure.error.code,
                ) from None
            if attempt + 1 < attempts:
                pause = failure.retry_after if failure.until_reset else policy.delay(attempt, failure.retry_after)
                reason = failure.reason or (f"{host}: {failure.error.message}" if host else failure.error.message)
                line = f"{reason}; retry {attempt + 1} of {attempts - 1} in {pause:.2g} s"
                log.info("%s: %s", what, line)
                announce(notify, line, logger=None)  # logged just above, with the call's name
                try:
                    if sleep is not None:
                        sleep(pause)
                    else:
                        budgets.pause(pause, doing=what)
                except DeadlineExceeded as exc:
                    raise _out_of_time(exc, what, host, failure) from None
    assert last is not None
    error = last.error
    if isinstance(error, TransientError):
        raise TransientError(
            f"{error.message} (gave up after {attempts} attempts)",
            status=error.status,
            code=error.code,
            retry_after=error.retry_after,
        ) from None
    raise error


def _out_of_time(exc: DeadlineExceeded, what: str, host: str, last: RetryableFailure | None) -> DeadlineExceeded:
    """DeadlineExceeded naming the registry, the call and the last thing that went wrong ("timed out")."""
    budget = budgets.current_budget()
    limit = budget.what if budget is not None else "the time allowed"
    tail = f"; last try: {last.reason or last.error.message}" if last is not None else ""
    return DeadlineExceeded(
        f"{host or 'the registry'} did not finish {what} within {limit}{tail}",
        host=host or exc.host,
        status=last.error.status if last is not None else None,
    )


def _same_server_error(a: RetryableFailure, b: RetryableFailure) -> bool:
    return a.error.status is not None and (a.error.status, a.error.message) == (b.error.status, b.error.message)


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free description of a connection-level failure."""
    if isinstance(exc, requests.Timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "reset" in text.lower() or "aborted" in text.lower():
            return "connection reset"
        if "IncompleteRead" in text or "Connection broken" in text:
            return "connection broken mid-body"
        return "connection failed"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken mid-body"
    return type(exc).__name__


class GuardedAdapter(HTTPAdapter):
    """An adapter that asks the destination guard before each request goes out: requests' own redirect hops (in
    token requests) pass through here too, so no connection escapes the guard."""

    def __init__(self, guard: Guard | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.guard = guard

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        try:
            check_destination(self.guard, request.url)
        except OSError as exc:  # the guard could not resolve the host: the connection would have failed the same way
            raise requests.ConnectionError(f"cannot resolve {origin(request.url)[1]}: {exc}") from None
        return super().send(request, **kwargs)


class Transport:
    """HTTP to one registry host: a pooled session with auth, plus plain sessions for redirect targets."""

    def __init__(
        self,
        base_url: str,
        authenticator: Authenticator,
        *,
        policy: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        pool_size: int = 16,
        verify: bool | str = True,
        guard: Guard | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.auth = authenticator
        self.policy = policy or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.verify = verify
        self.guard = guard
        self.notify: RetryNotice | None = None  # told of each retry (the copy engine sets it for a promotion's log)
        self._pool_size = pool_size
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()

    def session(self, netloc: str | None = None) -> requests.Session:
        netloc = netloc or self.host
        with self._lock:
            session = self._sessions.get(netloc)
            if session is None:
                session = requests.Session()
                adapter = GuardedAdapter(self.guard, pool_connections=2, pool_maxsize=self._pool_size, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                # Transparent decompression would break digests; we always want the bytes as stored.
                session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
                session.verify = self.verify
                # Proxy and CA-bundle settings come from the environment once, here, not on every request (requests
                # re-reads the environment per call otherwise); and no ~/.netrc credentials are ever sent.
                scheme = urlsplit(self.base_url).scheme or "https"
                session.proxies = requests.utils.get_environ_proxies(f"{scheme}://{netloc}")
                if self.verify is True:
                    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
                session.trust_env = False
                self._sessions[netloc] = session
            return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def send_once(
        self,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...] = (),
        headers: dict | None = None,
        data=None,
        replayable: bool = True,
        follow_redirects: bool = True,
        transfer: bool = False,
    ) -> requests.Response:
        """One logical request: auth challenge answered (bodies must be replayable for that), redirects followed.
        `transfer` marks a blob body moving either way: it may take as long as it likes while bytes flow, and fails
        when none has moved for the stall time; every other call must answer within the read timeout.

        Connection failures and retryable statuses surface as RetryableFailure; callers decide whether to retry. The
        response is always streamed: read its body with `read_bounded` or `read_capped`, never `.content`.
        """
        scopes = merge_scopes(scopes)
        # Credentials belong to the registry's own scheme, host and port: an upload Location or pagination link
        # elsewhere (storage, a CDN, the same host over plain HTTP) gets no Authorization, and its challenges are
        # not answered with the registry's credentials.
        own_origin = same_origin(url, self.base_url)
        sent = self.auth.header(scopes) if own_origin else None
        refreshed = False  # whether `sent` is a re-authentication after refused credentials
        for auth_round in range(3):
            request_headers = dict(headers or {})
            if sent:
                request_headers["Authorization"] = sent
            response = self._send(method, url, request_headers, data, transfer=transfer)
            if response.status_code != 401:
                break
            challenge = response.headers.get("WWW-Authenticate", "")
            refusal = response_error(response, what=f"{method} {_path(url)}")
            if not challenge or auth_round == 2 or not own_origin:
                raise refusal
            if sent and _insufficient_scope(challenge):
                raise AccessDenied(f"{method} {_path(url)}: the token lacks the needed scope ({', '.join(scopes)})")
            if refreshed:
                # Re-authenticated once (expired token, rotated credentials) and still refused: asking the token
                # service again would only repeat that, once per blob.
                raise AuthenticationError(
                    f"{refusal.message}: refused again right after re-authenticating", status=401, code=refusal.code
                )
            if not replayable and sent:
                # A streamed body cannot be sent again; the caller restarts the whole operation.
                self._answer(challenge, scopes, sent)
                raise RetryableFailure(AuthenticationError(f"{method} {_path(url)}: credentials expired mid-request"))
            refreshed = sent is not None
            sent = self._answer(challenge, scopes, sent)
            if not replayable:
                raise RetryableFailure(AuthenticationError(f"{method} {_path(url)}: needed auth first"))
        if follow_redirects and response.status_code in REDIRECT_STATUS and method in ("GET", "HEAD"):
            response = self._follow(method, response, headers or {}, sent, transfer=transfer)
        if response.status_code in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            reset_at = parse_rate_limit_reset(response.headers) if response.status_code == 429 else None
            error = response_error(response, what=f"{method} {_path(url)}", retry_after=retry_after)
            if reset_at is not None and retry_after is None:
                raise self._rate_limited(error, reset_at)
            if not isinstance(error, TransientError):
                error = TransientError(error.message, status=response.status_code, retry_after=retry_after)
            raise RetryableFailure(
                error, retry_after, reason=f"{self.host} answered {response.status_code} to a {method}"
            )
        return response

    def _rate_limited(self, error: RegistryError, reset_at: float) -> RetryableFailure | RateLimited:
        """A 429 whose window resets at `reset_at` (Docker Hub sends no Retry-After): wait for the reset when it
        comes within the time the work has left (a copy's deadline; else the longest Retry-After honoured), fail
        saying when it resets otherwise."""
        wait = max(0.0, reset_at - time.time())
        budget = budgets.current_budget()
        left = budget.remaining() if budget is not None else None
        fits = wait <= (left - 1.0 if left is not None else self.policy.max_retry_after)
        if fits:
            return RetryableFailure(
                TransientError(error.message, status=429, retry_after=wait),
                wait,
                reason=f"{self.host} reached its rate limit; it resets in {wait:.0f} s",
                until_reset=True,
            )
        when = time.strftime("%H:%M UTC", time.gmtime(reset_at))
        return RateLimited(f"pull limit reached at {self.host}; resets at {when}", reset_at=reset_at, status=429)

    def challenges(self) -> list[Challenge]:
        """How the registry asks to be authenticated: the challenges of a bare GET /v2/ (none when it lets anyone in).

        Sent without any Authorization, so the answer is the registry's own, not one shaped by a cached token.
        """
        url = self.url("/v2/")

        def attempt(_: int) -> requests.Response:
            response = self._send("GET", url, {}, None)
            read_capped(response)
            if response.status_code in RETRYABLE_STATUS:
                error = response_error(response, what="GET /v2/")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise RetryableFailure(TransientError(error.message, status=response.status_code), retry_after)
            return response

        response = with_retries(attempt, policy=self.policy, what="GET /v2/", host=self.host, notify=self.notify)
        if response.status_code == 401:
            return parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
        if response.status_code == 200:
            return []
        raise response_error(response, what="GET /v2/")

    def scoped_token(self, scopes: tuple[str, ...]) -> tuple[str, float, Challenge]:
        """A fresh bearer token for exactly `scopes` from the registry's own token service, found through its challenge.

        Returns (token, lifetime in seconds, the challenge answered). The token is not cached: it is meant for someone
        else, and what they get must be a token of its own with its full lifetime. Raises CannotScope when the
        registry has no token service (Basic only, or no auth at all).
        """
        challenges = self.challenges()
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        if bearer is None:
            how = "asks for Basic credentials only" if challenges else "asks for no credentials at all"
            raise CannotScope(f"{self.host} {how}: it has no token service that could issue a token for one repository")
        check_realm(bearer.params["realm"], self.base_url)  # the request carries the registry's credentials
        try:
            token, lifetime = with_retries(
                lambda _: self._issue(bearer, scopes),
                policy=self.policy,
                what="token request",
                host=self.host,
                notify=self.notify,
            )
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"{self.host} token service refused the configured credentials: {exc.message}", status=exc.status
            ) from None
        return token, lifetime, bearer

    def _issue(self, bearer: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        try:
            return self.auth.issue_token(
                bearer.params["realm"],
                bearer.params.get("service", ""),
                scopes,
                self.session(),
                self.timeouts.for_call(False),
            )
        except TransientError as exc:
            raise RetryableFailure(exc, exc.retry_after) from None

    def _answer(self, challenge: str, scopes: tuple[str, ...], sent: str | None) -> str:
        bearer = next((c for c in parse_www_authenticate(challenge) if c.scheme == "bearer"), None)
        if bearer is not None and "realm" in bearer.params:
            # The token request carries the registry's credentials: never to plain HTTP elsewhere.
            check_realm(bearer.params["realm"], self.base_url)
        try:
            return self.auth.answer(challenge, scopes, self.session(), self.timeouts.for_call(False), sent=sent)
        except TransientError as exc:  # the token service had a hiccup: retry like any other request
            raise RetryableFailure(exc, exc.retry_after) from None

    def _send(self, method: str, url: str, headers: dict, data, *, transfer: bool = False) -> requests.Response:
        budgets.check(f"{method} {_path(url)}")
        timeout = self.timeouts.for_call(transfer)
        try:
            return self.session(urlsplit(url).netloc).request(
                method,
                url,
                headers=headers,
                data=data,
                # Always streamed, whatever the caller reads later: requests would otherwise read a body of any size
                # (an error page, a hostile answer) into memory before we see the status.
                stream=True,
                timeout=timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            described = describe_exception(exc)
            if isinstance(exc, requests.ConnectTimeout):
                reason = f"did not accept a connection in {timeout[0]:.3g} s"
            elif described == "timed out":
                what = f"moved no byte of a {method} for" if transfer else f"did not answer a {method} in"
                reason = f"{what} {timeout[1]:.3g} s"
            else:
                reason = f"{described} during a {method}"
            host = urlsplit(url).netloc
            raise RetryableFailure(
                TransientError(f"{method} {_path(url)}: {described}"), reason=f"{host} {reason}"
            ) from None

    def _follow(
        self, method: str, response: requests.Response, headers: dict, sent: str | None, *, transfer: bool = False
    ) -> requests.Response:
        what = f"{method} {_path(response.url)}"
        for _ in range(MAX_REDIRECTS):
            location = response.headers.get("Location")
            if not location:
                return response
            target = urljoin(response.url, location)  # relative Locations resolve against the request; query kept
            read_capped(response)  # a short redirect body read to its end keeps the connection for reuse
            response.close()
            scheme = urlsplit(target).scheme.lower()
            if scheme not in ("http", "https"):
                # Named by scheme only: the rest of a storage URL may be a presigned credential.
                raise ProtocolError(f"{what}: redirected to a {scheme or 'scheme-less'}: URL, which cannot be fetched")
            request_headers = dict(headers)
            # Storage backends (S3, GCS, Azure blob) get presigned URLs and must never see registry credentials.
            if sent and same_origin(target, self.base_url):
                request_headers["Authorization"] = sent
            response = self._send(method, target, request_headers, None, transfer=transfer)
            if response.status_code not in REDIRECT_STATUS:
                return response
        response.close()
        raise ProtocolError(f"{what}: more than {MAX_REDIRECTS} redirects (a redirect loop)")

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: tuple[str, ...] = (),
        headers: dict | None = None,
        data: bytes | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
        allow: tuple[int, ...] = (),
        what: str | None = None,
        max_bytes: int | None = None,
        policy: RetryPolicy | None = None,
    ) -> requests.Response:
        """A replayable request with retries; returns the response when its status is in ok+allow, else raises.

        A body in `ok` is read into `response.content` up to `max_bytes` (MAX_BODY_BYTES by default); a larger one
        is refused with ProtocolError without reading more than the limit. With `stream`, the caller reads it. Bodies
        of other statuses are read only up to MAX_ERROR_BODY_BYTES.
        """
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        label = what or f"{method} {_path(url)}"

        def attempt(_: int) -> requests.Response:
            response = self.send_once(method, url, scopes=scopes, headers=headers, data=data)
            if response.status_code in ok and not stream:
                if method == "HEAD":  # its Content-Length is the size of what a GET would send, not of this body
                    read_capped(response)
                else:
                    read_bounded(response, max_bytes or MAX_BODY_BYTES, what=label)
            elif response.status_code in allow:
                read_capped(response)
            return response

        response = with_retries(attempt, policy=policy or self.policy, what=label, host=self.host, notify=self.notify)
        if response.status_code in ok or response.status_code in allow:
            return response
        raise response_error(response, what=label)


def read_bounded(response: requests.Response, limit: int, *, what: str) -> bytes:
    """Read a streamed body into `response.content`, refusing (ProtocolError) one over `limit` bytes.

    The declared Content-Length is refused before reading; an undeclared or lying length is cut off at limit + 1
    bytes. A connection failure mid-body is retryable like any other.
    """
    declared = (response.headers.get("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise ProtocolError(f"{what}: {int(declared)} bytes, over the limit of {limit} bytes ({_mib(limit)})")
    try:
        body, longer = read_up_to(response, limit)
    except READ_FAILURES as exc:
        response.close()
        raise RetryableFailure(TransientError(f"{what}: {describe_exception(exc)}")) from None
    if longer:
        raise ProtocolError(f"{what}: more than {limit} bytes, over the limit of {limit} bytes ({_mib(limit)})")
    return body


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


def _path(url: str) -> str:
    """URL without query (upload URLs carry state tokens) and without the host, for messages."""
    parts = urlsplit(url)
    return parts.path


def _insufficient_scope(challenge: str) -> bool:
    return any(c.params.get("error") == "insufficient_scope" for c in parse_www_authenticate(challenge))
