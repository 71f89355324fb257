"""Secrets never reach logs, pages, API error bodies, audit entries or job records.

Every test drives a real flow (real registries with htpasswd or token auth, the RQ worker, the API, the CLI) with every
logger at DEBUG, then looks for the secrets it used in everything the flow left behind: the formatted log records
(tracebacks included), the responses, and the rows of jobs, promotions, audit entries, webhook deliveries and stored
idempotent responses. Loggers the settings cap below DEBUG (SQL, botocore) keep that cap: it is what LOG_LEVEL=DEBUG
deploys, and part of what is proved here.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from ci_integrations.models import (
    ApiToken,
    AuditEntry,
    Bucket,
    IdempotencyRecord,
    ImportJob,
    Integration,
    Promotion,
    Registry,
    Webhook,
    WebhookDelivery,
    Workflow,
    WorkflowStep,
)
from ci_integrations.registry.auth import TOKEN_CACHE
from ci_integrations.registry.client_cache import CLIENTS
from ci_integrations.registry.errors import redact, remember_secret
from ci_integrations.services.actors import Actor
from ci_integrations.services.imports import artifact_import
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.tokens import token_create, token_parse, token_revoke
from ci_integrations.services.webhooks import webhook_create
from tests.registry.fault_proxy import FaultProxy
from tests.support.images import push_random_image
from tests.support.registry_server import start_registry, start_token_server

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ADMIN = Actor.system("security-test")
CLI = Path(__file__).resolve().parents[2] / "ci_integrations" / "cli" / "p2p.py"
# Loggers the brief of these tests puts at DEBUG whatever the settings say; everything else keeps its configured level.
DEBUG_LOGGERS = ("urllib3", "requests", "django", "rq", "ci_integrations")
_PLAIN_RECORD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


# --- capture and search ---------------------------------------------------------------------------------------------


class Captured(logging.Handler):
    """Every record, formatted as a log file would hold it (traceback included), plus any extra fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _PLAIN_RECORD}
        self.lines.append(f"{text} {extras!r}" if extras else text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs():
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *DEBUG_LOGGERS)}
    handler = Captured()
    root.setLevel(logging.DEBUG)
    for name in DEBUG_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(autouse=True)
def fresh_registry_state(settings):
    """No bearer token or shared client from an earlier test; quick copy retries."""
    settings.P2P_COPY_RETRY_DELAYS = [0.01]
    settings.P2P_API_TOKEN_RATE = "100000/minute"
    TOKEN_CACHE.clear()
    CLIENTS.clear()
    yield
    TOKEN_CACHE.clear()
    CLIENTS.clear()


def basic_value(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def platform_secrets() -> list[str]:
    """The portal's own keys: never anywhere, whatever the flow."""
    peppers = [item.partition("=")[2] for item in settings.P2P_TOKEN_PEPPERS]
    return [settings.SECRET_KEY, *settings.P2P_FERNET_KEYS, *peppers]


def stored_rows() -> dict[str, str]:
    """Everything the flows write that people or tools read back later, as text."""

    def dump(model) -> str:
        return json.dumps(list(model.objects.values()), default=str, sort_keys=True)

    return {
        "jobs": dump(ImportJob),
        "promotions": dump(Promotion),
        "audit entries": dump(AuditEntry),
        "webhook deliveries": dump(WebhookDelivery),
        "stored idempotent responses": dump(IdempotencyRecord),
    }


def assert_nowhere(secrets: list[str], **places: str) -> None:
    secrets = [s for s in [*secrets, *platform_secrets()] if s]
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:3]}…, {len(secret)} chars) leaked into {where}"


def assert_nothing_leaked(secrets: list[str], logs: Captured, **responses: str) -> None:
    assert_nowhere(secrets, logs=logs.text, **stored_rows(), **responses)


# --- the world these flows run in ------------------------------------------------------------------------------------


def pipeline(source_url: str, target_url: str, *, target_credentials: dict | None = None, **target_options):
    """qa (on source_url) → staging (on target_url, optionally with stored credentials), no approvals needed."""
    suffix = uuid.uuid4().hex[:8]
    fast = {"retry_attempts": 1, "retry_base_delay": 0.01, "read_timeout": 10}
    source = Registry.objects.create(name=f"src-{suffix}", url=source_url, options=fast)
    target = Registry.objects.create(name=f"dst-{suffix}", url=target_url, options={**fast, **target_options})
    if target_credentials:
        target.set_credentials(target_credentials)
        target.save()
    workflow = Workflow.objects.create(name=f"flow-{suffix}")
    WorkflowStep.objects.create(workflow=workflow, position=0, from_env="qa", to_env="staging")
    integration = Integration.objects.create(name=f"app-{suffix}", workflow=workflow)
    qa = Bucket.objects.create(
        integration=integration, env="qa", position=0, registry=source, repository=f"app-{suffix}/qa"
    )
    staging = Bucket.objects.create(
        integration=integration, env="staging", position=1, registry=target, repository=f"app-{suffix}/staging"
    )
    return integration, qa, staging


def ci_token(integration: Integration) -> str:
    _, plain = token_create(
        name=f"ci-{uuid.uuid4().hex[:6]}", kind=ApiToken.Kind.CI, actor=ADMIN, integrations=[integration], system=True
    )
    return plain


def api(token: str, method: str, path: str, body=None, **headers):
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    data = json.dumps(body) if body is not None else ""
    return Client().generic(
        method, path, data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}", **extra
    )


@pytest.fixture(scope="module")
def plain_registry():
    server = start_registry()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def locked_registry():
    """A registry that wants Basic auth: user `builder`, and `ci` with a short password (a 12-character Basic value)."""
    server = start_registry(htpasswd={"builder": "builder-Pa55word-long", "ci": "pw-123"})
    yield server
    server.stop()


# --- imports with source credentials ---------------------------------------------------------------------------------


def test_import_source_credentials_reach_no_log_job_audit_or_api_answer_when_wrong_or_right(
    plain_registry, locked_registry, rq_queues, run_worker, logs
):
    integration, _, _ = pipeline(plain_registry.url, plain_registry.url)
    # Imports read only from registries configured in the portal (or listed hosts, never on loopback).
    Registry.objects.create(name=f"locked-{uuid.uuid4().hex[:8]}", url=locked_registry.url)
    token = ci_token(integration)
    push_random_image(locked_registry.url, "builds/app", "7.0.0", auth=("builder", "builder-Pa55word-long"))
    source = f"{locked_registry.host}/builds/app:7.0.0"
    wrong = {"username": "builder", "password": "Wrong-Pa55word-guess"}
    right = {"username": "builder", "password": "builder-Pa55word-long"}

    answers = []
    for credentials in (wrong, right):
        created = api(
            token,
            "POST",
            f"/api/v1/integrations/{integration.name}/imports/",
            {"source": source, "source_credentials": credentials},
            **{"Idempotency-Key": uuid.uuid4().hex},
        )
        assert created.status_code == 202, created.content
        answers.append(created.content.decode())
        run_worker()
        job = api(token, "GET", f"/api/v1/jobs/{created.json()['id']}/")
        answers.append(job.content.decode())

    failed, succeeded = ImportJob.objects.order_by("pk")
    assert failed.state == ImportJob.State.FAILED and "refused the configured credentials" in failed.error
    assert succeeded.state == ImportJob.State.SUCCEEDED, succeeded.error
    assert AuditEntry.objects.filter(action="artifact.import_failed").exists()
    secrets = [wrong["password"], right["password"], basic_value(**wrong), basic_value(**right)]
    assert_nothing_leaked(secrets, logs, answers="\n".join(answers))


def test_an_import_from_a_token_auth_registry_leaks_neither_the_password_nor_the_bearer_tokens(
    plain_registry, rq_queues, run_worker, logs
):
    tokens = start_token_server(users={"builder": "token-realm-Pa55word"})
    issued: list[str] = []
    issue = tokens.issue

    def recording(user, scopes):
        issued.append(issue(user, scopes))
        return issued[-1]

    tokens.issue = recording
    source = start_registry(token_auth=tokens.registry_config)

    def echo_bearer_on_missing_tag(method, path, headers, body):
        # A registry (or the proxy in front of it) that quotes the request's Authorization in its 404.
        if path.endswith("/manifests/missing") and headers.get("Authorization"):
            said = {"seen": {"authorization": headers["Authorization"]}, "error": "no such tag"}
            return 404, {"Content-Type": "application/json"}, json.dumps(said).encode()
        return None

    proxy = FaultProxy(source.url, intercept=echo_bearer_on_missing_tag)
    try:
        push_random_image(source.url, "builds/app", "8.0.0", auth=("builder", "token-realm-Pa55word"))
        integration, _, _ = pipeline(plain_registry.url, plain_registry.url)
        # An import may reach a loopback host:port only where a configured registry lives: the registry (behind the
        # proxy) and its token service, which answers on a port of its own, are both configured.
        Registry.objects.create(name="token-registry", url=proxy.url)
        Registry.objects.create(name="token-service", url=tokens.url)
        for password, tag in (
            ("not-the-realm-password", "8.0.0"),
            ("token-realm-Pa55word", "8.0.0"),
            ("token-realm-Pa55word", "missing"),
        ):
            artifact_import(
                integration=integration,
                source=f"{proxy.host}/builds/app:{tag}",
                source_credentials={"username": "builder", "password": password},
                actor=ADMIN,
            )
            run_worker()
        wrong, right, missing = ImportJob.objects.order_by("pk")
        assert wrong.state == ImportJob.State.FAILED and "401" in wrong.error
        assert right.state == ImportJob.State.SUCCEEDED, right.error
        assert missing.state == ImportJob.State.FAILED and "404" in missing.error
        assert issued and proxy.requests(path="/manifests/missing")
        secrets = ["not-the-realm-password", "token-realm-Pa55word", *issued]
        secrets += [basic_value("builder", "token-realm-Pa55word"), basic_value("builder", "not-the-realm-password")]
        assert_nothing_leaked(secrets, logs)
    finally:
        proxy.stop()
        source.stop()
        tokens.stop()


# --- promotions whose destination refuses, echoing what it was sent -------------------------------------------------


@pytest.mark.parametrize(
    "status,body_of",
    [
        # A proxy error page quoting the request headers as JSON: the short Basic value slips past the patterns.
        (500, lambda auth: json.dumps({"request": {"headers": {"Authorization": auth}}}).encode()),
        # An OCI error whose message repeats the header and the password.
        (
            401,
            lambda auth: json.dumps(
                {"errors": [{"code": "UNAUTHORIZED", "message": f"bad {auth} (ci/pw-123)"}]}
            ).encode(),
        ),
        # Plain text with the header in another spelling.
        (502, lambda auth: f"X-Forwarded-Authorization={auth}".encode()),
    ],
    ids=["500-json-headers", "401-oci-error", "502-text"],
)
def test_a_destination_echoing_the_authorization_header_leaks_it_nowhere(
    status, body_of, plain_registry, locked_registry, rq_queues, run_worker, logs
):
    def refuse_manifest_puts(method, path, headers, body):
        if method == "PUT" and "/manifests/" in path and headers.get("Authorization"):
            return status, {"Content-Type": "application/json"}, body_of(headers["Authorization"])
        return None

    proxy = FaultProxy(locked_registry.url, intercept=refuse_manifest_puts)
    try:
        credentials = {"username": "ci", "password": "pw-123"}
        integration, qa, staging = pipeline(plain_registry.url, proxy.url, target_credentials=credentials)
        from ci_integrations.services.artifacts import artifact_register

        push_random_image(plain_registry.url, qa.repository, "1.0.0")
        artifact, _, _ = artifact_register(integration=integration, env="qa", tag="1.0.0", actor=ADMIN)
        promotion = promotion_request(artifact=artifact, to_env="staging", actor=ADMIN)
        run_worker()
        promotion.refresh_from_db()
        assert promotion.state == Promotion.State.FAILED, promotion.log
        assert f"HTTP {status}" in promotion.error

        token = ci_token(integration)
        detail = api(token, "GET", f"/api/v1/promotions/{promotion.pk}/").content.decode()
        from django.contrib.auth.models import User

        admin = User.objects.create_user("page-reader", is_staff=True, is_superuser=True)
        browser = Client()
        browser.force_login(admin)
        page = browser.get(reverse("promotion", args=[promotion.pk])).content.decode()
        secrets = ["pw-123", basic_value(**credentials)]
        assert_nothing_leaked(secrets, logs, api_detail=detail, promotion_page=page)
    finally:
        proxy.stop()


# --- push credentials ---------------------------------------------------------------------------------------------


def test_push_credentials_are_answered_once_and_kept_nowhere(plain_registry, logs):
    credentials = {"username": "builder", "password": "builder-Pa55word-long"}
    tokens = start_token_server(users={credentials["username"]: credentials["password"]})
    issued: list[str] = []
    issue = tokens.issue

    def recording(user, scopes):
        issued.append(issue(user, scopes))
        return issued[-1]

    tokens.issue = recording
    locked = start_registry(token_auth=tokens.registry_config)
    try:
        integration, qa, _ = pipeline(locked.url, plain_registry.url)
        Bucket.objects.filter(pk=qa.pk).update(allow_push_credentials=True)
        qa.registry.set_credentials(credentials)
        qa.registry.save()
        token = ci_token(integration)
        path = f"/api/v1/integrations/{integration.name}/push-credentials/"

        key = uuid.uuid4().hex
        first = api(token, "POST", path, {"env": "qa"}, **{"Idempotency-Key": key})
        again = api(token, "POST", path, {"env": "qa"}, **{"Idempotency-Key": key})
        refused = api(token, "POST", path, {"env": "staging"})
    finally:
        locked.stop()
        tokens.stop()
    assert first.status_code == again.status_code == 200, first.content
    assert [first.json()["token"], again.json()["token"]] == issued  # two fresh tokens, each answered once
    assert first.json()["password"] is None and credentials["password"] not in first.content.decode()
    assert again.get("Idempotent-Replayed") is None  # answered afresh, not from a stored copy
    # The stored-response table is plain JSON shown in the admin: push credentials are never written to it.
    assert not IdempotencyRecord.objects.exists()
    assert refused.status_code == 403
    assert AuditEntry.objects.filter(action="push_credentials.issued").count() == 2
    assert_nothing_leaked(
        [credentials["password"], basic_value(**credentials), token, *issued], logs, refused=refused.content.decode()
    )


def test_ecr_push_credentials_with_debug_logging_leak_no_aws_secret_or_ecr_token(plain_registry, monkeypatch, logs):
    from moto import mock_aws

    aws = {"aws_access_key_id": "AKIAEXAMPLEKEY123456", "aws_secret_access_key": "test-Secret-Access-Key-0123456789"}
    aws["aws_session_token"] = "test-Session-Token-abcdefghijklmnop"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with mock_aws():
        integration, qa, _ = pipeline(plain_registry.url, plain_registry.url)
        registry = Registry.objects.create(
            name=f"ecr-{uuid.uuid4().hex[:6]}",
            provider="ecr",
            url="https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        )
        registry.set_credentials(aws)
        registry.save()
        Bucket.objects.filter(pk=qa.pk).update(
            registry=registry,
            allow_push_credentials=True,
            push_role_arn="arn:aws:iam::123456789012:role/p2p-push",
        )
        token = ci_token(integration)
        answer = api(token, "POST", f"/api/v1/integrations/{integration.name}/push-credentials/", {"env": "qa"})
    assert answer.status_code == 200, answer.content
    password = answer.json()["password"]
    assert answer.json()["username"] == "AWS" and password
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.INFO  # capped in settings.LOGGING
    secrets = [password, basic_value("AWS", password), aws["aws_secret_access_key"], aws["aws_session_token"]]
    assert_nothing_leaked(secrets, logs)


# --- API tokens -------------------------------------------------------------------------------------------------------


def test_wrong_forged_and_revoked_api_tokens_are_not_echoed_in_answers_or_logs(plain_registry, logs):
    integration, _, _ = pipeline(plain_registry.url, plain_registry.url)
    token = ci_token(integration)
    key_id, secret = token_parse(token)
    forged = token[:-8] + ("A" if token[-8] != "A" else "B") + token[-7:]
    revoked_row, revoked = token_create(
        name="soon-revoked", kind=ApiToken.Kind.CI, actor=ADMIN, integrations=[integration], system=True
    )
    token_revoke(token=revoked_row, actor=ADMIN)
    garbage = "p2p_" + "x" * 40 + " trailing"
    answers = []
    for sent in (forged, revoked, garbage, "Z" * 64):
        response = api(sent, "GET", "/api/v1/integrations/")
        assert response.status_code == 401, response.content
        answers.append(response.content.decode())
        answers.append(str(response.headers))
    assert "revoked" in "".join(answers)
    assert_nothing_leaked([token, secret, forged, revoked, token_parse(revoked)[1]], logs, answers="\n".join(answers))


# --- webhooks ---------------------------------------------------------------------------------------------------------


def test_a_failing_webhook_keeps_its_secret_out_of_the_delivery_logs_and_audit(
    plain_registry, rq_queues, run_worker, logs
):
    seen = {}

    def receiver(method, path, headers, body):
        seen.update(headers)
        return 500, {"Content-Type": "text/plain"}, ("refused: " + json.dumps(headers)).encode()

    hook_server = FaultProxy(plain_registry.url, intercept=receiver)
    try:
        integration, qa, _ = pipeline(plain_registry.url, plain_registry.url)
        from django.contrib.auth.models import User

        admin = User.objects.create_user("hook-admin", is_staff=True)
        webhook_create(
            integration=integration,
            url=f"{hook_server.url}/hook",
            secret="webhook-Signing-Secret-0123",
            events=[],
            actor=Actor.for_user(admin),
        )
        from ci_integrations.services.artifacts import artifact_register

        push_random_image(plain_registry.url, qa.repository, "2.0.0")
        artifact, _, _ = artifact_register(integration=integration, env="qa", tag="2.0.0", actor=ADMIN)
        promotion_request(artifact=artifact, to_env="staging", actor=ADMIN)
        run_worker()
        assert seen.get("X-P2P-Signature", "").startswith("sha256=")
        assert WebhookDelivery.objects.exclude(error="").exists()
        assert Webhook.objects.filter(integration=integration).exists()
        assert_nothing_leaked(["webhook-Signing-Secret-0123"], logs)
    finally:
        hook_server.stop()


# --- the CLI ----------------------------------------------------------------------------------------------------------


def p2p(live_server, token: str, *args: str, **env) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ.get("PATH", ""), "P2P_URL": live_server.url, "P2P_TOKEN": token, **env}
    return subprocess.run(
        [sys.executable, "-I", str(CLI), *args], env=environment, capture_output=True, text=True, timeout=60
    )


def test_the_cli_with_json_prints_no_token_or_password_on_errors(plain_registry, live_server, logs):
    integration, _, _ = pipeline(plain_registry.url, plain_registry.url)
    revoked_row, revoked = token_create(
        name="cli-revoked", kind=ApiToken.Kind.CI, actor=ADMIN, integrations=[integration], system=True
    )
    token_revoke(token=revoked_row, actor=ADMIN)
    refused = p2p(live_server, revoked, "status", "1", "--json")
    assert refused.returncode == 1 and "revoked" in refused.stderr
    assert json.loads(refused.stdout)["error"]["code"] == "unauthenticated"

    token = ci_token(integration)
    source_password = "cli-Source-Pa55word-xyz"
    bad_import = p2p(
        live_server,
        token,
        "import",
        integration.name,
        "127.0.0.1:1/not a reference",
        "--source-username",
        "builder",
        "--json",
        P2P_SOURCE_PASSWORD=source_password,
    )
    assert bad_import.returncode != 0
    outputs = {name: f"{run.stdout}\n{run.stderr}" for name, run in (("revoked", refused), ("import", bad_import))}
    assert_nothing_leaked([revoked, token_parse(revoked)[1], token, source_password], logs, **outputs)


# --- the redaction itself ------------------------------------------------------------------------------------------


def test_redact_removes_remembered_secrets_in_any_shape_but_leaves_short_words_alone():
    remember_secret("Qz9-remembered-value", "abc")
    assert redact('{"auth": "Qz9-remembered-value"}') == '{"auth": "[redacted]"}'
    assert redact("user ci with password Qz9-remembered-value refused") == "user ci with password [redacted] refused"
    assert redact("abc stays") == "abc stays"  # too short to cut out without mangling text


def test_a_stored_request_fingerprint_is_keyed_so_it_cannot_test_source_password_guesses(plain_registry, rq_queues):
    import hashlib

    integration, _, _ = pipeline(plain_registry.url, plain_registry.url)
    token = ci_token(integration)
    path = f"/api/v1/integrations/{integration.name}/imports/"
    body = {"source": f"{plain_registry.host}/builds/app:1.0.0", "source_credentials": {"password": "guessable-pw1"}}
    created = api(token, "POST", path, body, **{"Idempotency-Key": "import-1"})
    assert created.status_code == 202, created.content
    stored = IdempotencyRecord.objects.get(key="import-1").request_fingerprint
    unkeyed = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert stored != hashlib.sha256(f"POST {path}\n{unkeyed}".encode()).hexdigest()
    assert api(token, "POST", path, body, **{"Idempotency-Key": "import-1"}).get("Idempotent-Replayed") == "true"
