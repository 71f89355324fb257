"""The security tests' world: one integration with qa → staging → prod buckets on a real (empty) registry, people
in every role, and one of each object the pages act on (an arrival, a pending and a failed promotion, a token, a
freeze window, an audit entry)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.test import Client
from django.utils import timezone

from ci_integrations.models import (
    ApiToken,
    Arrival,
    Artifact,
    AuditEntry,
    Bucket,
    FreezeWindow,
    Integration,
    Promotion,
    Registry,
    Webhook,
    WebhookDelivery,
    Workflow,
    WorkflowStep,
)
from ci_integrations.services.actors import Actor
from ci_integrations.services.arrivals import arrival_record
from ci_integrations.services.artifacts import check_report
from ci_integrations.services.audit import audit_record
from ci_integrations.services.freeze import freeze_window_create
from ci_integrations.services.promotions import promotion_request
from ci_integrations.services.tokens import token_create
from tests.support.registry_server import start_registry
from tests.support.roles import restore_roles
from tests.support.sign_in import sign_in

PASSWORD = "correct horse battery staple"
ROLES = ["anonymous", "viewer", "auditor", "release_manager", "platform_admin"]
CI = Actor.system("ci")


def ensure_roles() -> None:
    """The role groups come from a data migration, which a transactional test elsewhere may have flushed."""
    restore_roles()


def make_user(name: str, *groups: str, staff: bool = False, superuser: bool = False) -> User:
    user = User.objects.create_user(username=name, password=PASSWORD, is_staff=staff, is_superuser=superuser)
    user.groups.set(Group.objects.filter(name__in=groups))
    return user


def client_for(user: User | None, **kwargs) -> Client:
    client = Client(**kwargs)
    if user is not None:
        sign_in(client, user)
    return client


@dataclass
class World:
    registry: Registry
    integration: Integration
    qa: Bucket
    staging: Bucket
    prod: Bucket
    to_staging: WorkflowStep
    users: dict[str, User]
    requester: User
    candidate: Artifact  # in qa, passes policy, nothing open: what a promote confirms
    pending: Promotion  # qa → staging, waiting for one approval, requested by `requester`
    failed: Promotion  # a failed copy, retryable
    rollback_to: Arrival  # an earlier arrival in staging
    token: ApiToken  # a CI token a platform admin made for the release manager, who owns it
    freeze: FreezeWindow  # active, on prod only
    audit_entry: AuditEntry
    given_up: WebhookDelivery  # a system-wide webhook's delivery that was given up (the retry button's object)

    def place(self, env: str, tag: str, **fields) -> Artifact:
        return place(getattr(self, env), tag, **fields)


def place(bucket: Bucket, tag: str, **fields) -> Artifact:
    """An artifact recorded in a bucket with a passed functional check; no registry is touched."""
    digest = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    artifact = Artifact.objects.create(integration=bucket.integration, digest=digest, **fields)
    arrival_record(bucket=bucket, artifact=artifact, tag=tag, how="push", actor=CI)
    check_report(artifact=artifact, name="functional", status="passed", actor=CI)
    return artifact


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def registry_server():
    """A real, empty registry: preflights get quick, real answers instead of waiting out connection retries."""
    server = start_registry()
    yield server
    server.stop()


def build_world(registry_url: str) -> World:
    ensure_roles()
    suffix = uuid.uuid4().hex[:8]
    registry = Registry.objects.create(name=f"reg-{suffix}", url=registry_url)
    managers = Group.objects.get(name="release-managers")
    workflow = Workflow.objects.create(name=f"path-{suffix}")
    to_staging = WorkflowStep.objects.create(
        workflow=workflow,
        position=0,
        from_env="qa",
        to_env="staging",
        required_approvals=1,
        rollback_approvals=1,
        approver_group=managers,
        required_checks=["functional"],
    )
    WorkflowStep.objects.create(
        workflow=workflow, position=1, from_env="staging", to_env="prod", required_approvals=2, approver_group=managers
    )
    integration = Integration.objects.create(name="shop", workflow=workflow)
    buckets = {
        env: Bucket.objects.create(
            integration=integration, env=env, position=i, registry=registry, repository=f"shop-{suffix}/{env}"
        )
        for i, env in enumerate(["qa", "staging", "prod"])
    }
    users = {
        "viewer": make_user("viewer"),
        "auditor": make_user("auditor", "auditors"),
        "release_manager": make_user("release1", "release-managers"),
        "platform_admin": make_user("platadmin", "platform-admins", staff=True),
    }
    requester = make_user("release0", "release-managers")
    by_requester = Actor.for_user(requester)
    qa, staging = buckets["qa"], buckets["staging"]
    candidate = place(qa, "2.0.0")
    pending = promotion_request(artifact=place(qa, "1.9.0"), to_env="staging", actor=by_requester)
    failed = promotion_request(artifact=place(qa, "1.8.0"), to_env="staging", actor=by_requester)
    Promotion.objects.filter(pk=failed.pk).update(
        state=Promotion.State.FAILED, error="copy failed", finished_at=timezone.now()
    )
    failed.refresh_from_db()
    old = place(staging, "1.0.0")
    place(staging, "1.1.0")
    token, _ = token_create(
        name="shop-ci",
        kind=ApiToken.Kind.CI,
        actor=Actor.for_user(users["platform_admin"]),
        owner=users["release_manager"],
        integrations=[integration],
    )
    freeze = freeze_window_create(
        name="prod-freeze",
        environments=["prod"],
        starts_at=timezone.now() - timedelta(hours=1),
        ends_at=timezone.now() + timedelta(days=1),
        reason="release week",
        actor=Actor.for_user(users["platform_admin"]),
    )
    hook = Webhook(name="releases", url="https://hooks.example.com/releases")
    hook.set_secret("s3cret-s3cret-s3cret")
    hook.save()
    given_up = WebhookDelivery.objects.create(
        webhook=hook, event="failed", payload={"event": "failed"}, attempts=5, given_up_at=timezone.now()
    )
    return World(
        given_up=given_up,
        registry=registry,
        integration=integration,
        qa=qa,
        staging=staging,
        prod=buckets["prod"],
        to_staging=to_staging,
        users=users,
        requester=requester,
        candidate=candidate,
        pending=pending,
        failed=failed,
        rollback_to=old.arrivals.get(bucket=staging),
        token=token,
        freeze=freeze,
        audit_entry=audit_record(actor="security-test", action="test.entry", integration="shop"),
    )


@pytest.fixture
def world(db, registry_server) -> World:
    return build_world(registry_server.url)


class Rollback(Exception):
    """Raised to undo everything one request did, so the next request meets the same state."""


def in_savepoint(fn):
    """Run fn() and undo its database writes; returns what fn returned."""
    result = None
    try:
        with transaction.atomic():
            result = fn()
            raise Rollback
    except Rollback:
        pass
    return result
