#!/usr/bin/env python3
"""p2p: the P2P Portal command line for CI pipelines. One file, standard library only.

Get it with:  curl -fsSL -o p2p "$P2P_URL/api/v1/cli/p2p" && chmod +x p2p
Configure:    P2P_URL (the portal, e.g. https://p2p.example.com) and P2P_TOKEN (a p2p_… API token)

  p2p push INTEGRATION ENV IMAGE:TAG [--digest D] [--meta key=value …]
  p2p import INTEGRATION SOURCE [--tag T] [--wait]
  p2p check ARTIFACT NAME passed|failed [--url URL]          ARTIFACT: id, INTEGRATION:TAG or INTEGRATION@DIGEST
  p2p promote IMAGE:TAG --source-stage ENV --dest-stage ENV [--wait]   (SOURCE_STAGE / DEST_STAGE as defaults)
  p2p status ID [--wait]                                     exit 0 succeeded, 1 failed/rejected/cancelled, 2 timeout
  p2p rollback INTEGRATION ENV TO --reason TEXT [--wait]
  p2p login INTEGRATION ENV                                  prints a docker login command (eval "$(p2p login …)")
  p2p approve|reject|cancel|retry ID [--comment TEXT]

Every command takes --json to print the API's answer as JSON. Errors are one line on stderr and exit 1.
Every POST carries an Idempotency-Key, so a retried request never registers or promotes twice.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

VERSION = "1.0"
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 2
SUCCEEDED = {"succeeded"}
FAILED = {"failed", "rejected", "cancelled"}
RETRYABLE_STATUSES = {502, 503, 504}


class CliError(Exception):
    """A problem to report on one line; `code` is the API's error code when there is one."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "", body=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


class Api:
    """A tiny JSON client: bearer token, Idempotency-Key on POST, a few retries for gateways and resets."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retries: int = 3):
        if not url:
            raise CliError("P2P_URL is not set (or pass --portal-url)")
        if not token:
            raise CliError("P2P_TOKEN is not set (or pass --token)")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries

    def get(self, path: str, params: dict | None = None):
        query = {key: value for key, value in (params or {}).items() if value not in (None, "")}
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self._request("GET", path + suffix)

    def post(self, path: str, body: dict, *, idempotency_key: str | None = None):
        return self._request("POST", path, body, idempotency_key=idempotency_key or str(uuid.uuid4()))

    def _request(self, method: str, path: str, body: dict | None = None, *, idempotency_key: str | None = None):
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": f"p2p-cli/{VERSION}",
        }
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
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return _decode(response.read())
            except urllib.error.HTTPError as exc:
                payload = _decode(exc.read())
                if exc.code in RETRYABLE_STATUSES and attempt <= self.retries:
                    time.sleep(min(2**attempt, 10))
                    continue
                if exc.code == 429 and attempt <= self.retries:
                    time.sleep(min(float(exc.headers.get("Retry-After") or 5), 60))
                    continue
                raise _api_error(exc.code, payload) from None
            except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                if attempt <= self.retries:
                    time.sleep(min(2**attempt, 10))
                    continue
                reason = getattr(exc, "reason", exc)
                raise CliError(f"cannot reach {self.url}: {reason}") from None


def _decode(raw: bytes):
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"error": {"code": "", "message": raw[:200].decode("utf-8", "replace").strip(), "details": {}}}


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


# --- helpers ----------------------------------------------------------------------------------------------------


def split_image(text: str) -> tuple[str, str | None, str | None]:
    """("host/path/name", tag, digest) from IMAGE[:TAG][@DIGEST]; a port's colon is not a tag."""
    rest, _, digest = text.partition("@")
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
    return name, tag or None, digest or None


def ci_metadata() -> dict:
    """Build metadata the common CI systems expose, used when --meta does not say otherwise."""
    env = os.environ
    meta = {}
    sha = env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or env.get("GIT_COMMIT")
    branch = env.get("GITHUB_REF_NAME") or env.get("CI_COMMIT_REF_NAME") or env.get("GIT_BRANCH")
    url = env.get("CI_JOB_URL") or env.get("BUILD_URL")
    if not url and env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        url = f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    for key, value in (("git_sha", sha), ("branch", branch), ("build_url", url)):
        if value:
            meta[key] = value
    return meta


def parse_meta(pairs: list[str]) -> dict:
    meta = ci_metadata()
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--meta {pair!r}: expected key=value")
        if key in ("git_sha", "branch", "build_url"):
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
    if text.isdigit():
        return int(text)
    name, tag, digest = split_image(text)
    integration = name.rsplit("/", 1)[-1]
    if not integration or not (tag or digest):
        raise CliError(f"artifact {text!r}: give an id, INTEGRATION:TAG or INTEGRATION@DIGEST")
    page = api.get(f"/api/v1/integrations/{urllib.parse.quote(integration)}/artifacts/", {"tag": tag, "digest": digest})
    results = page.get("results", [])
    if not results:
        raise CliError(f"no artifact {text!r} in integration {integration!r}")
    return results[0]["id"]


def promotion_line(p: dict) -> str:
    progress = p.get("progress") or {}
    done, total = progress.get("bytes_done", 0), progress.get("bytes_total", 0)
    share = f" {100 * done // total}%" if total else ""
    line = f"promotion {p['id']} {p['integration']} {p.get('from_env') or '-'} → {p['to_env']}: {p['state']}{share}"
    if p.get("error"):
        line += f" — {p['error']}"
    return line


def wait_for_promotion(api: Api, args, promotion_id: int) -> int:
    deadline = time.monotonic() + args.timeout
    last_state = None
    while True:
        promotion = api.get(f"/api/v1/promotions/{promotion_id}/")
        if promotion["state"] != last_state and not args.json:
            print(promotion_line(promotion), file=sys.stderr, flush=True)
            last_state = promotion["state"]
        if promotion["state"] in SUCCEEDED | FAILED:
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
        raise CliError(f"{args.image!r} has no tag: write IMAGE:TAG")
    body = {"env": args.env, "tag": tag, "metadata": parse_meta(args.meta)}
    if args.digest or digest:
        body["digest"] = args.digest or digest
    result = api.post(
        f"/api/v1/integrations/{urllib.parse.quote(args.integration)}/artifacts/",
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
        f"/api/v1/integrations/{urllib.parse.quote(args.integration)}/imports/",
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
        raise CliError("give --dest-stage (or set DEST_STAGE)")
    if not (tag or digest):
        raise CliError(f"{args.image!r} has no tag or digest: write IMAGE:TAG")
    body = {"integration": integration, "artifact": digest or tag, "to_env": args.dest_stage}
    if args.source_stage:
        body["from_env"] = args.source_stage
    if args.reason:
        body["reason"] = args.reason
    if args.target_tag:
        body["tag"] = args.target_tag
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
        f"/api/v1/integrations/{urllib.parse.quote(args.integration)}/rollback/",
        body,
        idempotency_key=args.idempotency_key,
    )
    if args.wait:
        return wait_for_promotion(api, args, promotion["id"])
    output(args, promotion, promotion_line(promotion))
    return EXIT_OK


def cmd_login(api: Api, args) -> int:
    creds = api.post(
        f"/api/v1/integrations/{urllib.parse.quote(args.integration)}/push-credentials/",
        {"env": args.env},
        idempotency_key=args.idempotency_key,
    )
    if args.json:
        output(args, creds, "")
        return EXIT_OK
    if not creds.get("username"):
        print(f"# {creds['registry']} needs no credentials (ambient or anonymous access)")
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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON")
    common.add_argument("--portal-url", default=argparse.SUPPRESS, help="portal URL (default: $P2P_URL)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (default: $P2P_TOKEN)")
    common.add_argument("--idempotency-key", default=argparse.SUPPRESS, help="reuse a key to make a retried POST safe")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true", help="wait until the work ends")
    waiting.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("P2P_WAIT_TIMEOUT", 1800)),
        help="seconds to wait (exit 2 after)",
    )
    waiting.add_argument(
        "--interval", type=float, default=float(os.environ.get("P2P_WAIT_INTERVAL", 5)), help="seconds between polls"
    )

    parser = argparse.ArgumentParser(prog="p2p", description="P2P Portal CLI for CI pipelines.", parents=[common])
    parser.add_argument("--version", action="version", version=f"p2p {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("push", parents=[common], help="register an image pushed to an environment's bucket")
    p.add_argument("integration")
    p.add_argument("env")
    p.add_argument("image", metavar="IMAGE:TAG")
    p.add_argument("--digest", help="the digest you pushed; the portal checks the tag points at it")
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="git_sha, branch, build_url or a label"
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
    args = build_parser().parse_args(argv)
    for name, default in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default() if callable(default) else default)
    try:
        api = Api(args.portal_url, args.token, timeout=float(os.environ.get("P2P_HTTP_TIMEOUT", 30)))
        return args.run(api, args)
    except CliError as exc:
        if args.json and exc.body is not None:
            print(json.dumps(exc.body, indent=2, sort_keys=True))
        print(f"p2p {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
