"""The promotion engine's world: two real registries, a qa → staging → prod workflow, people in their roles."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, User

from ci_integrations.models import Bucket, Integration, Registry, Workflow, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register
from tests.support.images import push_random_image
from tests.support.registry_server import start_registry
from tests.support.roles import restore_roles
from tests.support.webhook_receiver import Receiver


@pytest.fixture(scope="session")
def registry_servers():
    """Two docker-registry processes: the build side (qa, staging) and the production side (prod)."""
    build, production = start_registry(), start_registry()
    yield build, production
    build.stop()
    production.stop()


@pytest.fixture(autouse=True)
def quick_retries(settings):
    settings.P2P_COPY_RETRY_DELAYS = [0.05, 0.05]
    settings.P2P_WEBHOOK_RETRY_INTERVALS = [0, 0, 0]


@dataclass
class World:
    integration: Integration
    workflow: Workflow
    qa: Bucket
    staging: Bucket
    prod: Bucket
    to_staging: WorkflowStep
    to_prod: WorkflowStep
    alice: User
    bob: User
    carol: User
    dave: User
    admin: User
    build_url: str
    production_url: str

    def actor(self, user: User) -> Actor:
        return Actor.for_user(user)

    def push(self, bucket: Bucket, tag: str, **kwargs) -> str:
        """Push a random image into a bucket's repository (as CI would) and return its digest."""
        url = self.production_url if bucket.registry.url == self.production_url else self.build_url
        return push_random_image(url, bucket.repository, tag, **kwargs)

    def register(self, env: str, tag: str, **kwargs):
        """Push and register an image in a bucket; returns the artifact."""
        bucket = getattr(self, env)
        self.push(bucket, tag, **kwargs)
        artifact, _, _ = artifact_register(integration=self.integration, env=env, tag=tag, actor=Actor.system("ci"))
        return artifact


def _user(name: str, *groups: str, staff: bool = False) -> User:
    # No password: hashing one costs a quarter of a second per user and nothing here signs in.
    user = User.objects.create(username=name, email=f"{name}@example.com", is_staff=staff)
    for group in groups:
        user.groups.add(Group.objects.get(name=group))
    return user


def ensure_roles() -> None:
    """The role groups come from a data migration, which a transactional test's flush empties; put them back."""
    restore_roles()


@pytest.fixture
def world(registry_servers) -> World:
    build, production = registry_servers
    ensure_roles()
    suffix = uuid.uuid4().hex[:8]
    build_registry = Registry.objects.create(name=f"build-{suffix}", url=build.url)
    production_registry = Registry.objects.create(name=f"production-{suffix}", url=production.url)
    workflow = Workflow.objects.create(name=f"standard-{suffix}")
    to_staging = WorkflowStep.objects.create(workflow=workflow, position=1, from_env="qa", to_env="staging")
    to_prod = WorkflowStep.objects.create(
        workflow=workflow,
        position=2,
        from_env="staging",
        to_env="prod",
        required_approvals=2,
        approver_group=Group.objects.get(name="release-managers"),
    )
    integration = Integration.objects.create(name=f"checkout-{suffix}", workflow=workflow)
    buckets = {}
    for position, (env, registry) in enumerate(
        [("qa", build_registry), ("staging", build_registry), ("prod", production_registry)]
    ):
        buckets[env] = Bucket.objects.create(
            integration=integration,
            env=env,
            position=position,
            registry=registry,
            repository=f"p2p-{suffix}/checkout-{env}",
        )
    return World(
        integration=integration,
        workflow=workflow,
        to_staging=to_staging,
        to_prod=to_prod,
        alice=_user("alice", "release-managers"),
        bob=_user("bob", "release-managers"),
        carol=_user("carol", "release-managers"),
        dave=_user("dave"),
        admin=_user("admin", "platform-admins", staff=True),
        build_url=build.url,
        production_url=production.url,
        **buckets,
    )


def fake_digest() -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def place(world: World, env: str, tag: str, *, digest: str | None = None, arrived_at=None):
    """An artifact that arrived in a bucket, recorded directly (for policy tests that never copy)."""
    from ci_integrations.models import Artifact
    from ci_integrations.services.arrivals import arrival_record

    artifact, _ = Artifact.objects.get_or_create(integration=world.integration, digest=digest or fake_digest())
    arrival = arrival_record(
        bucket=getattr(world, env), artifact=artifact, tag=tag, how="push", actor=Actor.system("ci")
    )
    if arrived_at is not None:
        type(arrival).objects.filter(pk=arrival.pk).update(arrived_at=arrived_at)
    return artifact


@pytest.fixture
def receiver_factory():
    made = []

    def make(*statuses):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()
