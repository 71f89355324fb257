"""The dashboard's world: real registries, a qa → staging → prod workflow, people in their roles, and for the
browser tests a live server, a real RQ worker process and Debian's Chromium."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection

from ci_integrations.models import Artifact, Bucket, Integration, Registry, Workflow, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.arrivals import arrival_record
from ci_integrations.services.artifacts import artifact_register, check_report
from tests.support.images import push_random_image
from tests.support.registry_server import start_registry
from tests.support.roles import restore_roles

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "test-output" / "screenshots"
PASSWORD = "correct horse battery staple"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def ensure_roles() -> None:
    """The role groups come from a data migration, which a transactional test's flush empties; put them back."""
    restore_roles()


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def no_remembered_verification():
    """The chain badge's state lives in Redis; each test starts with none."""
    import django_rq

    from ci_integrations.services.audit_verification import RESULT_KEY, RUNNING_KEY

    django_rq.get_connection("default").delete(RESULT_KEY, RUNNING_KEY)


@pytest.fixture(scope="session")
def registry_servers():
    first, second = start_registry(), start_registry()
    yield first, second
    first.stop()
    second.stop()


@dataclass
class World:
    integration: Integration
    qa: Bucket
    staging: Bucket
    prod: Bucket
    to_staging: WorkflowStep
    to_prod: WorkflowStep
    users: dict[str, User]
    url_a: str
    url_b: str

    def push_and_register(self, env: str, tag: str, **metadata) -> Artifact:
        """Push a small random image into a bucket's repository and register it, as CI would."""
        bucket = getattr(self, env)
        url = self.url_b if bucket.registry.url == self.url_b else self.url_a
        push_random_image(url, bucket.repository, tag, layers=2, layer_size=64 * 1024)
        artifact, _, _ = artifact_register(
            integration=self.integration, env=env, tag=tag, metadata=metadata or None, actor=Actor.system("ci")
        )
        check_report(artifact=artifact, name="functional", status="passed", actor=Actor.system("ci"))
        return artifact

    def place(self, env: str, tag: str, **fields) -> Artifact:
        """An artifact recorded in a bucket without touching a registry (for pages that only read)."""
        digest = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
        artifact = Artifact.objects.create(integration=self.integration, digest=digest, **fields)
        arrival_record(bucket=getattr(self, env), artifact=artifact, tag=tag, how="push", actor=Actor.system("ci"))
        check_report(artifact=artifact, name="functional", status="passed", actor=Actor.system("ci"))
        return artifact


def _user(name: str, *groups: str, staff: bool = False) -> User:
    user = User.objects.create_user(username=name, password=PASSWORD, is_staff=staff)
    user.groups.set(Group.objects.filter(name__in=groups))
    return user


def build_world(url_a: str, url_b: str, name: str = "shop") -> World:
    ensure_roles()
    suffix = uuid.uuid4().hex[:8]
    reg_a = Registry.objects.create(name=f"a-{suffix}", url=url_a)
    reg_b = Registry.objects.create(name=f"b-{suffix}", url=url_b)
    managers = Group.objects.get(name="release-managers")
    workflow = Workflow.objects.create(name=f"path-{suffix}")
    to_staging = WorkflowStep.objects.create(
        workflow=workflow,
        position=0,
        from_env="qa",
        to_env="staging",
        required_approvals=1,
        rollback_approvals=0,
        approver_group=managers,
        required_checks=["functional"],
    )
    to_prod = WorkflowStep.objects.create(
        workflow=workflow, position=1, from_env="staging", to_env="prod", required_approvals=2, approver_group=managers
    )
    integration = Integration.objects.create(name=name, workflow=workflow)
    repo = f"{name}-{suffix}"
    buckets = {
        env: Bucket.objects.create(
            integration=integration, env=env, position=i, registry=reg, repository=f"{repo}/{env}"
        )
        for i, (env, reg) in enumerate([("qa", reg_a), ("staging", reg_a), ("prod", reg_b)])
    }
    users = {
        "release1": _user("release1", "release-managers"),
        "release2": _user("release2", "release-managers"),
        "auditor": _user("auditor", "auditors"),
        "viewer": _user("viewer"),
        "admin": _user("admin", "platform-admins", staff=True),
    }
    return World(
        integration, buckets["qa"], buckets["staging"], buckets["prod"], to_staging, to_prod, users, url_a, url_b
    )


@pytest.fixture
def world(db, registry_servers) -> World:
    first, second = registry_servers
    return build_world(first.url, second.url)


# --- browser tests ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; Django's ORM calls in the test are still synchronous.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def live_world(transactional_db, live_server, registry_servers, settings) -> World:
    settings.ALLOWED_HOSTS = ["*"]
    first, second = registry_servers
    return build_world(first.url, second.url)


@pytest.fixture
def worker(live_world, rq_queues):
    """A real worker process (`manage.py p2p_worker`) on the test database and the test Redis database."""
    db = settings.DATABASES["default"]
    if connection.vendor != "postgresql":
        pytest.skip("the worker process needs the PostgreSQL test database")
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["REDIS_URL"] = settings.REDIS_URL
    log_path = ROOT / "var" / "test-output" / "ui-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen(
        [sys.executable, "manage.py", "p2p_worker", "--simple", "--no-reconciler", "promotions", "default"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    yield process
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Browsing:
    """A signed-in browser page with helpers; every page visited can be saved as a screenshot for review."""

    def __init__(self, browser, base_url: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.base_url = base_url
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    def goto(self, path: str):
        self.page.goto(self.base_url + path)
        return self.page

    def sign_in(self, username: str, password: str = PASSWORD) -> None:
        self.goto("/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(self.base_url + "/")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(
            path=str(SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"), full_page=True
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def browse(browser, live_server):
    opened: list[Browsing] = []

    def open_as(username: str | None = None) -> Browsing:
        session = Browsing(browser, live_server.url)
        opened.append(session)
        if username:
            session.sign_in(username)
        return session

    yield open_as
    errors = [error for session in opened for error in session.console_errors]
    for session in opened:
        session.close()
    # A Content-Security-Policy violation (an inline script or style slipping in) shows up here.
    assert errors == [], errors


# --- single sign-on --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oidc_provider(live_server):
    """A real OpenID Connect provider (oidc-provider, npm) whose client sends people back to the live server."""
    from tests.support.oidc_provider import start_oidc_provider

    provider = start_oidc_provider(
        redirect_uris=[f"{live_server.url}/login/sso/callback/"],
        post_logout_redirect_uris=[f"{live_server.url}/login/"],
    )
    yield provider
    provider.stop()


@pytest.fixture
def sso(oidc_provider, live_world, settings):
    """The portal configured for single sign-on with the test provider; its people reset afterwards."""
    from tests.support.oidc_provider import PEOPLE

    settings.P2P_OIDC_ISSUER = oidc_provider.issuer
    settings.P2P_OIDC_CLIENT_ID = oidc_provider.client_id
    settings.P2P_OIDC_CLIENT_SECRET = oidc_provider.client_secret
    settings.P2P_OIDC_NAME = "Test IdP"
    yield oidc_provider
    for login, claims in PEOPLE.items():
        oidc_provider.set_person(login, claims)
