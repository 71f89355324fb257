"""push-credentials through HTTP: what CI gets reaches the bucket's repository and no other, only where the workflow
starts, never when the registry cannot scope it, and every hand-out is audited without its secret. Registration
follows the same rule: CI enters the workflow at its start."""

from __future__ import annotations

import pytest
import requests

from ci_integrations.models import AuditEntry, Bucket, Integration, Registry
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register
from tests.api.conftest import PORTAL_LOGIN
from tests.support.images import push_random_image, push_with_token
from tests.support.registry_server import start_registry

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def ask(world, caller: str, env: str, integration: Integration | None = None):
    name = (integration or world.shop).name
    return world.caller(caller).post(f"/api/v1/integrations/{name}/push-credentials/", {"env": env})


def push_as_ci(answer: dict, token_registry, repository: str) -> int:
    """Push with what push-credentials answered, as a CI job would: a bearer token as it is; a username and password
    by logging in to the registry's token service for the repository it pushes to (what docker does)."""
    token = answer.get("token")
    if not token:
        login = requests.get(
            token_registry.tokens.realm,
            params={"service": token_registry.tokens.service, "scope": f"repository:{repository}:pull,push"},
            auth=(answer["username"], answer["password"]),
            timeout=10,
        )
        token = login.json()["token"]
    return push_with_token(token_registry.url, repository, "ci-1", token)


@pytest.fixture
def on_tokens(world, token_registry_server):
    """Every bucket of both integrations on the token-auth registry; the shop's dev bucket hands out credentials."""
    registry = token_registry_server.row()
    Bucket.objects.filter(integration__in=[world.shop, world.other]).update(registry=registry)
    for bucket in (world.dev, world.staging, world.prod):
        bucket.refresh_from_db()
    return token_registry_server


def test_push_credentials_reach_the_buckets_repository_and_no_other(world, on_tokens):
    answer = ask(world, "ci_own", "dev")

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert push_as_ci(body, on_tokens, world.dev.repository) == 201
    # Its own staging repository (skipping the step), and another integration's prod repository: both refused.
    assert push_as_ci(body, on_tokens, world.staging.repository) in (401, 403)
    other_prod = Bucket.objects.get(integration=world.other, env="prod")
    assert push_as_ci(body, on_tokens, other_prod.repository) in (401, 403)
    assert body["type"] == "bearer" and body["scope"] == f"repository:{world.dev.repository}:pull,push"
    assert body["repository"] == world.dev.repository and body["image"] == world.dev.image_name
    assert body["password"] is None and PORTAL_LOGIN["password"] not in answer.content.decode()


def test_push_credentials_are_refused_outside_the_workflows_entry_environment(world, on_tokens):
    Bucket.objects.filter(pk=world.staging.pk).update(allow_push_credentials=True)

    refused = ask(world, "ci_own", "staging")

    assert refused.status_code == 403, refused.content
    error = refused.json()["error"]
    assert error["code"] == "not_entry_environment" and error["details"]["entry"] == ["dev"]
    assert "'dev'" in error["message"] and "allow_direct_register" in error["message"]
    assert not AuditEntry.objects.filter(action="push_credentials.issued").exists()


def test_a_bucket_with_allow_direct_register_hands_out_credentials_for_its_own_repository(world, on_tokens):
    Bucket.objects.filter(pk=world.staging.pk).update(allow_push_credentials=True, allow_direct_register=True)

    answer = ask(world, "ci_own", "staging")

    assert answer.status_code == 200, answer.content
    assert push_as_ci(answer.json(), on_tokens, world.staging.repository) == 201
    assert push_as_ci(answer.json(), on_tokens, world.prod.repository) in (401, 403)


def test_a_basic_auth_only_registry_is_refused_with_what_to_configure(world):
    basic = start_registry(htpasswd=dict([PORTAL_LOGIN.values()]))
    try:
        registry = Registry.objects.create(name="basic-only", url=basic.url)
        registry.set_credentials(PORTAL_LOGIN)
        registry.save()
        Bucket.objects.filter(pk=world.dev.pk).update(registry=registry)

        refused = ask(world, "ci_own", "dev")
    finally:
        basic.stop()

    assert refused.status_code == 409, refused.content
    error = refused.json()["error"]
    assert error["code"] == "cannot_scope" and "Basic credentials only" in error["message"]
    assert PORTAL_LOGIN["password"] not in refused.content.decode()


@pytest.mark.parametrize(
    ("provider", "url", "option"),
    [
        ("ecr", "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com", "push_role_arn"),
        ("gar", "https://europe-docker.pkg.dev", "push_service_account"),
    ],
)
def test_a_cloud_registry_without_its_push_option_is_refused_with_what_to_configure(world, provider, url, option):
    # Refused before any cloud call: the registry-wide login is never fetched, so nothing here needs faking.
    registry = Registry.objects.create(name=f"cloud-{provider}", provider=provider, url=url)
    Bucket.objects.filter(pk=world.dev.pk).update(registry=registry, repository="proj/repo/shop")

    refused = ask(world, "ci_own", "dev")

    assert refused.status_code == 409, refused.content
    assert refused.json()["error"]["code"] == "cannot_scope" and option in refused.json()["error"]["message"]


def test_a_repository_shared_with_a_later_bucket_hands_out_nothing(world, on_tokens):
    Bucket.objects.filter(pk=world.staging.pk).update(repository=world.dev.repository)

    refused = ask(world, "ci_own", "dev")

    assert refused.status_code == 409, refused.content
    assert refused.json()["error"]["code"] == "shared_repository" and "staging" in refused.json()["error"]["message"]


def test_every_hand_out_is_audited_with_scope_and_expiry_and_never_the_secret(world, on_tokens):
    answer = ask(world, "ci_own", "dev").json()

    [entry] = AuditEntry.objects.filter(action="push_credentials.issued")
    assert entry.actor == f"ci:{world.tokens['ci_own'].name}" and entry.environment == "dev"
    assert entry.integration == world.shop.name
    assert entry.after["repository"] == world.dev.repository
    assert entry.after["scope"] == answer["scope"] and entry.after["expires_at"] == answer["expires_at"]
    assert entry.after["kind"] == "bearer" and entry.after["issuer"].endswith("/token")
    # No part of the token (a JWT: header.payload.signature) anywhere in the audit table.
    table = " ".join(str(row) for row in AuditEntry.objects.values_list())
    assert answer["token"] not in table
    for part in answer["token"].split(".")[1:]:
        assert part not in table


# --- registration: CI enters the workflow at its start ----------------------------------------------------------


def register(world, caller: str, env: str, tag: str, integration: Integration | None = None):
    name = (integration or world.shop).name
    return world.caller(caller).post(f"/api/v1/integrations/{name}/artifacts/", {"env": env, "tag": tag})


@pytest.mark.parametrize("caller", ["ci_own", "admin"])  # a CI token, and a platform admin's personal one
def test_registering_into_a_later_bucket_with_a_token_is_refused_naming_the_entry_environment(world, caller):
    world.push(world.staging, "9.0.0")

    refused = register(world, caller, "staging", "9.0.0")

    assert refused.status_code == 403, refused.content
    error = refused.json()["error"]
    assert error["code"] == "not_entry_environment" and error["details"]["entry"] == ["dev"]
    assert "only by promotion from 'dev'" in error["message"]
    assert not world.staging.arrivals.exists()


def test_registering_into_the_entry_bucket_or_an_allowed_later_one_works(world):
    world.push(world.dev, "9.1.0")
    world.push(world.staging, "9.1.0")
    assert register(world, "ci_own", "dev", "9.1.0").status_code == 201
    assert register(world, "ci_own", "staging", "9.1.0").status_code == 403
    Bucket.objects.filter(pk=world.staging.pk).update(allow_direct_register=True)
    assert register(world, "ci_own", "staging", "9.1.0").status_code == 201


def test_an_integration_without_a_workflow_keeps_taking_registrations_and_credentials_in_any_bucket(world, on_tokens):
    # No workflow, no step to skip: every bucket takes images directly, as before.
    Integration.objects.filter(pk=world.shop.pk).update(workflow=None)
    Bucket.objects.filter(pk=world.prod.pk).update(allow_push_credentials=True)
    push_random_image(on_tokens.url, world.prod.repository, "9.2.0", auth=tuple(PORTAL_LOGIN.values()))

    assert register(world, "ci_own", "prod", "9.2.0").status_code == 201
    assert ask(world, "ci_own", "prod").status_code == 200


def test_the_portals_own_jobs_and_commands_may_still_record_arrivals_in_later_buckets(world):
    # Imports and demo seeding run as the system, not as a caller from outside.
    world.push(world.staging, "9.3.0")
    _, arrival, created = artifact_register(
        integration=world.shop, env="staging", tag="9.3.0", actor=Actor.system("seed")
    )
    assert created and arrival.bucket_id == world.staging.pk
