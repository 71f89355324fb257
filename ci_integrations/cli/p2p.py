#!/usr/bin/env python3
"""p2p: the P2P Portal command line for CI pipelines. One file, standard library only.

Get it with:  curl -fsSL -o p2p "$P2P_URL/api/v1/cli/p2p" && chmod +x p2p
Configure:    P2P_URL (the portal, e.g. https://p2p.example.com) and P2P_TOKEN (a p2p_… API token)
Or, without P2P_TOKEN, sign in with the CI job's OIDC ID token: in GitHub Actions (`permissions: id-token: write`)
from ACTIONS_ID_TOKEN_REQUEST_URL/ACTIONS_ID_TOKEN_REQUEST_TOKEN for the audience P2P_OIDC_AUDIENCE (default
p2p-portal); elsewhere (GitLab's `id_tokens:`, CircleCI, Buildkite…) from P2P_ID_TOKEN. The portal exchanges it for a
short-lived CI token.

  p2p push INTEGRATION ENV IMAGE:TAG [--digest D] [--meta key=value …]
  p2p import INTEGRATION SOURCE [--tag T] [--wait]
  p2p check ARTIFACT NAME passed|failed [--url URL]          ARTIFACT: id, INTEGRATION:TAG or INTEGRATION@DIGEST
  p2p promote IMAGE:TAG --source-stage ENV --dest-stage ENV [--at TIME] [--wait]   (SOURCE_STAGE / DEST_STAGE)
  p2p status ID [--wait]                                     exit 0 succeeded, 1 failed/rejected/cancelled/expired,
                                                             2 timeout
  p2p rollback INTEGRATION ENV TO --reason TEXT [--wait]
  p2p login INTEGRATION ENV                                  prints a docker login or a token: eval "$(p2p login …)"
  p2p approve|reject|cancel|retry ID [--comment TEXT]

Every command takes --json to print the API's answer as JSON. Errors are one line on stderr and exit 1, or 64 when
the command line or its environment is wrong (nothing was sent then).
The token only travels to P2P_URL: plain http:// is refused unless the host is this machine (loopback), and a
redirect is reported, never followed.
Every POST carries an Idempotency-Key, so a retried request never registers or promotes twice.
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import ipaddress
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

VERSION = "1.0"
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 2
EXIT_USAGE = 64  # EX_USAGE from sysexits.h: a wrong command line or environment, never a --wait timeout
EXIT_INTERRUPTED = 130
SUCCEEDED = {"succeeded"}
FAILED = {"failed", "rejected", "cancelled", "expired"}
RETRYABLE_STATUSES = {502, 503, 504}


class CliError(Exception):
    """A problem to report on one line; `code` is the API's error code when there is one."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "", body=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


class UsageError(CliError):
    """The command line or its environment is wrong; found before anything is sent. Exits EXIT_USAGE."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits EXIT_USAGE rather than 2, the code `--wait` uses for a timeout."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _finite(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def seconds(text: str, name: str) -> float:
    """A duration from a flag or environment variable: a finite number greater than 0, or a UsageError naming it."""
    value = _finite(text)
    if value is None or value <= 0:
        raise UsageError(f"{name} is {text!r}: expected a number of seconds greater than 0")
    return value


def seconds_from(variable: str, default: str, *, flag: str = "", given: str | None = None) -> float:
    """The flag when given, else the environment variable when set (an empty one is unset), else the default."""
    if given is not None:
        return seconds(given, flag)
    if os.environ.get(variable):
        return seconds(os.environ[variable], variable)
    return seconds(default, variable)


def _retry_after(value: str | None) -> float:
    """Seconds to wait for a 429: Retry-After in seconds or as an HTTP date, 5 without one, never more than 60."""
    delay = _finite(value)
    if delay is None and value:
        try:
            delay = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            delay = None
    return 5.0 if delay is None else min(max(delay, 0.0), 60.0)


PRINTABLE = re.compile(r"[\x21-\x7e]+")  # ASCII without spaces or control characters: safe in a header or URL


def _portal_url(url: str) -> str:
    url = url.strip()
    if not url:
        raise UsageError("P2P_URL is not set (or pass --portal-url)")
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and PRINTABLE.fullmatch(url)
    except ValueError:
        valid = False
    if not valid:
        raise UsageError(
            f"P2P_URL (or --portal-url) is {url!r}: expected http(s)://HOST[:PORT], e.g. https://p2p.example.com"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        # Plain HTTP would carry the token across the network readable by anyone on the path.
        raise UsageError(
            f"P2P_URL (or --portal-url) is {url!r}: plain http:// is only allowed to this machine "
            "(localhost, 127.0.0.1, ::1), as the token would cross the network unencrypted; use https://"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    """Whether a URL's host is this machine: `localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(token: str) -> str:
    token = token.strip()
    if not token:
        raise UsageError("P2P_TOKEN is not set (or pass --token)")
    if not PRINTABLE.fullmatch(token):
        # The value is never shown: it is a secret.
        raise UsageError("P2P_TOKEN (or --token) holds spaces, control or non-ASCII characters; check how it is set")
    return token


def _not_json(status: int, headers, raw: bytes) -> str:
    """`HTTP 502 text/html "502 Bad Gateway"`: a one-line description of an answer that is not JSON."""
    kind = (headers.get("Content-Type") or "").split(";")[0].strip() or "no content type"
    text = raw[:4096].decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    snippet = " ".join(re.sub(r"<[^>]*>", " ", title.group(1) if title else text).split())
    snippet = snippet if len(snippet) <= 80 else snippet[:79] + "…"
    return f"HTTP {status} {kind}" + (f" {snippet!r}" if snippet else " (empty)")


def segment(name: str) -> str:
    """A name as one URL path segment: a "/" in it cannot reach another endpoint."""
    return urllib.parse.quote(name, safe="")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would send the Authorization header to wherever it points, and turn a POST
    into a GET without its body. The 3xx is raised as an HTTPError instead, and reported by Api._request."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        """None: do not make the redirected request."""
        return None


def _redirect_error(portal: str, requested: str, status: int, headers) -> CliError:
    """A one-line report of a redirect the portal's address answered, naming where it pointed (without its query,
    which may hold a signature; repr() keeps control characters off the terminal)."""
    target = urllib.parse.urlsplit(urllib.parse.urljoin(requested, (headers.get("Location") or "").strip()))
    where = urllib.parse.urlunsplit((target.scheme, target.netloc, target.path, "", ""))[:200]
    return CliError(
        f"{portal} answered HTTP {status}, a redirect to {where!r}; p2p does not follow redirects, so that the token "
        "only ever goes to P2P_URL: set P2P_URL to the portal's own address",
        status=status,
    )


class Api:
    """A tiny JSON client: bearer token, Idempotency-Key on POST, a few retries for gateways and resets.

    Redirects are not followed: the API never redirects, so one means P2P_URL points at something else (an http:// to
    https:// hop, a moved host, a sign-on page), and following it would hand the token to that other address.
    """

    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0, retries: int = 3):
        self.url = _portal_url(url)
        self.token = _token(token) if token is not None else None  # None: no Authorization (the token exchange)
        self.timeout = timeout
        self.retries = retries
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def get(self, path: str, params: dict | None = None):
        query = {key: value for key, value in (params or {}).items() if value not in (None, "")}
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self._request("GET", path + suffix)

    def post(self, path: str, body: dict, *, idempotency_key: str | None = None):
        return self._request("POST", path, body, idempotency_key=idempotency_key or str(uuid.uuid4()))

    def _request(self, method: str, path: str, body: dict | None = None, *, idempotency_key: str | None = None):
        headers = {"Accept": "application/json", "User-Agent": f"p2p-cli/{VERSION}"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        attempt = 0
        while True:
            attempt += 1
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    status, response_headers, raw = response.status, response.headers, response.read()
            except urllib.error.HTTPError as exc:
                if 300 <= exc.code < 400:
                    raise _redirect_error(self.url, self.url + path, exc.code, exc.headers) from None
                if exc.code in RETRYABLE_STATUSES and attempt <= self.retries:
                    time.sleep(min(2**attempt, 10))
                    continue
                if exc.code == 429 and attempt <= self.retries:
                    time.sleep(_retry_after(exc.headers.get("Retry-After")))
                    continue
                try:
                    raw = exc.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
                try:
                    payload = _decode(raw)
                except ValueError:
                    # A proxy's or web server's error page, not the portal's JSON.
                    raise CliError(
                        f"{self.url} answered {_not_json(exc.code, exc.headers, raw)}: "
                        "is P2P_URL the portal, and is it up?",
                        status=exc.code,
                    ) from None
                raise _api_error(exc.code, payload) from None
            except (OSError, http.client.HTTPException) as exc:
                # URLError, timeouts and resets are OSErrors; HTTPException covers a peer that does not speak HTTP.
                if attempt <= self.retries:
                    time.sleep(min(2**attempt, 10))
                    continue
                reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
                raise CliError(f"cannot reach {self.url}: {reason}") from None
            try:
                answer = _decode(raw)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise CliError(
                    f"{self.url} answered {_not_json(status, response_headers, raw)}, not a JSON object: "
                    "is P2P_URL the portal?"
                )
            return answer


def _decode(raw: bytes):
    """The JSON in raw; ValueError when it is not JSON (an empty body is not either)."""
    return json.loads(raw.decode("utf-8"))


def _api_error(status: int, payload) -> CliError:
    error = (payload or {}).get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return CliError(f"HTTP {status}", status=status, body=payload)
    message = error.get("message") or f"HTTP {status}"
    return CliError(
        f"{message} (HTTP {status} {error.get('code', '')})".strip(),
        status=status,
        code=error.get("code", ""),
        body=payload,
    )


# --- signing in with the CI job's OIDC ID token ----------------------------------------------------------------

DEFAULT_AUDIENCE = "p2p-portal"


def ci_id_token(timeout: float) -> str:
    """This CI job's OIDC ID token: P2P_ID_TOKEN when set, else asked of GitHub Actions' token service; a UsageError
    saying what to set when neither is there."""
    given = os.environ.get("P2P_ID_TOKEN", "").strip()
    if given:
        return _token_text(given, "P2P_ID_TOKEN")
    url = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL", "").strip()
    bearer = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "").strip()
    if not (url and bearer):
        raise UsageError(
            "P2P_TOKEN is not set (or pass --token), and there is no CI ID token to exchange for one: set P2P_ID_TOKEN "
            "(GitLab: an id_tokens: entry), or in GitHub Actions grant `permissions: id-token: write`"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname or "")):
        raise UsageError("ACTIONS_ID_TOKEN_REQUEST_URL must be https")
    audience = os.environ.get("P2P_OIDC_AUDIENCE", "").strip() or DEFAULT_AUDIENCE
    separator = "&" if parts.query else "?"
    request = urllib.request.Request(
        f"{url}{separator}audience={urllib.parse.quote(audience, safe='')}",
        headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json", "User-Agent": f"p2p-cli/{VERSION}"},
    )
    opener = urllib.request.build_opener(_RefuseRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            answer = _decode(response.read(65536))
    except urllib.error.HTTPError as exc:
        raise CliError(f"GitHub Actions' ID token service answered HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise CliError(f"cannot get an ID token from GitHub Actions: {type(exc).__name__}") from None
    value = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(value, str) or not value:
        raise CliError("GitHub Actions' ID token service answered without a token (value)")
    return _token_text(value, "the ID token")


def _token_text(value: str, what: str) -> str:
    if not PRINTABLE.fullmatch(value):
        raise UsageError(f"{what} holds spaces, control or non-ASCII characters; check how it is set")
    return value


def exchange_id_token(portal_url: str, timeout: float) -> str:
    """A short-lived CI token from the portal for this job's ID token (POST /api/v1/auth/oidc/)."""
    portal_url = _portal_url(portal_url)  # a wrong P2P_URL is reported before any token is asked for
    id_token = ci_id_token(timeout)
    try:
        answer = Api(portal_url, None, timeout=timeout).post("/api/v1/auth/oidc/", {"token": id_token})
    except UsageError:
        raise
    except CliError as exc:
        raise CliError(f"the portal refused this job's ID token: {exc}", status=exc.status, code=exc.code) from None
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise CliError("the portal answered the token exchange without a token")
    return token


# --- helpers ----------------------------------------------------------------------------------------------------


def split_image(text: str) -> tuple[str, str | None, str | None]:
    """("host/path/name", tag, digest) from IMAGE[:TAG][@DIGEST]; a port's colon is not a tag."""
    rest, _, digest = text.partition("@")
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
    return name, tag or None, digest or None


# Metadata keys of their own; any other --meta KEY=VALUE is a label.
META_KEYS = ("git_sha", "branch", "build_url", "commit_time", "repo_url")


def ci_metadata() -> dict:
    """Build metadata the common CI systems expose, used when --meta does not say otherwise: the commit, branch and
    build URL, the repository's URL, and when the commit was made (lead time for changes starts there)."""
    env = os.environ
    meta = {}
    sha = env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or env.get("GIT_COMMIT")
    branch = env.get("GITHUB_REF_NAME") or env.get("CI_COMMIT_REF_NAME") or env.get("GIT_BRANCH")
    url = env.get("CI_JOB_URL") or env.get("BUILD_URL")
    github = env.get("GITHUB_SERVER_URL", "https://github.com")
    if not url and env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        url = f"{github}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    repo_url = env.get("CI_PROJECT_URL") or (
        f"{github}/{env['GITHUB_REPOSITORY']}" if env.get("GITHUB_REPOSITORY") else ""
    )
    # GitLab says when the commit was made; elsewhere the checkout's git does, when there is one.
    commit_time = env.get("CI_COMMIT_TIMESTAMP") or git_commit_time(sha or "HEAD")
    for key, value in (
        ("git_sha", sha),
        ("branch", branch),
        ("build_url", url),
        ("repo_url", repo_url),
        ("commit_time", commit_time),
    ):
        if value:
            meta[key] = value
    return meta


def git_commit_time(revision: str) -> str | None:
    """The committer date of `revision` in the current directory's git repository (ISO 8601 with its offset), or
    None when there is no git, no repository or no such commit."""
    try:
        done = subprocess.run(
            ["git", "show", "-s", "--format=%cI", revision, "--"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    moment = done.stdout.strip()
    return moment if done.returncode == 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]+(Z|[+-]\d\d:\d\d)", moment) else None


def parse_meta(pairs: list[str]) -> dict:
    meta = ci_metadata()
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta {pair!r}: expected KEY=VALUE")
        if key in META_KEYS:
            meta[key] = value
        else:
            labels[key] = value
    if labels:
        meta["labels"] = labels
    return meta


def output(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def resolve_artifact(api: Api, text: str) -> int:
    """An artifact id from `42`, `INTEGRATION:TAG` or `INTEGRATION@sha256:…`."""
    if text.isascii() and text.isdigit():
        return int(text)
    name, tag, digest = split_image(text)
    integration = name.rsplit("/", 1)[-1]
    if not integration or not (tag or digest):
        raise UsageError(f"artifact {text!r}: give an id, INTEGRATION:TAG or INTEGRATION@DIGEST")
    page = api.get(f"/api/v1/integrations/{segment(integration)}/artifacts/", {"tag": tag, "digest": digest})
    results = page.get("results", [])
    if not results:
        raise CliError(f"no artifact {text!r} in integration {integration!r}")
    return results[0]["id"]


def promotion_line(p: dict) -> str:
    progress = p.get("progress") or {}
    done, total = progress.get("bytes_done", 0), progress.get("bytes_total", 0)
    share = f" {100 * done // total}%" if total else ""
    kind = p.get("kind") or "promotion"  # "rollback" for a rollback, whose copy also runs from one bucket to another
    line = f"{kind} {p['id']} {p['integration']} {p.get('from_env') or '-'} → {p['to_env']}: {p['state']}{share}"
    if p.get("error"):
        line += f" — {p['error']}"
    elif p.get("waiting_for"):
        line += f" — waits: {p['waiting_for']}"
    return line


def wait_for_promotion(api: Api, args, promotion_id: int) -> int:
    deadline = time.monotonic() + args.timeout
    last_state = None
    while True:
        promotion = api.get(f"/api/v1/promotions/{promotion_id}/")
        final = promotion["state"] in SUCCEEDED | FAILED
        if promotion["state"] != last_state and not args.json and not final:
            # Progress on stderr; the final state is printed once, on stdout, below.
            print(promotion_line(promotion), file=sys.stderr, flush=True)
            last_state = promotion["state"]
        if final:
            output(args, promotion, promotion_line(promotion))
            return EXIT_OK if promotion["state"] in SUCCEEDED else EXIT_FAILED
        if time.monotonic() >= deadline:
            output(args, promotion, f"timed out after {args.timeout:g}s: {promotion_line(promotion)}")
            return EXIT_TIMEOUT
        time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())) or 0.1)


def wait_for_job(api: Api, args, job: dict) -> int:
    deadline = time.monotonic() + args.timeout
    while job["state"] not in ("succeeded", "failed"):
        if time.monotonic() >= deadline:
            output(args, job, f"timed out after {args.timeout:g}s: job {job['id']} is {job['state']}")
            return EXIT_TIMEOUT
        time.sleep(args.interval)
        job = api.get(f"/api/v1/jobs/{job['id']}/")
    result = job.get("result") or {}
    text = f"job {job['id']} {job['state']}" + (
        f": {result.get('digest')} (artifact {result.get('artifact')})"
        if job["state"] == "succeeded"
        else f": {job['error']}"
    )
    output(args, job, text)
    return EXIT_OK if job["state"] == "succeeded" else EXIT_FAILED


# --- commands ---------------------------------------------------------------------------------------------------


def cmd_push(api: Api, args) -> int:
    _, tag, digest = split_image(args.image)
    if not tag:
        raise UsageError(f"{args.image!r} has no tag: write IMAGE:TAG")
    body = {"env": args.env, "tag": tag, "metadata": parse_meta(args.meta)}
    if args.digest or digest:
        body["digest"] = args.digest or digest
    result = api.post(
        f"/api/v1/integrations/{segment(args.integration)}/artifacts/",
        body,
        idempotency_key=args.idempotency_key,
    )
    verb = "registered" if result.get("created") else "already registered"
    output(
        args,
        result,
        f"{verb} {result['integration']} {result['digest']} in {result['env']} as {result['tag']} "
        f"(artifact {result['id']})",
    )
    return EXIT_OK


def cmd_import(api: Api, args) -> int:
    body = {"source": args.source}
    if args.tag:
        body["tag"] = args.tag
    username = args.source_username or os.environ.get("P2P_SOURCE_USERNAME")
    password = os.environ.get("P2P_SOURCE_PASSWORD")
    if username or password:
        body["source_credentials"] = {"username": username or "", "password": password or ""}
    job = api.post(
        f"/api/v1/integrations/{segment(args.integration)}/imports/",
        body,
        idempotency_key=args.idempotency_key,
    )
    if args.wait:
        return wait_for_job(api, args, job)
    output(args, job, f"import job {job['id']} {job['state']} (follow: p2p job {job['id']})")
    return EXIT_OK


def cmd_job(api: Api, args) -> int:
    job = api.get(f"/api/v1/jobs/{args.id}/")
    if args.wait:
        return wait_for_job(api, args, job)
    output(args, job, f"job {job['id']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
    return EXIT_OK


def cmd_check(api: Api, args) -> int:
    artifact_id = resolve_artifact(api, args.artifact)
    body = {"name": args.name, "status": args.status}
    if args.check_url:
        body["url"] = args.check_url
    result = api.post(f"/api/v1/artifacts/{artifact_id}/checks/", body, idempotency_key=args.idempotency_key)
    output(args, result, f"check {result['name']} {result['status']} on artifact {result['artifact']}")
    return EXIT_OK


def cmd_promote(api: Api, args) -> int:
    name, tag, digest = split_image(args.image)
    integration = args.integration or name.rsplit("/", 1)[-1]
    if not args.dest_stage:
        raise UsageError("give --dest-stage (or set DEST_STAGE)")
    if not (tag or digest):
        raise UsageError(f"{args.image!r} has no tag or digest: write IMAGE:TAG")
    body = {"integration": integration, "artifact": digest or tag, "to_env": args.dest_stage}
    if args.source_stage:
        body["from_env"] = args.source_stage
    if args.reason:
        body["reason"] = args.reason
    if args.target_tag:
        body["tag"] = args.target_tag
    if args.at:
        body["not_before"] = args.at
    promotion = api.post("/api/v1/promotions/", body, idempotency_key=args.idempotency_key)
    if args.wait:
        return wait_for_promotion(api, args, promotion["id"])
    output(args, promotion, promotion_line(promotion))
    return EXIT_OK


def cmd_status(api: Api, args) -> int:
    if args.wait:
        return wait_for_promotion(api, args, args.id)
    promotion = api.get(f"/api/v1/promotions/{args.id}/")
    output(args, promotion, promotion_line(promotion))
    return EXIT_OK


def cmd_rollback(api: Api, args) -> int:
    body = {"env": args.env, "to": args.to, "reason": args.reason}
    promotion = api.post(
        f"/api/v1/integrations/{segment(args.integration)}/rollback/",
        body,
        idempotency_key=args.idempotency_key,
    )
    if args.wait:
        return wait_for_promotion(api, args, promotion["id"])
    output(args, promotion, promotion_line(promotion))
    return EXIT_OK


def cmd_login(api: Api, args) -> int:
    creds = api.post(
        f"/api/v1/integrations/{segment(args.integration)}/push-credentials/",
        {"env": args.env},
        idempotency_key=args.idempotency_key,
    )
    if args.json:
        output(args, creds, "")
        return EXIT_OK
    if creds.get("type") == "bearer":
        # `docker login` takes no bearer token. Docker reads one from config.json ("registrytoken"), so a Docker
        # config of its own is written; oras and skopeo take $P2P_REGISTRY_TOKEN with --registry-token.
        config = json.dumps({"auths": {creds["registry"]: {"registrytoken": creds["token"]}}})
        print(f"# a token for {creds['scope']} only, valid until {creds['expires_at']}")
        print(f"export P2P_REGISTRY_TOKEN={shlex.quote(creds['token'])}")
        print(f'export DOCKER_CONFIG="$(mktemp -d)" && printf %s {shlex.quote(config)} > "$DOCKER_CONFIG/config.json"')
        return EXIT_OK
    print(
        f"printf '%s' {shlex.quote(creds['password'])} | docker login --username {shlex.quote(creds['username'])} "
        f"--password-stdin {shlex.quote(creds['registry'])}"
    )
    return EXIT_OK


def _decision(action: str):
    def run(api: Api, args) -> int:
        promotion = api.post(
            f"/api/v1/promotions/{args.id}/{action}/",
            {"comment": args.comment or ""},
            idempotency_key=args.idempotency_key,
        )
        output(args, promotion, promotion_line(promotion))
        return EXIT_OK

    return run


# --- arguments ------------------------------------------------------------------------------------------------------

COMMON_DEFAULTS = {
    "json": False,
    "portal_url": lambda: os.environ.get("P2P_URL", ""),
    "token": lambda: os.environ.get("P2P_TOKEN", ""),
    "idempotency_key": None,
}


def build_parser() -> argparse.ArgumentParser:
    # Given before or after the command; SUPPRESS keeps a subcommand's default from overwriting the top-level value.
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON")
    common.add_argument("--portal-url", default=argparse.SUPPRESS, help="portal URL (default: $P2P_URL)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (default: $P2P_TOKEN)")
    common.add_argument("--idempotency-key", default=argparse.SUPPRESS, help="reuse a key to make a retried POST safe")
    waiting = Parser(add_help=False)
    waiting.add_argument("--wait", action="store_true", help="wait until the work ends")
    # Read as text and checked in main() by seconds(), like the environment variables they override.
    waiting.add_argument("--timeout", help="seconds to wait, exit 2 after (default: $P2P_WAIT_TIMEOUT or 1800)")
    waiting.add_argument("--interval", help="seconds between polls (default: $P2P_WAIT_INTERVAL or 5)")

    parser = Parser(prog="p2p", description="P2P Portal CLI for CI pipelines.", parents=[common])
    parser.add_argument("--version", action="version", version=f"p2p {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("push", parents=[common], help="register an image pushed to an environment's bucket")
    p.add_argument("integration")
    p.add_argument("env")
    p.add_argument("image", metavar="IMAGE:TAG")
    p.add_argument("--digest", help="the digest you pushed; the portal checks the tag points at it")
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="git_sha, branch, build_url, commit_time, repo_url or a label",
    )
    p.set_defaults(run=cmd_push)

    p = sub.add_parser("import", parents=[common, waiting], help="copy an image in from a build registry")
    p.add_argument("integration")
    p.add_argument("source", metavar="HOST/REPO:TAG")
    p.add_argument("--tag", help="tag in the bucket (default: the source's)")
    p.add_argument("--source-username", help="user for the source registry (password from $P2P_SOURCE_PASSWORD)")
    p.set_defaults(run=cmd_import)

    p = sub.add_parser("job", parents=[common, waiting], help="show (or wait for) a background job")
    p.add_argument("id", type=int)
    p.set_defaults(run=cmd_job)

    p = sub.add_parser("check", parents=[common], help="report a check result")
    p.add_argument("artifact", help="artifact id, INTEGRATION:TAG or INTEGRATION@DIGEST")
    p.add_argument("name")
    p.add_argument("status", choices=["passed", "failed"])
    p.add_argument("--url", dest="check_url", help="link to the check's report")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("promote", parents=[common, waiting], help="request a promotion")
    p.add_argument("image", metavar="IMAGE:TAG")
    p.add_argument("--source-stage", default=os.environ.get("SOURCE_STAGE"), help="default: $SOURCE_STAGE")
    p.add_argument("--dest-stage", default=os.environ.get("DEST_STAGE"), help="default: $DEST_STAGE")
    p.add_argument("--integration", help="integration name (default: the image's last path component)")
    p.add_argument("--target-tag", help="tag in the destination (default: the source tag)")
    p.add_argument("--reason", default="")
    p.add_argument(
        "--at",
        metavar="TIME",
        help="start the copy no earlier than TIME, with its UTC offset (2027-01-05T09:00+01:00)",
    )
    p.set_defaults(run=cmd_promote)

    p = sub.add_parser("status", parents=[common, waiting], help="show (or wait for) a promotion")
    p.add_argument("id", type=int)
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("rollback", parents=[common, waiting], help="return a bucket to an earlier artifact")
    p.add_argument("integration")
    p.add_argument("env")
    p.add_argument("to", help="artifact id or digest that arrived there before")
    p.add_argument("--reason", required=True)
    p.set_defaults(run=cmd_rollback)

    p = sub.add_parser("login", parents=[common], help="print a docker login command for a bucket's registry")
    p.add_argument("integration")
    p.add_argument("env")
    p.set_defaults(run=cmd_login)

    for action in ("approve", "reject", "cancel", "retry"):
        p = sub.add_parser(action, parents=[common], help=f"{action} a promotion")
        p.add_argument("id", type=int)
        p.add_argument("--comment", default="")
        p.set_defaults(run=_decision(action))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits EXIT_USAGE on a usage error
    for name, default in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default() if callable(default) else default)
    try:
        if hasattr(args, "timeout"):  # the commands that can --wait
            args.timeout = seconds_from("P2P_WAIT_TIMEOUT", "1800", flag="--timeout", given=args.timeout)
            args.interval = seconds_from("P2P_WAIT_INTERVAL", "5", flag="--interval", given=args.interval)
        key = args.idempotency_key
        if key is not None and not (PRINTABLE.fullmatch(key) and len(key) <= 255):
            raise UsageError(f"--idempotency-key {key!r}: expected 1 to 255 printable ASCII characters, no spaces")
        http_timeout = seconds_from("P2P_HTTP_TIMEOUT", "30")
        if not args.token.strip():
            # No stored secret: this CI job's OIDC ID token is exchanged for a short-lived CI token.
            args.token = exchange_id_token(args.portal_url, http_timeout)
        api = Api(args.portal_url, args.token, timeout=http_timeout)
        return args.run(api, args)
    except CliError as exc:
        # With --json, stdout carries only what the portal answered in JSON; the error is always one line on stderr.
        if args.json and exc.body is not None:
            print(json.dumps(exc.body, indent=2, sort_keys=True))
        print(f"p2p {args.command}: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # an answer this version does not understand, or a bug: still one line, no traceback
        message = f"unexpected {type(exc).__name__}: {exc}"
        for secret in {args.token, args.token.strip()} - {""}:
            message = message.replace(secret, "<token>")
        print(
            f"p2p {args.command}: {one_line(message)} (is P2P_URL the portal, and this p2p its current version?)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
