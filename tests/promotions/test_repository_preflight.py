"""Preflight for a target repository that does not exist yet (issue 15 item 6), on an ECR registry: moto for the
AWS API, the real production docker-registry for the data plane.

Source: Amazon ECR User Guide, "Creating a private repository": ECR never creates a repository on push, so the
preflight must say whether the copy will create it ("prod repository does not exist; it will be created") or
cannot go ahead ("…does not exist and the bucket does not allow creating it").
"""

from __future__ import annotations

import boto3
import pytest

from ci_integrations.models import Bucket, Registry
from ci_integrations.registry.providers import ecr
from ci_integrations.services.preflight import promotion_preflight

pytestmark = pytest.mark.django_db
ACCOUNT = "123456789012"


@pytest.fixture
def ecr_api(monkeypatch):
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    ecr._tokens.clear()
    with mock_aws():
        client = boto3.client("ecr", region_name="eu-west-1")
        monkeypatch.setattr(ecr, "ecr_client", lambda spec: client)
        yield client
    ecr._tokens.clear()


def _prod_on_ecr(world) -> None:
    Registry.objects.filter(pk=world.prod.registry_id).update(
        provider="ecr", options={"region": "eu-west-1", "registry_id": ACCOUNT, "retry_attempts": 1}
    )


def test_preflight_says_a_missing_repository_will_be_created_when_the_bucket_allows_it(world, ecr_api):
    artifact = world.register("staging", "v1")
    _prod_on_ecr(world)
    Bucket.objects.filter(pk=world.prod.pk).update(create_repository=True)

    report = promotion_preflight(artifact=artifact, to_env="prod")

    assert report["target_writable"] is True and report["errors"] == []
    assert report["notes"] == [f"prod repository does not exist; it will be created ({world.prod.image_name})"]
    assert ecr_api.describe_repositories()["repositories"] == []  # preflight only looks


def test_preflight_refuses_a_missing_repository_the_bucket_may_not_create(world, ecr_api):
    artifact = world.register("staging", "v1")
    _prod_on_ecr(world)

    report = promotion_preflight(artifact=artifact, to_env="prod")

    assert report["target_writable"] is False and report["notes"] == []
    [error] = report["errors"]
    assert error.startswith("prod repository does not exist and the bucket does not allow creating it")


def test_preflight_checks_push_access_as_before_when_the_repository_exists(world, ecr_api):
    artifact = world.register("staging", "v1")
    _prod_on_ecr(world)
    ecr_api.create_repository(repositoryName=world.prod.repository)

    report = promotion_preflight(artifact=artifact, to_env="prod")

    assert report["target_writable"] is True and report["errors"] == [] and report["notes"] == []


def test_preflight_names_a_layer_over_the_target_registrys_limit(world):
    """Issue 15 item 8: a registry's layer limit is checked before moving bytes, in the preflight as in the copy."""
    artifact = world.register("staging", "v1", layers=1, layer_size=64 * 1024)
    Registry.objects.filter(pk=world.prod.registry_id).update(options={"max_layer_bytes": 1024})

    report = promotion_preflight(artifact=artifact, to_env="prod")

    assert any(
        e.startswith("plan: layer sha256:") and "takes layers of at most 1024 bytes (its max_layer_bytes setting)" in e
        for e in report["errors"]
    ), report["errors"]
