"""The API's world: one real registry, a dev → staging → prod workflow, two integrations, people in each role and
a token for every kind of caller the authorisation matrix knows."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from ci_integrations.models import ApiToken, Bucket, Integration, Registry, Workflow, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.tokens import token_create
from tests.support.images import push_random_image
from tests.support.registry_server import start_registry, start_token_server
from tests.support.roles import restore_roles

SYSTEM = Actor.system("tests")


@pytest.fixture(scope="session")
def registry_server():
    server = start_registry()
    yield server
    server.stop()


# What the portal logs in to a token-auth registry with: it may do anything there, like a real portal's robot account.
PORTAL_LOGIN = {"username": "portal", "password": "portal-Pa55word-every-repository"}


@dataclass
class TokenRegistry:
    url: str
    tokens: object  # the TokenServer

    def row(self, name: str = "") -> Registry:
        """A Registry row for it with the portal's stored login."""
        registry = Registry.objects.create(name=name or f"tokens-{uuid.uuid4().hex[:8]}", url=self.url)
        registry.set_credentials(PORTAL_LOGIN)
        registry.save()
        return registry


@pytest.fixture(scope="session")
def token_registry_server():
    """A real docker-registry with token auth and its token service (scoped RS256 JWTs)."""
    tokens = start_token_server(users={PORTAL_LOGIN["username"]: PORTAL_LOGIN["password"]})
    server = start_registry(token_auth=tokens.registry_config)
    yield TokenRegistry(url=server.url, tokens=tokens)
    server.stop()
    tokens.stop()


@pytest.fixture(autouse=True)
def quick_api_settings(settings):
    """Throttle counters live in Redis, which outlives test databases: a generous rate keeps tests independent
    (the rate-limit test sets its own). Copy retries are short so a failing copy fails fast."""
    settings.P2P_API_TOKEN_RATE = "100000/minute"
    settings.P2P_COPY_RETRY_DELAYS = [0.05, 0.05]


@dataclass
class Caller:
    """Someone calling the API: a token (or none) and a test client that sends it."""

    name: str
    token: str | None
    client: Client = field(default_factory=Client)

    def call(self, method: str, path: str, body=None, *, headers: dict | None = None, raw: bytes | None = None):
        extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in (headers or {}).items()}
        if self.token is not None:
            extra["HTTP_AUTHORIZATION"] = f"Bearer {self.token}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        return self.client.generic(method, path, data, content_type="application/json", **extra)

    def get(self, path: str, **kwargs):
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body=None, **kwargs):
        return self.call("POST", path, body if body is not None else {}, **kwargs)


@dataclass
class World:
    registry_url: str
    shop: Integration
    other: Integration
    dev: Bucket
    staging: Bucket
    prod: Bucket
    to_staging: WorkflowStep
    to_prod: WorkflowStep
    users: dict[str, User]
    plain: dict[str, str]  # caller name → plain token
    tokens: dict[str, ApiToken]

    def caller(self, name: str) -> Caller:
        return Caller(name, self.plain.get(name))

    def push(self, bucket: Bucket, tag: str, **kwargs) -> str:
        return push_random_image(self.registry_url, bucket.repository, tag, layers=1, layer_size=512, **kwargs)

    def copy(self, source: Bucket, target: Bucket, tag: str) -> str:
        """Put the same image into another bucket's repository, as a copy by CI would."""
        from ci_integrations.registry import copy_image

        return copy_image(source.location(tag), target.location(tag)).digest


def _user(name: str, *groups: str, staff: bool = False) -> User:
    user = User.objects.create_user(name, f"{name}@example.com", None, is_staff=staff)  # no hashing: API only
    for group in groups:
        user.groups.add(Group.objects.get(name=group))
    return user


def ensure_roles() -> None:
    """Transactional tests empty every table, including the groups and permissions the roles migration made."""
    restore_roles()


def make_world(registry_url: str) -> World:
    ensure_roles()
    suffix = uuid.uuid4().hex[:8]
    registry = Registry.objects.create(name=f"local-{suffix}", url=registry_url)
    workflow = Workflow.objects.create(name=f"standard-{suffix}")
    to_staging = WorkflowStep.objects.create(workflow=workflow, position=1, from_env="dev", to_env="staging")
    to_prod = WorkflowStep.objects.create(
        workflow=workflow,
        position=2,
        from_env="staging",
        to_env="prod",
        required_approvals=1,
        approver_group=Group.objects.get(name="release-managers"),
    )
    shop = Integration.objects.create(name=f"shop-{suffix}", workflow=workflow)
    other = Integration.objects.create(name=f"other-{suffix}", workflow=workflow)
    buckets = {}
    for position, env in enumerate(["dev", "staging", "prod"]):
        buckets[env] = Bucket.objects.create(
            integration=shop,
            env=env,
            position=position,
            registry=registry,
            repository=f"api-{suffix}/shop-{env}",
            allow_push_credentials=env == "dev",
        )
        Bucket.objects.create(
            integration=other, env=env, position=position, registry=registry, repository=f"api-{suffix}/other-{env}"
        )
    users = {
        "viewer": _user(f"viewer-{suffix}"),
        "auditor": _user(f"auditor-{suffix}", "auditors"),
        "rm": _user(f"rm-{suffix}", "release-managers"),
        "rm2": _user(f"rm2-{suffix}", "release-managers"),
        "admin": _user(f"admin-{suffix}", "platform-admins", staff=True),
    }
    plain, tokens = {}, {}

    def add(name: str, **kwargs):
        tokens[name], plain[name] = token_create(name=name, actor=SYSTEM, **kwargs)

    # CI tokens answer for the platform admin, who is not among the prod approvers (release managers).
    owner = users["admin"]
    add("ci_own", kind="ci", integrations=[shop], owner=owner)
    add("ci_other", kind="ci", integrations=[other], owner=owner)
    # A token a release manager owns has at most their rights; a system token has its scopes only.
    add("ci_rm_owned", kind="ci", integrations=[shop], owner=users["rm"])
    add("ci_system", kind="ci", integrations=[shop], system=True)
    add("revoked", kind="ci", integrations=[shop], owner=owner)
    add("expired", kind="ci", integrations=[shop], owner=owner, expires_at=timezone.now() + timedelta(hours=1))
    for role in users:
        add(role, kind="personal", user=users[role])
    ApiToken.objects.filter(pk=tokens["revoked"].pk).update(revoked_at=timezone.now())
    ApiToken.objects.filter(pk=tokens["expired"].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    good = plain["ci_own"]
    plain["wrong_checksum"] = good[:-1] + ("A" if good[-1] != "A" else "B")
    return World(
        registry_url=registry_url,
        shop=shop,
        other=other,
        dev=buckets["dev"],
        staging=buckets["staging"],
        prod=buckets["prod"],
        to_staging=to_staging,
        to_prod=to_prod,
        users=users,
        plain=plain,
        tokens=tokens,
    )


@pytest.fixture
def world(registry_server) -> World:
    return make_world(registry_server.url)
